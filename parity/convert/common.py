"""Shared pieces of the converter: the error type, tree flattening and the key/shape/dtype checks.

Flat Flax paths are ``'/'``-joined with the collection first (``'params/conv1/kernel'``,
``'batch_stats/bn1/mean'``); torch keys are the ``state_dict``'s ``'.'``-joined names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from parity.errors import ParityError


class ConversionError(ParityError, ValueError):
    """A checkpoint does not fit the model: the message names the module and key and what differs."""


def torch_tensor_to_numpy(key: str, value: Any) -> np.ndarray:
    """``value`` (a dense torch tensor or array-like) as a numpy array; sparse, quantized, meta
    and otherwise data-less tensors, and non-string keys, are refused naming ``key``."""
    if not isinstance(key, str):
        raise ConversionError(f"key {key!r} is a {type(key).__name__}, not a string: not a state_dict")
    if isinstance(value, torch.Tensor):
        if value.layout != torch.strided:
            raise ConversionError(f"{key}: {value.layout} tensors are not supported; store it dense")
        if value.is_meta:
            raise ConversionError(f"{key}: a meta tensor has no data (was the model built on 'meta'?)")
        if value.is_quantized:
            raise ConversionError(f"{key}: quantized tensors are not supported; dequantize it first")
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16: ml_dtypes' (jax's) has the same bits
            import ml_dtypes

            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        try:
            return value.numpy()
        except TypeError as e:
            raise ConversionError(f"{key}: {value.dtype} tensors cannot be converted ({e})") from None
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise ConversionError(f"{key}: cannot read value of type {type(value).__name__}: {e}") from e
    if arr.dtype == object:
        raise ConversionError(f"{key}: holds a {type(value).__name__}, not an array")
    return arr


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype (``bfloat16``: ml_dtypes' bfloat16, as jax uses)."""
    if dtype == torch.bfloat16:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return torch.empty((), dtype=dtype).numpy().dtype


def numpy_to_torch(arr: np.ndarray) -> torch.Tensor:
    """A C-ordered numpy array (bfloat16 included) as a torch tensor sharing its memory when it can."""
    arr = arr if arr.flags.c_contiguous else np.array(arr, order="C")
    if arr.dtype.name == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def check_array(key: str, got: np.ndarray, expected_shape: tuple, expected_dtype: np.dtype) -> None:
    """Raise :class:`ConversionError` naming ``key`` when shape or dtype differ."""
    if tuple(got.shape) != tuple(expected_shape):
        raise ConversionError(f"{key}: expected shape {tuple(expected_shape)}, got {tuple(got.shape)}")
    if got.dtype != expected_dtype:
        raise ConversionError(f"{key}: expected dtype {expected_dtype}, got {got.dtype}")


def check_keys(where: str, got: set[str], expected: set[str]) -> None:
    """Raise :class:`ConversionError` listing missing and unexpected keys, if any."""
    missing, unexpected = sorted(expected - got, key=str), sorted(got - expected, key=str)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing key(s) {', '.join(map(str, missing))}")
        if unexpected:
            parts.append(f"unexpected key(s) {', '.join(map(str, unexpected))}")
        raise ConversionError(f"{where}: {'; '.join(parts)}")


def validated(
    where: str, given: Mapping[str, Any], expected: Mapping[str, tuple[tuple[int, ...], np.dtype | None]]
) -> dict[str, np.ndarray]:
    """``given`` as numpy arrays, after checking its keys against ``expected`` and each value's
    shape and dtype (``None``: any dtype). Every error names the key."""
    for k in given:
        if not isinstance(k, str):
            raise ConversionError(f"{where}: key {k!r} is a {type(k).__name__}, not a string")
    check_keys(where, set(given), set(expected))
    out = {}
    for k, (shape, dtype) in expected.items():
        out[k] = torch_tensor_to_numpy(k, given[k])
        check_array(k, out[k], shape, out[k].dtype if dtype is None else dtype)
    return out


def flatten_tree(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{'params': {'conv1': {'kernel': a}}}`` -> ``{'params/conv1/kernel': a}`` (keys made str)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, path + "/"))
        else:
            out[path] = v
    return out


def unflatten_tree(flat: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_tree`."""
    tree: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree
