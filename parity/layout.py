"""Every layout rule between PyTorch and Flax, each written once.

PyTorch is channels-first: activations NCHW / NCW, conv kernels OIHW / OIW, linear weights
``(out, in)``. Flax is channels-last: activations NHWC / NWC, conv kernels HWIO / WIO, dense
kernels ``(in, out)``. Flattening a feature map therefore enumerates features in a different
order (torch ``c*H*W + h*W + w``, Flax ``h*W*C + w*C + c``), which is why the first dense layer
after a flatten needs its input rows permuted, not just transposed.

All functions are exact: they only move elements, so every round trip is bit-exact. The
activation rules at the end (:func:`layout_hint`, :func:`torch_to_flax_layout`) read torch
module types and accept jax arrays; torch and jax are imported only when they are used.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, Literal

import numpy as np


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """Activations NCHW -> NHWC (or NCW -> NWC, any number of spatial dims)."""
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def to_channels_first(x: np.ndarray) -> np.ndarray:
    """Activations NHWC -> NCHW (or NWC -> NCW)."""
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def conv_kernel_to_flax(w: np.ndarray) -> np.ndarray:
    """Conv kernel OIHW -> HWIO (or OIW -> WIO)."""
    spatial = tuple(range(2, w.ndim))
    return np.ascontiguousarray(w.transpose(*spatial, 1, 0))


def conv_kernel_to_torch(k: np.ndarray) -> np.ndarray:
    """Conv kernel HWIO -> OIHW (or WIO -> OIW)."""
    n = k.ndim - 2
    return np.ascontiguousarray(k.transpose(n + 1, n, *range(n)))


def dense_kernel_to_flax(w: np.ndarray, flatten_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Linear weight ``(out, in)`` -> Dense kernel ``(in, out)``.

    ``flatten_shape`` is the channels-first shape ``(C, *spatial)`` of the feature map that
    was flattened into this layer's input; when given, the input rows are re-ordered from
    torch's channel-first flatten order to Flax's channel-last one.
    """
    if flatten_shape is None:
        return np.ascontiguousarray(w.T)
    out = w.shape[0]
    w = w.reshape(out, *flatten_shape)  # (out, C, *spatial)
    w = np.moveaxis(w, 1, -1)  # (out, *spatial, C)
    return np.ascontiguousarray(w.reshape(out, -1).T)  # (spatial*C, out)


def dense_kernel_to_torch(k: np.ndarray, flatten_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Dense kernel ``(in, out)`` -> Linear weight ``(out, in)``; inverse of :func:`dense_kernel_to_flax`."""
    if flatten_shape is None:
        return np.ascontiguousarray(k.T)
    out = k.shape[1]
    c, spatial = flatten_shape[0], flatten_shape[1:]
    w = k.T.reshape(out, *spatial, c)  # (out, *spatial, C)
    w = np.moveaxis(w, -1, 1)  # (out, C, *spatial)
    return np.ascontiguousarray(w.reshape(out, -1))


def conv_transpose_kernel_to_flax(w: np.ndarray) -> np.ndarray:
    """ConvTranspose weight ``(I, O, *k)`` -> Flax ``ConvTranspose`` kernel ``(*k, I, O)``,
    spatially flipped: torch's transposed convolution is the gradient of a convolution, which
    correlates with the flipped kernel; Flax (``transpose_kernel=False``) does not flip."""
    spatial = tuple(range(2, w.ndim))
    k = w.transpose(*spatial, 0, 1)
    return np.ascontiguousarray(np.flip(k, axis=tuple(range(len(spatial)))))


def conv_transpose_kernel_to_torch(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`conv_transpose_kernel_to_flax`: ``(*k, I, O)`` -> ``(I, O, *k)``."""
    n = k.ndim - 2
    k = np.flip(k, axis=tuple(range(n)))
    return np.ascontiguousarray(k.transpose(n, n + 1, *range(n)))


def conv_transpose_padding(
    kernel_size: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...] = (),
    output_padding: tuple[int, ...] = (),
) -> list[tuple[int, int]]:
    """Explicit Flax ``ConvTranspose`` padding reproducing torch's ``ConvTranspose(padding=p,
    output_padding=op, dilation=d)``: ``(d*(k-1) - p, d*(k-1) - p + op)`` per spatial dim.

    Flax pads the stride-dilated input and correlates with the (flipped) kernel; torch's output
    loses ``p`` on each side of the full ``(in-1)*s + d*(k-1) + 1`` result and gains ``op`` at the end.
    """
    n = len(kernel_size)
    dilation = dilation or (1,) * n
    output_padding = output_padding or (0,) * n
    return [
        (d * (k - 1) - p, d * (k - 1) - p + op)
        for k, p, d, op in zip(kernel_size, padding, dilation, output_padding, strict=True)
    ]


