"""Model outputs that are not one tensor, and Flax ports written for a mapped axis.

A model may return ``(logits, loss)``, ``(logits, None)``, a dict or a dataclass (Hugging
Face's ``ModelOutput``). :func:`leaves` flattens such a tree into ``{path: leaf}`` (``'0'``,
``'logits'``, ``'aux.0'``; ``''`` for a bare tensor). The harness compares every tensor leaf
both sides return; every other pass (layers, gradients, trajectory) runs on one leaf,
``--output PATH`` or the first tensor leaf, through :func:`adapt_torch` / :func:`adapt_flax`,
which make the models return that leaf without changing their parameter names.

:func:`adapt_flax` also runs a Flax ``BatchNorm`` declared with ``axis_name`` (written for
``pmap``) outside any mapped axis as on an axis of size 1: ``pmean`` over one member is the
identity, so ``axis_name=None`` computes the same thing.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.arrays import to_jax

#: set while :func:`all_outputs` is active: adapted torch models return their whole tree
_ALL = contextvars.ContextVar("parity_all_outputs", default=False)


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{path: leaf}`` of an output tree: tuples and lists by position, mappings by key,
    dataclasses by field (mapping-dataclasses such as ``ModelOutput`` by key); ``None`` leaves
    are kept. A bare array is ``{'': array}``."""
    join = (lambda k: f"{prefix}.{k}") if prefix else str
    if isinstance(tree, Mapping):
        items = list(tree.items())
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        items = [(f.name, getattr(tree, f.name)) for f in dataclasses.fields(tree)]
    elif isinstance(tree, (tuple, list)):
        items = list(enumerate(tree))
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(leaves(v, join(k)))
    return out


def is_array(x: Any) -> bool:
    """True for a torch tensor, a jax or numpy array (not a Python scalar, not ``None``)."""
    return hasattr(x, "shape") and hasattr(x, "dtype")


def pick(tree: Any, path: str) -> Any:
    """The leaf at ``path`` (``KeyError`` naming the paths there are when it has none)."""
    found = leaves(tree)
    if path not in found or not is_array(found[path]):
        have = [p for p, v in found.items() if is_array(v)]
        if have == [""]:  # the whole output is one tensor: no leaf to pick
            raise KeyError(
                f"no tensor output {path!r}: the output is one tensor, --output picks a leaf of a tuple or dict"
            )
        raise KeyError(f"no tensor output {path!r} (tensor outputs: {', '.join(map(repr, have)) or 'none'})")
    return found[path]


def default_path(tree: Any) -> str | None:
    """``None`` for a bare tensor; else the first tensor leaf's path (``KeyError`` if none)."""
    if is_array(tree):
        return None
    for path, v in leaves(tree).items():
        if is_array(v):
            return path
    raise KeyError("the model returned no tensor")


@contextlib.contextmanager
def all_outputs() -> Iterator[None]:
    """Inside the block, torch models adapted by :func:`adapt_torch` return their whole tree."""
    token = _ALL.set(True)
    try:
        yield
    finally:
        _ALL.reset(token)


@dataclass(frozen=True)
class ExtraInputs:
    """The inputs a model takes after the first (``unet(x, time)``, ``model(ids, mask)``):
    positional ``args`` and keyword ``kwargs`` as numpy arrays, batch first, in each side's
    layout (``flax_*`` channels-last where the first input is), drawn once and given with every
    batch (its first ``n`` samples for a batch of ``n``). ``flax_kwargs`` may hold other values
    (a Flax ``__call__``'s required keyword-only arguments, from ``flax_call_kwargs``)."""

    torch_args: tuple = ()
    torch_kwargs: Mapping = dataclasses.field(default_factory=dict)
    flax_args: tuple = ()
    flax_kwargs: Mapping = dataclasses.field(default_factory=dict)


def _torch_value(a: Any, n: int, module: Any) -> Any:
    import torch

    if not isinstance(a, np.ndarray):
        return a
    p = next(iter(module.parameters()), None)
    t = torch.from_numpy(np.ascontiguousarray(a[:n]))
    if p is not None:
        t = t.to(p.device, p.dtype) if t.is_floating_point() else t.to(p.device)
    return t


