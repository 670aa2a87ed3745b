"""Flax modules that fix their own computation dtype (``nn.Dense(..., dtype=jnp.float32)``),
widened so the float64 passes compute in float64 (issue 20 item 6).

A module ``dtype`` below float64 makes the float64 re-judgement compute in float32, and the
harness then judges those layers on the float32 scale (:mod:`parity.harness.layers64`). Where
Flax allows it, :func:`widen_flax` removes that limit instead:

- Linen: a subclass of the model (same fields, parameter paths and ``__call__`` signature)
  whose calls run under an interceptor that sets ``dtype=float64`` on every module (the model
  and its submodules) whose ``dtype`` field is a narrower float, *only while float64 is
  enabled* (``jax.enable_x64``): float32 passes run the user's model unchanged.
- NNX: a copy whose Flax-library layers (``nnx.Linear``, ``nnx.Conv``, ``nnx.LayerNorm``, ...)
  with a narrower float ``dtype`` get ``dtype=None``: Flax then computes in the dtype of the
  inputs and weights, the same float32 as before in float32 passes and float64 in the float64
  ones. User classes are left alone (their ``dtype`` may feed ``astype``).

A port that casts inside its own code (``x.astype(jnp.float32)``) stays narrow; the harness's
float32-scale judgement (and its note) covers it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp


def _narrow(dtype: Any) -> bool:
    """True for a floating dtype narrower than float64 (float32, float16, bfloat16)."""
    try:
        d = jnp.dtype(dtype)
    except TypeError:
        return False
    return jnp.issubdtype(d, jnp.floating) and d.itemsize < 8


def _x64() -> bool:
    return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64


def _is_embed(module: Any) -> bool:
    """A Flax ``Embed`` (default ``dtype=float32``): its lookup of weights that were float32 is
    exact in any dtype, so it is neither widened nor named."""
    import flax.linen as nn
    from flax import nnx

    return isinstance(module, (nn.Embed, nnx.Embed))


def _widen_linen(module: Any, record: set[str]) -> None:
    fields = getattr(type(module), "__dataclass_fields__", {})
    if _x64() and "dtype" in fields and _narrow(getattr(module, "dtype", None)) and not _is_embed(module):
        object.__setattr__(module, "dtype", jnp.float64)
        record.add("/".join(map(str, getattr(module, "path", ()))) or type(module).__name__)


def _interceptor(record: set[str], next_fun: Any, args: tuple, kwargs: dict, context: Any) -> Any:
    _widen_linen(context.module, record)
    return next_fun(*args, **kwargs)


def widen_flax(model: Any, record: set[str]) -> Any:
    """The widened model (module docstring); the model passed in is not modified (NNX: returned
    as it is when no layer is narrow). ``record`` gets the names of the widened modules: NNX
    the layers set to ``dtype=None``, at once; Linen (whose submodules exist only inside a call)
    the module paths the interceptor widens, during each float64 pass."""
    from flax import nnx

    if isinstance(model, nnx.Module):
        new = nnx.clone(model)
        changed = False
        for path, m in nnx.iter_modules(new):
            if (
                type(m).__module__.startswith("flax.")
                and _narrow(getattr(m, "dtype", None))
                and not _is_embed(m)
            ):
                object.__setattr__(m, "dtype", None)
                record.add(".".join(map(str, path)) or type(m).__name__)
                changed = True
        return new if changed else model
    import flax.linen as nn

    base = type(model)
    orig = base.__call__

    @functools.wraps(orig)
    def __call__(self, *args, **kwargs):
        _widen_linen(self, record)
        with nn.intercept_methods(functools.partial(_interceptor, record)):
            return orig(self, *args, **kwargs)

    attrs = {"__module__": base.__module__, "__call__": __call__}
    fields = {
        f.name: getattr(model, f.name)
        for f in dataclasses.fields(model)
        if f.init and f.name not in ("parent", "name")
    }
    return type(base.__name__, (base,), attrs)(**fields)