def heads_kernel_to_flax(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Attention projection ``(E_out, E_in)`` (torch Linear layout) -> Flax ``(E_in, heads,
    head_dim)``; head ``h`` owns output features ``h*head_dim : (h+1)*head_dim``, as in torch."""
    return np.ascontiguousarray(w.T.reshape(w.shape[1], num_heads, -1))


def heads_kernel_to_torch(k: np.ndarray) -> np.ndarray:
    """Inverse of :func:`heads_kernel_to_flax`: ``(E_in, heads, head_dim)`` -> ``(E_out, E_in)``."""
    return np.ascontiguousarray(k.reshape(k.shape[0], -1).T)


# ---------------------------------------------------------------------- activation layouts

#: How a torch activation is laid out: ``channels_first`` (torch ``(N, C, *spatial)``, Flax
#: ``(N, *spatial, C)``) or ``same`` (one layout in both frameworks: tokens ``(N, L, D)``,
#: features ``(N, F)``, token ids).
Layout = Literal["channels_first", "same"]
LAYOUTS = ("channels_first", "same")


@cache
def _module_layouts() -> tuple[tuple, tuple]:
    """``(channels-first module types, same-layout module types)`` of torch leaf modules."""
    from torch import nn

    from parity.convert.flatten import POOLING_MODULES

    channels_first = (
        nn.modules.conv._ConvNd,
        nn.modules.batchnorm._BatchNorm,
        nn.modules.instancenorm._InstanceNorm,
        nn.GroupNorm,
        nn.Upsample,
        *POOLING_MODULES,
    )
    # modules that act on the last dimension: their output is laid out alike in both frameworks
    same = (nn.Linear, nn.Bilinear, nn.LayerNorm, nn.RMSNorm, nn.Embedding, nn.MultiheadAttention)
    return channels_first, same


def layout_hint(module: Any) -> Layout | None:
    """The layout of torch ``module``'s output known from its type (``None`` for element-wise
    and unknown modules, whose output is laid out like their input)."""
    channels_first, same = _module_layouts()
    if isinstance(module, same):
        return "same"
    return "channels_first" if isinstance(module, channels_first) else None


def _move_channels_last(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return to_channels_last(x)
    import jax.numpy as jnp

    return jnp.moveaxis(x, 1, -1)


_AMBIGUOUS: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("ambiguous_layout", default=None)


@contextlib.contextmanager
def ambiguous_layout(layout: Layout | None) -> Iterator[None]:
    """Within the block, :func:`torch_to_flax_layout` reads an activation whose shape cannot show
    its layout and whose module gives no hint in ``layout``: the model input's layout, so that
    a GPT's ``(N, L, D)`` tokens with ``L == D`` are not read as channels-first."""
    token = _AMBIGUOUS.set(layout)
    try:
        yield
    finally:
        _AMBIGUOUS.reset(token)


def sequence_first(torch_shape: Sequence[int], flax_shape: Sequence[int]) -> bool:
    """True when a torch token tensor is ``(L, N, D)`` (``nn.MultiheadAttention`` with
    ``batch_first=False``, CLIP's ``x.permute(1, 0, 2)``) and its Flax counterpart ``(N, L, D)``."""
    s, t = tuple(torch_shape), tuple(flax_shape)
    return len(s) == 3 and s[0] != s[1] and t == (s[1], s[0], *s[2:])


def torch_to_flax_layout(
    x: Any, flax_shape: Sequence[int] | None, hint: Layout | None = None, like: Any = None
) -> Any:
    """A torch activation ``x`` (numpy or jax) in the layout of its Flax counterpart.

    The Flax shape decides: ``x`` is moved channels-first -> channels-last when only the moved
    shape is ``flax_shape``, kept when only its own shape is. When both are (``C`` equal to
    every spatial size) or neither is (a mismatch the caller reports), ``hint`` decides. With
    no hint and both shapes equal, ``like`` (the Flax tensor itself, when the caller has it)
    decides: the reading closer to it, since a torch model may permute to channels-last itself
    (ConvNeXt's ``x.permute(0, 2, 3, 1)`` before its own LayerNorm class). Without ``like``,
    the layout set by :func:`ambiguous_layout` (the model input's) decides. A sequence-first
    ``(L, N, D)`` token tensor whose Flax counterpart is ``(N, L, D)`` is swapped
    (:func:`sequence_first`). Otherwise an ``ndim >= 3`` activation is read channels-first.
    """
    shape = tuple(np.shape(x))
    moved = (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else shape
    target = None if flax_shape is None else tuple(flax_shape)
    if len(shape) < 3 or (target == shape and target != moved):
        return x
    if target == moved and target != shape:
        return _move_channels_last(x)
    if target is not None and sequence_first(shape, target) and target != moved:
        return np.swapaxes(x, 0, 1) if isinstance(x, np.ndarray) else x.swapaxes(0, 1)
    if hint is None and like is not None and target == shape == moved:
        kept, other = np.asarray(x, np.float64), np.asarray(like, np.float64)
        closer_kept = np.abs(kept - other).max() < np.abs(to_channels_last(kept) - other).max()
        return x if closer_kept else _move_channels_last(x)
    hint = hint or _AMBIGUOUS.get()
    return x if hint == "same" else _move_channels_last(x)


def activation_to_flax(
    x: np.ndarray, flatten_shape: Sequence[int] | None = None, layout: Layout = "channels_first"
) -> np.ndarray:
    """A torch activation in Flax layout.

    ``ndim >= 3`` and ``layout='channels_first'``: channels-first -> channels-last;
    ``layout='same'`` (tokens): unchanged. With ``flatten_shape`` (the channels-first
    ``(C, *spatial)`` that was flattened into a 2-D ``(N, C*prod(spatial))`` input), the
    features are re-ordered from torch's flatten order to Flax's. Otherwise unchanged.
    """
    x = np.asarray(x)
    if flatten_shape:
        n = x.shape[0]
        return to_channels_last(x.reshape(n, *flatten_shape)).reshape(n, -1)
    return to_channels_last(x) if x.ndim >= 3 and layout == "channels_first" else x


def torch_shape_of(flax_shape: Sequence[int]) -> tuple[int, ...]:
    """The torch (channels-first) shape of a Flax activation shape (``ndim >= 3`` moves C)."""
    s = tuple(flax_shape)
    return (s[0], s[-1], *s[1:-1]) if len(s) >= 3 else s
