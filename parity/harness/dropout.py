"""Dropout with identical masks on both sides of a comparison.

One uniform array per dropout call is drawn by :class:`SharedDropout` from a numpy generator
keyed by ``(seed, step, layer name, call index)``, in torch layout; torch applies it through a
forward hook (:func:`torch_shared_dropout`), Flax through a call hook (:func:`flax_dropout_hook`).
Each side keeps ``u >= rate`` with its *own* rate, so a rate mismatch still shows.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as tnn

from parity.layout import torch_to_flax_layout

#: ``hook(name, module, call_next, args, kwargs) -> output``: sees one Flax submodule call.
FlaxHook = Callable[[str, Any, Callable, tuple, dict], Any]


class SharedDropout:
    """Identical dropout masks for torch and Flax, drawn from one numpy seed.

    :meth:`uniform` returns the same ``U[0, 1)`` float32 array, in torch layout, for the same
    ``(step, name, call, shape)``; :func:`mask_scale` turns it into the kept-and-scaled mask.
    Only for parity runs: the models themselves keep their own dropout.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    def uniform(self, step: int, name: str, call: int, shape: Sequence[int]) -> np.ndarray:
        """Uniform draws for dropout layer ``name``'s ``call``-th call at ``step`` (torch layout)."""
        rng = np.random.default_rng([self.seed, int(step), zlib.crc32(name.encode()), int(call)])
        return rng.random(tuple(shape), dtype=np.float32)


def mask_scale(u, rate: float, xp=np):
    """``(u >= rate) * float32(1 / (1 - rate))``: the kept-and-scaled mask, computed the same
    way in numpy (torch side) and jax.numpy (Flax side) so both multiply by identical values."""
    if rate >= 1.0:
        return xp.zeros_like(u)
    return (u >= rate).astype(xp.float32) * xp.float32(1.0 / (1.0 - rate))


def active_dropout(model: tnn.Module) -> list[str]:
    """Names of the dropout layers of ``model`` with ``p > 0``."""
    return [n for n, m in model.named_modules() if isinstance(m, tnn.modules.dropout._DropoutNd) and m.p > 0]


@contextlib.contextmanager
def torch_shared_dropout(
    model: tnn.Module,
    masks: SharedDropout,
    step: int,
    record: dict[str, list[np.ndarray]] | None = None,
    given: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> Iterator[dict]:
    """Forward hooks that make every ``nn.Dropout`` of ``model`` use the shared masks.

    In train mode each call's output becomes ``input * mask_scale(u, p)``; ``u`` is taken from
    ``given`` (``{name: [u per call]}``, torch layout) when present, else drawn from ``masks``.
    The ``u`` used are appended to the yielded dict (``{name: [u, ...]}``). Hooks are removed on
    exit. ``nn.Dropout1d/2d/3d`` (channel masks) and ``AlphaDropout`` are not supported.
    """
    record = {} if record is None else record
    handles = []

    def hook(name):
        def fn(module, args, output):
            if not module.training or module.p == 0:
                return None
            calls = record.setdefault(name, [])
            k = len(calls)
            x = args[0]
            if given is not None and name in given and k < len(given[name]):
                u = np.asarray(given[name][k], np.float32)
            else:
                u = masks.uniform(step, name, k, tuple(x.shape))
            calls.append(u)
            m = torch.from_numpy(mask_scale(u, float(module.p))).to(device=x.device, dtype=x.dtype)
            return x * m

        return fn

    for name, m in model.named_modules():
        if type(m) is tnn.Dropout:
            handles.append(m.register_forward_hook(hook(name)))
        elif isinstance(m, (tnn.Dropout1d, tnn.Dropout2d, tnn.Dropout3d, tnn.AlphaDropout)):
            for h in handles:
                h.remove()
            raise NotImplementedError(
                f"shared dropout masks support nn.Dropout only; {name!r} is {type(m).__name__}"
            )
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def is_flax_dropout(module: Any) -> bool:
    """True for a Linen or NNX ``Dropout`` module."""
    import flax.linen as nn
    from flax import nnx

    return isinstance(module, (nn.Dropout, nnx.Dropout))


def flax_dropout_active(module: Any, kwargs: dict) -> bool:
    """Whether a Flax ``Dropout`` call would drop (not deterministic, rate > 0)."""
    det = kwargs.get("deterministic")
    det = module.deterministic if det is None else det
    return not bool(det) and float(module.rate) > 0.0


def flax_dropout_hook(
    uniforms: Mapping[str, Sequence[jax.Array]], inner: FlaxHook | None = None, *, torch_layout: bool = False
) -> FlaxHook:
    """A :data:`FlaxHook` that applies shared masks to Flax ``Dropout`` calls.

    ``uniforms`` is ``{flax name: [u per call]}`` in Flax layout, or with ``torch_layout`` as
    torch drew them, each brought to the layout of the Flax dropout's input when it is called
    (:func:`torch_to_flax_layout`: channels-first maps are moved, tokens ``(N, L, D)`` are not).
    Other calls go to ``inner`` (or straight through). Works at trace time inside ``jit``.
    """
    counters: dict[str, int] = {}

    def hook(name, module, call_next, args, kwargs):
        if is_flax_dropout(module) and flax_dropout_active(module, kwargs) and name in uniforms:
            k = counters.get(name, 0)
            counters[name] = k + 1
            if k >= len(uniforms[name]):
                raise ValueError(
                    f"Flax dropout {name!r} was called {k + 1} times but torch drew masks for "
                    f"{len(uniforms[name])} call(s); a hook serves one forward pass"
                )
            u = jnp.asarray(uniforms[name][k])
            if torch_layout and args:
                u = torch_to_flax_layout(u, np.shape(args[0]))
            m = mask_scale(u, float(module.rate), jnp)
            masked = lambda x, *a, **kw: x * m.astype(x.dtype)
            return inner(name, module, masked, args, kwargs) if inner else masked(*args, **kwargs)
        return inner(name, module, call_next, args, kwargs) if inner else call_next(*args, **kwargs)

    return hook