def _flax_value(a: Any, n: int) -> Any:
    import jax
    import jax.numpy as jnp

    if not isinstance(a, np.ndarray):
        return a
    if a.dtype.kind == "f":  # float64 under jax.enable_x64 (the float64 passes), else float32
        return to_jax(a[:n], jax.dtypes.canonicalize_dtype(jnp.float64))
    return to_jax(a[:n])


def adapt_torch(model: Any, path: str | None, only: bool = False, extra: ExtraInputs | None = None) -> Any:
    """``model`` (changed in place, and returned) made to return its output leaf ``path`` (its
    whole output when ``None``) and, called with one input, to get ``extra``'s other inputs;
    same parameters, names and type name. Under :func:`all_outputs` it returns the tree.
    ``only``: the user picked this leaf (``--output``), the others are not compared."""
    base = type(model)

    @functools.wraps(base.forward)
    def forward(self, x, *args, **kwargs):
        if extra is not None and not args:
            n = x.shape[0]
            args = tuple(_torch_value(a, n, self) for a in extra.torch_args)
            kwargs = {**{k: _torch_value(v, n, self) for k, v in extra.torch_kwargs.items()}, **kwargs}
        out = base.forward(self, x, *args, **kwargs)
        return out if (_ALL.get() or path is None) else pick(out, path)

    attrs = {
        "forward": forward,
        "__module__": base.__module__,
        "_parity_output": path,
        "_parity_only": only,
    }
    model.__class__ = type(base.__name__, (base,), attrs)
    return model


def _flax_call(orig: Callable, path: str | None, extra: ExtraInputs | None, around: Callable) -> Callable:
    """The ``__call__`` of an :func:`adapt_flax` class."""

    @functools.wraps(orig)
    def __call__(self, x, *args, **kwargs):
        if extra is not None and not args:
            n = x.shape[0]
            args = tuple(_flax_value(a, n) for a in extra.flax_args)
            kwargs = {**{k: _flax_value(v, n) for k, v in extra.flax_kwargs.items()}, **kwargs}
        with around():
            out = orig(self, x, *args, **kwargs)
        if path is None:  # a bare tensor as it is, any other output as {path: leaf}
            return out if is_array(out) else leaves(out)
        return pick(out, path)

    return __call__


def unbind_axis_names(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    """A Linen interceptor: a ``BatchNorm`` with an ``axis_name`` runs with ``axis_name=None``
    (the same statistics as on a mapped axis of size 1)."""
    import flax.linen as nn

    module = context.module
    if isinstance(module, nn.BatchNorm) and module.axis_name is not None:
        object.__setattr__(module, "axis_name", None)
    return next_fun(*args, **kwargs)


def adapt_flax(model: Any, path: str | None, extra: ExtraInputs | None = None) -> Any:
    """A Flax model (Linen: a new module of a subclass with the same fields; NNX: a copy of a
    subclass) that returns its output leaf ``path`` (when ``None``, every leaf as ``{path:
    leaf}``, a pytree whatever the model's own output class), gets ``extra``'s other inputs
    when called with one, and runs every ``BatchNorm`` with ``axis_name=None``. Parameter paths
    and the ``__call__`` signature are those of ``model``."""
    from flax import nnx

    base = type(model)
    attrs = {"__module__": base.__module__, "_parity_output": path}
    if isinstance(model, nnx.Module):
        new = nnx.clone(model)
        for _, m in nnx.iter_modules(new):
            if isinstance(m, nnx.BatchNorm) and m.axis_name is not None:
                m.axis_name = None
        attrs["__call__"] = _flax_call(base.__call__, path, extra, contextlib.nullcontext)
        object.__setattr__(new, "__class__", type(base.__name__, (base,), attrs))
        return new
    import flax.linen as nn

    around = functools.partial(nn.intercept_methods, unbind_axis_names)
    attrs["__call__"] = _flax_call(base.__call__, path, extra, around)
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name")
    }
    return type(base.__name__, (base,), attrs)(**fields)


