"""Checkpoint files: read and write torch state dicts and Flax variables, refusing bad input.

===================  ===========================================  ===========================
suffix               content                                      read with
===================  ===========================================  ===========================
``.pt`` / ``.pth``   torch ``state_dict`` (or ``{"state_dict":``  ``torch.load(weights_only=
                     ``...}``), torch key names                   True)``: never runs code
``.safetensors``     torch key names, flat                        ``safetensors.torch``
``.msgpack``         Flax ``{'params': ..., 'batch_stats': ...}``  ``flax.serialization``
===================  ===========================================  ===========================

Every reader raises :class:`ConversionError` with one line naming the file (never torch's
advice to load with ``weights_only=False``); every writer writes atomically
(:mod:`parity.io`) and names the destination, not its temporary file, when it cannot.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from parity.convert.common import ConversionError, flatten_tree, numpy_to_torch, torch_tensor_to_numpy

TORCH_SUFFIXES = (".pt", ".pth", ".safetensors")
FLAX_SUFFIXES = (".msgpack",)
_FORMATS = "use .pt/.pth or .safetensors (torch) or .msgpack (Flax)"


def checkpoint_side(path: str) -> str:
    """``'torch'`` or ``'flax'`` from the file suffix; anything else raises."""
    suffix = Path(path).suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in FLAX_SUFFIXES:
        return "flax"
    raise ConversionError(f"{path}: unknown checkpoint format {suffix or '(no suffix)'!r}; {_FORMATS}")


def _read_bytes(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConversionError(f"{path}: cannot read: {e.strerror or e}") from None
    if not data:
        raise ConversionError(f"{path}: the file is empty")
    return data


def _torch_load(path: str, data: bytes) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns on stderr about pickle protocols: not ours to show
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"(GLOBAL [\w.]+|Unsupported operand \d+|Unsupported class [\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise ConversionError(
            f"{path}: refused: not a plain tensor state_dict{what}; a weights-only load executes no "
            "code, so objects beyond tensors and containers are not read"
        ) from None
    except Exception as e:  # corrupt zip, truncation, EOF: torch raises many types
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise ConversionError(
            f"{path}: not a readable torch checkpoint (truncated or corrupt: {first})"
        ) from None


def read_torch_state(path: str) -> dict[str, np.ndarray]:
    """A ``.pt``/``.pth`` (optionally ``{"state_dict": ...}``) or ``.safetensors`` file as
    ``{torch key: numpy array}``; sparse, meta, quantized tensors and non-string keys raise."""
    data = _read_bytes(path)
    if Path(path).suffix.lower() == ".safetensors":
        from safetensors.torch import load as st_load  # torch's reader knows bfloat16; numpy's does not

        try:
            tensors = st_load(data)
        except Exception as e:
            raise ConversionError(f"{path}: not a readable safetensors file ({str(e)[:120]})") from None
        return {k: torch_tensor_to_numpy(k, v) for k, v in tensors.items()}
    obj = _torch_load(path, data)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # a training checkpoint {"state_dict": ..., "epoch": ...}
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a state_dict (a mapping), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str):
            raise ConversionError(
                f"{path}: key {k!r} is a {type(k).__name__}, not a string: not a state_dict"
            )
        if not isinstance(v, (torch.Tensor, np.ndarray)):
            raise ConversionError(f"{path}: {k}: holds a {type(v).__name__}, not a tensor")
        out[k] = torch_tensor_to_numpy(k, v)
    return out


def read_flax_variables(path: str) -> dict:
    """A ``.msgpack`` file of Flax variables as a nested dict of numpy arrays."""
    from flax import serialization

    data = _read_bytes(path)
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:
        raise ConversionError(f"{path}: not a readable Flax msgpack file ({str(e)[:120]})") from None
    if not isinstance(tree, Mapping) or not tree:
        raise ConversionError(
            f"{path}: expected Flax variables (a mapping of collections), got {type(tree).__name__}"
        )
    for k, v in flatten_tree(tree).items():
        if not isinstance(v, np.ndarray) or v.dtype == object:
            raise ConversionError(f"{path}: {k}: holds a {type(v).__name__}, not an array")
    return dict(tree)


def read_checkpoint(path: str) -> dict:
    """Read a torch file (:func:`read_torch_state`) or a Flax ``.msgpack`` (:func:`read_flax_variables`)."""
    return read_torch_state(path) if checkpoint_side(path) == "torch" else read_flax_variables(path)


def _torch_bytes(path: str, tree: Mapping) -> bytes:
    tensors = OrderedDict(
        (k, numpy_to_torch(np.asarray(v)) if not isinstance(v, torch.Tensor) else v) for k, v in tree.items()
    )
    if Path(path).suffix.lower() == ".safetensors":
        from safetensors.torch import save

        # safetensors refuses tensors sharing memory (tied weights): each key gets its own copy
        seen: set[int] = set()
        flat = {}
        for k, v in tensors.items():
            ptr = v.untyped_storage().data_ptr() if v.numel() else -1 - len(seen)
            flat[k] = v.clone().contiguous() if ptr in seen else v.contiguous()
            seen.add(ptr)
        return save(flat)
    buf = io.BytesIO()
    torch.save(tensors, buf)
    return buf.getvalue()


def write_checkpoint(path: str, tree: Mapping) -> None:
    """Write a torch state_dict (``.pt``/``.pth``/``.safetensors``) or Flax variables
    (``.msgpack``) atomically; an unwritable destination raises naming ``path``."""
    from parity.io import atomic_write_bytes

    if checkpoint_side(path) == "torch":
        data = _torch_bytes(path, tree)
    else:
        from flax import serialization

        data = serialization.msgpack_serialize(_plain_tree(tree))
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise ConversionError(f"{path}: cannot write: {e.strerror or type(e).__name__}") from None


def _plain_tree(tree: Mapping) -> dict:
    return {k: _plain_tree(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}
