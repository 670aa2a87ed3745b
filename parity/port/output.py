"""The output folder of ``parity port``: staged atomically, with the weights and a training step.

:func:`staged_folder` builds the folder in a temporary directory beside ``DIR`` and renames it
into place only when everything is written (an existing ``DIR`` is replaced only with
``force``): ``DIR`` is either as it was, or complete. :func:`weights_tree` reads the converted
weights out of the checked pair (Linen variables, or an NNX model's state without its rng
streams) and :func:`weights_files` serialises them: ``weights.msgpack`` (``flax.serialization``)
and ``weights.safetensors`` (the same arrays, keys the ``/``-joined Flax paths, Flax layout).
:func:`train_step_source` writes ``train_step.py``, the mode pattern of the chosen style.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from parity.errors import ParityError
from parity.port.train_step import ExampleInput, ModelFacts, train_step_source


class FolderError(ParityError):
    """An output folder that cannot be written or would overwrite work (exit 2, nothing written)."""


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse, before any work, an ``out`` that is not a directory, a non-empty directory
    without ``force``, or one whose parent cannot be written."""
    if out.is_symlink():  # the staged folder would replace the link, not what it points to
        raise FolderError(f"--out {str(out)!r} is a symbolic link; give the folder itself")
    if out.exists() and not out.is_dir():
        raise FolderError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FolderError(f"--out {str(out)!r} exists and is not empty; give --force to replace it")
    from parity.io import ensure_writable_dir

    try:
        ensure_writable_dir(out.resolve().parent)
    except OSError as e:
        raise FolderError(str(e)) from None


@contextlib.contextmanager
def staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """Yield a new temporary directory beside ``out``; on success it becomes ``out`` (the old
    ``out``, when replaced, is removed after the rename). On any exception, or Ctrl-C, the
    temporary directory is removed and ``out`` is left as it was."""
    check_out_dir(out, force)
    parent = out.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".port-tmp", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a folder gets the usual bits
        old = None
        if out.exists():
            check_out_dir(out, force)  # it may have changed while the port was built
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.replace(out, old / "dir")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------ the weights


def weights_tree(pair: Any) -> dict:
    """The converted weights of a checked pair as a nested dict of numpy arrays: Linen
    ``{'params': ..., 'batch_stats': ...}``, or an NNX model's state without its rng streams
    (``nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.RngState)))``; integer keys for list items)."""
    import jax

    if pair.kind == "linen":
        tree = pair.variables
    else:
        from flax import nnx

        tree = nnx.to_pure_dict(nnx.state(pair.flax, nnx.Not(nnx.RngState)))
    return jax.tree.map(lambda a: np.array(a, copy=True), _plain(tree))


def _plain(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def flat_weights(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """``{'params/conv1/kernel': array, ...}``: the leaves of ``tree`` keyed by their path."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_weights(v, key + "/"))
        else:
            out[key] = np.ascontiguousarray(v)
    return out


def weights_files(tree: Mapping) -> dict[str, bytes]:
    """``{'weights.msgpack': ..., 'weights.safetensors': ...}`` of :func:`weights_tree`'s tree."""
    from flax import serialization
    from safetensors.numpy import save

    return {
        "weights.msgpack": serialization.msgpack_serialize(dict(tree)),
        "weights.safetensors": save(flat_weights(tree), metadata={"layout": "flax"}),
    }


# ------------------------------------------------------------------------- train_step.py


def model_facts(model: Any, variables: Mapping | None, tensor_output: bool) -> ModelFacts:
    """:class:`ModelFacts` of a built Linen module (with its ``variables``) or NNX module."""
    import inspect

    from flax import nnx

    if isinstance(model, nnx.Module):
        names = set()
        for _, m in nnx.iter_modules(model):
            names |= {a for a in ("deterministic", "use_running_average") if hasattr(m, a)}
        mode = tuple((a, True) for a in ("deterministic", "use_running_average") if a in names)
        return ModelFacts(eval_mode=mode, tensor_output=tensor_output)
    takes = "train" in inspect.signature(type(model).__call__).parameters
    return ModelFacts(takes, tuple(k for k in variables or {} if k != "params"), (), tensor_output)


# ------------------------------------------------------------------------------ the folder


@dataclass(frozen=True)
class Written:
    """What :func:`write_port` wrote: the file names, why the weights could not be written
    (``None``: they were), and the :class:`parity.harness.specs.SpecModels` of the written
    ``model.py`` against the torch SPEC, holding the pair whose weights were written."""

    files: tuple[str, ...]
    problem: str | None
    models: Any


def _example_inputs(inp: Any, extra: tuple) -> list[ExampleInput]:
    from parity.spec import flax_input_shape

    return [
        ExampleInput(flax_input_shape(s.shape, s.channels_last), s.dtype, s.high, name)
        for name, s in (("", inp), *extra)
    ]


def _pair_files(port: Any, models: Any, pair: Any, torch_spec: str) -> dict[str, bytes]:
    """The weights files and ``train_step.py`` of the converted ``pair``."""
    from parity.spec import build

    tree = weights_tree(pair)
    files = weights_files(tree)
    model = pair.flax if pair.kind == "nnx" else build(models.flax, ("linen",))[0]
    facts = model_facts(model, tree if pair.kind == "linen" else None, pair.full_flax is None)
    text = train_step_source(
        port.style, torch_spec, _example_inputs(models.input, models.extra_inputs), facts
    )
    files["train_step.py"] = text.encode()
    return files


def write_port(port: Any, torch_spec: str, out: Path, force: bool, inp: Any, extra: tuple, log) -> Written:
    """Write ``out`` atomically (:func:`staged_folder`): ``model.py`` (``port.source``), the torch
    weights converted into it (``weights.msgpack``, ``weights.safetensors``) and
    ``train_step.py``. The pair is built on the CPU from the staged ``model.py``
    (:meth:`parity.harness.specs.SpecModels.pair`); when it cannot be (a partial port's stub, a
    conversion error), only ``model.py`` is written and :attr:`Written.problem` says why."""
    from parity.convert import ConversionError
    from parity.harness.specs import SpecModels
    from parity.spec import SpecError

    with staged_folder(out, force) as tmp:
        (tmp / "model.py").write_text(port.source, encoding="utf-8")
        models = SpecModels(torch_spec, f"{tmp / 'model.py'}:{port.factory}", inp, extra_inputs=extra)
        log("# converting the torch weights into the port")
        files, problem = {}, None
        try:
            pair = models.pair("cpu")
            files = _pair_files(port, models, pair, torch_spec)
        except (SpecError, ConversionError, OSError, NotImplementedError) as e:
            problem = str(e)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
    # the same pair (SpecModels' cache is shared by replace): what is checked is what was written
    final = dataclasses.replace(models, flax=f"{out / 'model.py'}:{port.factory}")
    return Written(("model.py", *files), problem, final)
