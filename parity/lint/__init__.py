"""``parity.lint``: find train()/eval() misplacement in PyTorch training code.

A static checker built on the standard library's :mod:`ast` only (no torch, jax or numpy).
It looks for the bug studied in this project: a model is put in eval mode by code that
runs inside the training loop (directly, or in a helper such as ``test()`` called from the
loop, in the same file or another file given) and nothing puts it back in train mode before
the next training step, so every later epoch trains with frozen BatchNorm statistics and
without Dropout.

Rules
-----
``MODE000``
    The file could not be read or parsed; nothing else is checked in it.  Always reported.
``MODE001``
    A model may be in eval mode at a training step inside a loop, because an ``eval()`` /
    ``train(False)`` reached earlier in the same iteration, or in the previous iteration's
    tail, is not undone by ``train()``.  Reported at the eval call site (or, when that is in
    another file, at the call in the loop that leads there).
``MODE002``
    In a file with no training step at all, a model restored with ``load_state_dict()`` or
    ``torch.load()`` is called for inference without any ``eval()`` / ``train(...)`` call
    on it on any path.  Reported at the (first) inference call.
``MODE003``
    ``F.dropout`` without ``training=self.training`` (or with ``training=True``), or
    ``F.batch_norm(..., training=True)``, inside a ``Module.forward``.
``MODE009``
    The analysis of the file was cut short (statement budget, call depth, recursion); never
    reported as clean.  Always reported.

How it works
------------
A small abstract interpreter walks each module top to bottom, then every function and
method that the module body did not reach.  The abstract state maps each object (an
allocation site, a parameter, or an attribute path such as ``self.model``) to the set of
modes it may be in: *default*, *train*, *unknown*, or *eval(site)*.  Branches are joined
by union, except ``if model.training:``, saved flags (``if was_training:``) and tests on
call-site constants (``if phase == "train":``); a loop body runs at least twice and at most
three times.  Calls to functions, methods and constructors defined in the files given are
followed, across files through their imports.  A *training step* is a ``.backward()`` call
or an optimizer ``.step()``; at a step, every object run forward since the previous step
(directly, through a helper, or handed to unknown code) is checked: if its state may be
*eval(site)* and that site was executed inside a loop that is still running, that is
``MODE001``.  See ``docs/LINT.md`` for the heuristics and known limits.
"""

from parity.lint._files import iter_python_files as iter_python_files
from parity.lint._files import lint_file as lint_file
from parity.lint._files import lint_paths as lint_paths
from parity.lint._files import lint_source as lint_source
from parity.lint._files import project_roots as project_roots
from parity.lint._findings import RULES as RULES
from parity.lint._findings import Finding as Finding
from parity.lint._formats import FORMATS as FORMATS
from parity.lint._formats import sarif_log as sarif_log

__all__ = [
    "FORMATS",
    "RULES",
    "Finding",
    "sarif_log",
    "iter_python_files",
    "lint_file",
    "lint_paths",
    "lint_source",
    "project_roots",
]
