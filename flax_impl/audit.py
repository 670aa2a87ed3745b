"""Mode audit for Flax: which BatchNorm and Dropout layers actually ran in training mode.

* Linen: :func:`record_linen_modes` intercepts every ``BatchNorm`` / ``Dropout`` call with
  ``nn.intercept_methods`` and records the mode the module actually received
  (``use_running_average`` / ``deterministic``, from its attribute or the call's keyword).
* NNX: :func:`nnx_modes` reads the same attributes off the module objects at call time.

Under ``jit`` the mode is static, so the flags are read while the step is traced and the step
returns their mean as an output (:func:`train_fraction`): each compiled step reports the mode
its own program runs in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import flax.linen as nn
import jax.numpy as jnp


def _flag(module, kwargs: dict, name: str) -> bool:
    value = kwargs.get(name)
    return bool(getattr(module, name) if value is None else value)


@contextlib.contextmanager
def record_linen_modes() -> Iterator[list[bool]]:
    """Collect, for each Linen BN / Dropout call inside the block, ``True`` if it ran in train mode."""
    flags: list[bool] = []

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__":
            if isinstance(m, nn.BatchNorm):
                flags.append(not _flag(m, kwargs, "use_running_average"))
            elif isinstance(m, nn.Dropout):
                flags.append(not _flag(m, kwargs, "deterministic"))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield flags


def nnx_modes(model) -> list[bool]:
    """For each NNX BatchNorm / Dropout in ``model``: ``True`` if it is set to train mode."""
    from flax import nnx

    flags = []
    for _, m in nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules():
        if isinstance(m, nnx.BatchNorm):
            flags.append(not m.use_running_average)
        elif isinstance(m, nnx.Dropout):
            flags.append(not m.deterministic)
    return flags


def train_fraction(flags: list[bool]) -> jnp.ndarray:
    """Share of mode layers in train mode, as a float32 scalar (``nan`` if there were none)."""
    return jnp.float32(sum(flags) / len(flags) if flags else float("nan"))
