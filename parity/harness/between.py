"""Differences that arise *between* two compared layers: code no layer row can see.

Functional ops (``F.max_pool2d``, ``torch.relu``, ``x.flatten(1)``) and parameter-free torch
modules with no Flax counterpart run between the layers :func:`parity.harness.localize.localize`
compares. Each compared layer's *input* is compared too (:func:`input_rows`); when a layer's input
already differs while the previous compared layer's output matched, an ``input`` row names the
code that ran between the two (:func:`torch_between`: torch modules through forward hooks,
``torch`` / ``torch.nn.functional`` / tensor calls through a ``TorchFunctionMode``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn as tnn
from torch.overrides import TorchFunctionMode

from parity.harness.report import LayerDiff, compare_tensor
from parity.harness.sides import TorchRun, leaf_modules, torch_device
from parity.layout import activation_to_flax, torch_to_flax_layout

#: Tensor attribute reads and bookkeeping calls that say nothing about what the code computes.
_QUIET = {"__get__", "size", "dim", "numel", "__len__", "__format__", "__repr__", "__bool__", "__index__"}


def input_rows(
    run: TorchRun,
    finputs: Mapping,
    to_flax: Callable[[str], str],
    flatten_shapes: Mapping,
    tol: float,
) -> dict[str, LayerDiff]:
    """``{row label: input row}``: each captured Flax layer input against the torch layer's
    input (both in Flax layout; a dense layer fed by a flatten in Flax's flatten order)."""
    rows = {}
    for (name, k), f_in in finputs.items():
        t_in = run.inputs.get((name, k))
        if t_in is None or not np.issubdtype(np.asarray(t_in).dtype, np.floating):
            continue
        flat = flatten_shapes.get(name)
        t_flax = (
            activation_to_flax(t_in, flat) if flat else torch_to_flax_layout(t_in, np.shape(f_in), like=f_in)
        )
        label = name if k == 0 else f"{name}#{k}"
        rows[label] = compare_tensor(label, "input", to_flax(name), f_in, t_flax, tol)
    return rows


def insert_input_rows(
    rows: list[LayerDiff], inputs: Mapping[str, LayerDiff], between: Callable[[str | None, str], str]
) -> list[LayerDiff]:
    """``rows`` with a failing ``input`` row before each layer whose input differs while the
    previous compared output matched (or that is the first compared layer); its note names the
    code between the two (``between(previous label or None, label)``)."""
    out: list[LayerDiff] = []
    prev: LayerDiff | None = None
    for r in rows:
        if r.kind == "output":
            inp = inputs.get(r.name)
            if inp is not None and not inp.passed and (prev is None or prev.passed):
                where = between(None if prev is None else prev.name, r.name)
                after = "the model input" if prev is None else f"{prev.name} (whose output matched)"
                note = f"input already differs: the difference arises between {after} and {r.name}: {where}"
                out.append(dataclasses.replace(inp, note="; ".join(t for t in (inp.note, note) if t)))
            prev = r
        out.append(r)
    return out


class _Recorder(TorchFunctionMode):
    """Records ``torch`` function calls made outside every leaf module's forward."""

    def __init__(self, events: list, depth: list[int]) -> None:
        super().__init__()
        self.events, self.depth = events, depth

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if self.depth[0] == 0 and name not in _QUIET:
            self.events.append(("function", _qualified(func)))
        return func(*args, **(kwargs or {}))


def _qualified(func) -> str:
    module = getattr(func, "__module__", "") or ""
    qualname = getattr(func, "__qualname__", "") or ""
    name = getattr(func, "__name__", str(func))  # boolean_dispatch wrappers (F.max_pool2d) keep it
    if qualname.startswith(("TensorBase.", "Tensor.")):
        return "Tensor." + qualname.split(".", 1)[1]
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}" if module.startswith("torch") or not module else f"{module}.{name}"


def torch_events(model: tnn.Module, x: np.ndarray, train: bool) -> list[tuple]:
    """One pass of a copy of ``model``: ``[('module', label, type name) | ('function', name)]``
    in execution order (labels as the layer rows name leaf calls: ``name`` or ``name#k``)."""
    tm = copy.deepcopy(model).train(train)
    events: list[tuple] = []
    depth, counts = [0], {}

    def pre(name):
        def fn(module, args):
            depth[0] += 1

        return fn

    def post(name):
        def fn(module, args, output):
            depth[0] -= 1
            k = counts.get(name, 0)
            counts[name] = k + 1
            events.append(("module", name if k == 0 else f"{name}#{k}", type(module).__name__))

        return fn

    leaves = leaf_modules(tm)
    handles = [m.register_forward_pre_hook(pre(n)) for n, m in leaves.items()]
    handles += [m.register_forward_hook(post(n)) for n, m in leaves.items()]
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [h.remove() for h in handles])
        stack.enter_context(torch.no_grad())
        xt = torch.from_numpy(np.asarray(x)).to(torch_device(tm))
        p = next(iter(tm.parameters()), None)
        xt = xt.to(p.dtype) if (p is not None and xt.is_floating_point()) else xt
        with _Recorder(events, depth):
            tm(xt)
    return events


class Between:
    """The torch code between two leaf calls of one recorded pass of ``model`` on ``x``
    (:func:`torch_events`, recorded the first time it is asked)."""

    def __init__(self, model: tnn.Module, x: np.ndarray, train: bool) -> None:
        self.model, self.x, self.train = model, x, train
        self._events: list[tuple] | None = None

    def events(self, start: str | None, end: str) -> list[tuple] | None:
        """The events after leaf call ``start`` (``None``: the model input) and before ``end``
        (``None`` when the hooks did not see both)."""
        if self._events is None:
            self._events = torch_events(self.model, self.x, self.train)
        ev = self._events
        labels = [e[1] for e in ev if e[0] == "module"]
        if end not in labels or (start is not None and start not in labels):
            return None
        i = 0 if start is None else next(j for j, e in enumerate(ev) if e[:2] == ("module", start)) + 1
        return ev[i : next(j for j, e in enumerate(ev) if e[:2] == ("module", end))]

    def describe(self, start: str | None, end: str) -> str:
        """:func:`describe_between` of these events."""
        return describe_between(self.events(start, end), start, end)

    def lone_module(self, start: str | None, end: str) -> str | None:
        """The label of the one torch module call that is all the code between, else ``None``."""
        ev = self.events(start, end)
        return ev[0][1] if ev is not None and len(ev) == 1 and ev[0][0] == "module" else None

    def last_module(self, start: str | None, end: str) -> str | None:
        """The label of the torch module call that is the last code between (its output is
        ``end``'s input: torchvision's ``relu`` then ``maxpool``), else ``None``."""
        ev = self.events(start, end)
        return ev[-1][1] if ev and ev[-1][0] == "module" else None


def describe_between(events: list[tuple] | None, start: str | None, end: str) -> str:
    """The torch code in ``events`` (:meth:`Between.events`): module calls as ``label (Type)``,
    function calls by name, repeats collapsed."""
    if events is None:
        return "code the hooks could not place"
    seen = []
    for e in events:
        text = f"{e[1]} ({e[2]})" if e[0] == "module" else e[1]
        if text not in seen:
            seen.append(text)
    return ", ".join(seen) if seen else "no torch call (a reshape or view in the port?)"
