"""Every layout rule between PyTorch and Flax, each written once.

PyTorch is channels-first: activations NCHW / NCW, conv kernels OIHW / OIW, linear weights
``(out, in)``. Flax is channels-last: activations NHWC / NWC, conv kernels HWIO / WIO, dense
kernels ``(in, out)``. Flattening a feature map therefore enumerates features in a different
order (torch ``c*H*W + h*W + w``, Flax ``h*W*C + w*C + c``), which is why the first dense layer
after a flatten needs its input rows permuted, not just transposed.

All functions are pure numpy and exact: they only move elements, so every round trip is
bit-exact.
"""

from __future__ import annotations

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