def to_numpy_tree(tree: Any) -> dict[str, np.ndarray | None]:
    """:func:`leaves` with every array as numpy (torch tensors detached); other leaves ``None``."""
    out = {}
    for p, v in leaves(tree).items():
        if hasattr(v, "detach"):
            v = v.detach().cpu().numpy().copy()
        out[p] = np.asarray(v) if is_array(v) else None
    return out


def torch_tree(model: Any, x: np.ndarray, train: bool, masks: Any, given: Any, float64: bool):
    """``({path: numpy}, dropout uniforms)`` of one pass of a private copy of ``model`` (every
    output leaf; shared dropout masks when ``masks``)."""
    import torch

    from parity.harness.dropout import torch_shared_dropout
    from parity.harness.sides import torch_device

    tm = copy.deepcopy(model).train(train)
    tm = tm.double() if float64 else tm
    with contextlib.ExitStack() as stack:
        record = stack.enter_context(torch_shared_dropout(tm, masks, 0, given=given)) if masks else {}
        stack.enter_context(torch.no_grad())
        stack.enter_context(all_outputs())
        xt = torch.from_numpy(x).to(torch_device(tm))
        dtype = next(iter(tm.parameters()), torch.zeros((), dtype=torch.float32)).dtype
        out = tm(xt.to(dtype) if xt.is_floating_point() else xt)
    return to_numpy_tree(out), record


def flax_tree(side: Any, x: np.ndarray, train: bool, hook: Any, float64: bool, seed: int = 0):
    """``{path: numpy}`` of one pass of a :class:`~parity.harness.sides.FlaxSide` on ``x``
    (Flax layout), every output leaf; a ``'dropout'`` rng is passed (a port whose dropout runs
    in eval mode is then measured, not refused)."""
    import jax
    import jax.numpy as jnp

    from parity.harness.flax_grad import float_cast

    with jax.enable_x64(True) if float64 else contextlib.nullcontext():
        cast = float_cast(jnp.float64 if float64 else None)
        p, b, r = (jax.tree.map(cast, t) for t in (side.params, side.batch_stats, side.rest))
        rng = jax.random.key(seed)
        out, _, _ = side.apply(p, b, r, cast(to_jax(x)), train=train, hook=hook, rng=rng)
        return to_numpy_tree(out)


def nnx_as(model: Any, cls: type) -> Any:
    """A copy of the NNX ``model`` (same state) whose class is ``cls`` (an :func:`adapt_flax`
    class of the same base): the whole-output twin of an adapted model."""
    from flax import nnx

    new = nnx.clone(model)
    object.__setattr__(new, "__class__", cls)
    return new


def extra_inputs(flax_spec: str, first: Any, extra: tuple[tuple[str, Any], ...]) -> ExtraInputs | None:
    """The inputs after ``first`` (``--input``), drawn once from seed 1, and the Flax factory
    file's ``flax_call_kwargs``; ``None`` when there are neither. ``first`` and ``extra`` are
    :class:`parity.harness.specs.SpecInput` (torch layout). The one path ``parity map``,
    ``convert`` and ``check`` build them by."""
    from parity.harness.results import CheckError
    from parity.layout import activation_to_flax
    from parity.spec import flax_call_kwargs

    hook = flax_call_kwargs(flax_spec)
    if not extra and not hook:
        return None
    rng = np.random.default_rng(1)
    targs, tkw, fargs, fkw = [], {}, [], {}
    for name, e in extra:
        if e.shape[0] != first.shape[0]:
            raise CheckError(
                f"--input {name or ''}{'=' if name else ''}{','.join(map(str, e.shape))}: batch "
                f"{e.shape[0]}, but the main input has {first.shape[0]}"
            )
        a = e.sample(rng)
        f = activation_to_flax(a, layout=e.layout)
        if name:
            tkw[name], fkw[name] = a, f
        else:
            targs.append(a)
            fargs.append(f)
    return ExtraInputs(tuple(targs), tkw, tuple(fargs), {**fkw, **hook})
