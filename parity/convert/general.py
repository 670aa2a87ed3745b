"""The general converter: any torch model whose layers have rules, paired by name with a Flax model.

``torch_to_flax(state_dict, torch_model, flax_target)`` and ``flax_to_torch(flax_source,
torch_model)``. The torch model gives the module structure, the rules (:mod:`.rules`) and the
expected keys, shapes and dtypes; the Flax side (a Linen variables tree such as
``module.init(...)``, or an NNX module) gives the Flax paths, shapes and dtypes, and so decides
which naming convention applies (:mod:`.naming`). Flattens into Linear layers are detected by
:mod:`.flatten`.

Only the ``params`` and ``batch_stats`` collections (NNX ``Param`` / ``BatchStat``) take part.
Any torch key or Flax leaf left unpaired, a layer with no rule, or a shape/dtype mismatch raises
:class:`ConversionError` naming the module and key; :func:`pair_models` reports them all
(``parity map``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from parity.arrays import to_jax
from parity.convert.common import (
    ConversionError,
    check_array,
    check_keys,
    flatten_tree,
    numpy_dtype,
    numpy_to_torch,
    torch_tensor_to_numpy,
)
from parity.convert.flatten import FlattenInfo, detect_flattens
from parity.convert.naming import load_user_map
from parity.convert.pairing import PairedTransfer, Pairing, join, pair_models
from parity.convert.shared import updated_buffers

__all__ = ["PairedTransfer", "Pairing", "pair_models"]

COLLECTIONS = ("params", "batch_stats")

_join = join

# ------------------------------------------------------------------------------ Flax targets


def _is_nnx(obj: Any) -> bool:
    from flax import nnx

    return isinstance(obj, nnx.Module)


def flax_leaves(target: Any) -> dict[str, Any]:
    """Flat ``{'params/a/kernel': array}`` of a Linen variables tree or an NNX module
    (``Param`` -> ``params``, ``BatchStat`` -> ``batch_stats``; other collections left out)."""
    if _is_nnx(target):
        from flax import nnx

        out = {}
        for col, typ in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
            for path, var in nnx.to_flat_state(nnx.state(target, typ)):
                out[_join(col, *map(str, path))] = var.get_value()
        return out
    if isinstance(target, Mapping):
        return {k: v for k, v in flatten_tree(target).items() if k.split("/", 1)[0] in COLLECTIONS}
    raise ConversionError(
        f"the Flax side must be Linen variables (a mapping such as module.init(...)) or an nnx.Module, "
        f"got {type(target).__name__}"
    )


def _write_nnx(model: Any, flat: Mapping[str, np.ndarray]) -> None:
    from flax import nnx

    for col, typ in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, typ)
        for path, var in nnx.to_flat_state(state):
            key = _join(col, *map(str, path))
            if key in flat:
                var.set_value(to_jax(flat[key]))
        nnx.update(model, state)


def _setup(torch_model, flax_tree, user_map, flatten_shapes, input_shape, num_batches_tracked):
    """Flax leaves and the pairing; layer problems are raised before a failed flatten detection."""
    if not isinstance(torch_model, nn.Module):
        raise ConversionError(f"torch_model must be a torch.nn.Module, got {type(torch_model).__name__}")
    leaves = flax_leaves(flax_tree)
    pairing, detection_error = _pairing(
        torch_model, leaves, user_map, flatten_shapes, input_shape, num_batches_tracked
    )
    pairing.raise_if_failed()
    if detection_error:
        raise ConversionError(detection_error)
    return leaves, pairing


def _pairing(torch_model, leaves, user_map, flatten_shapes, input_shape, num_batches_tracked=0):
    """``(pairing, flatten detection error or None)``, with the map rules and ``--flatten``
    entries that matched nothing and the buffers a forward pass updates as problems."""
    detection_error = None
    try:
        flatten = detect_flattens(torch_model, input_shape, flatten_shapes)
    except ConversionError as e:
        flatten, detection_error = FlattenInfo({}, "failed"), str(e)
    umap = load_user_map(user_map)
    pairing = pair_models(torch_model, leaves, umap, flatten, num_batches_tracked)
    pairing.problems += umap.unused() if hasattr(umap, "unused") else []
    linears = {n for n, m in torch_model.named_modules() if isinstance(m, nn.Linear)}
    pairing.problems += [
        f"--flatten {k}={','.join(map(str, v))}: the torch model has no nn.Linear named {k!r}"
        for k, v in (flatten_shapes or {}).items()
        if k not in linears
    ]
    if pairing.constants and input_shape is not None:
        updated = updated_buffers(torch_model, pairing.constants, tuple(input_shape))
        if updated is None:
            pairing.notes.append("constant buffers: not verified (the dry run on --input-shape failed)")
        pairing.problems += [
            f"{k}: a buffer that a train-mode forward pass updates, not a constant; no rule converts it "
            "(add one with register_rule)"
            for k in updated or ()
        ]
    return pairing, detection_error


def _checked(pt: PairedTransfer, keys: tuple[str, ...], arrays: list, expected: Mapping[str, Any]) -> list:
    if len(arrays) != len(keys):
        raise ConversionError(
            f"{pt.module} ({pt.module_type}): the rule returned {len(arrays)} arrays for {keys}"
        )
    for key, arr in zip(keys, arrays, strict=True):
        want = expected[key]
        dtype = numpy_dtype(want.dtype) if isinstance(want, torch.Tensor) else np.dtype(want.dtype)
        try:
            check_array(key, arr, tuple(want.shape), dtype)
        except ConversionError as e:
            raise ConversionError(f"{pt.module or '(root)'} ({pt.module_type}): {e}") from None
    return arrays


def _state_dict_arrays(state_dict: Mapping[str, Any], torch_model: nn.Module, pairing: Pairing) -> dict:
    """``state_dict`` as numpy after checking keys, shapes and dtypes against the model. Tied
    aliases and constant buffers may be absent (filled from the first key / the model); a
    present alias must equal its first key."""
    model_state = torch_model.state_dict()
    optional = set(pairing.ties) | set(pairing.constants)
    for k in state_dict:
        if not isinstance(k, str):
            raise ConversionError(f"torch state_dict: key {k!r} is a {type(k).__name__}, not a string")
    check_keys("torch state_dict", set(state_dict) | (optional - set(state_dict)), set(model_state))
    out = {}
    for k, v in model_state.items():
        if k not in state_dict:
            continue
        out[k] = torch_tensor_to_numpy(k, state_dict[k])
        check_array(k, out[k], tuple(v.shape), numpy_dtype(v.dtype))
    for alias, first in pairing.ties.items():
        if alias in out and first in out and not np.array_equal(out[alias], out[first]):
            raise ConversionError(
                f"{alias}: differs from {first}, which it is tied to in the torch model (the same tensor)"
            )
        out.setdefault(alias, out[first])
    for k in pairing.constants:
        out.setdefault(k, torch_tensor_to_numpy(k, model_state[k]))
    return out


# --------------------------------------------------------------------------------- the API


def torch_to_flax(
    state_dict: Mapping[str, Any],
    torch_model: nn.Module,
    flax_target: Any,
    *,
    user_map: Any = None,
    flatten_shapes: Mapping[str, tuple[int, ...]] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Any:
    """A torch ``state_dict`` (torch layout, NCHW kernels ``(O, I, H, W)``) -> Flax.

    ``flax_target`` is Linen variables (``module.init(...)``): returns a new
    ``{'params': ..., 'batch_stats': ...}`` of numpy arrays (channels-last kernels ``(H, W, I,
    O)``); or an ``nnx.Module``: updated in place and returned. ``state_dict`` must have
    ``torch_model``'s keys, shapes and dtypes (tied aliases and constant buffers may be left
    out). ``user_map``: callable or rules file (:mod:`parity.convert.naming`);
    ``flatten_shapes`` ``{linear: (C, *spatial)}`` overrides detection; ``input_shape`` (torch
    layout) makes detection use shape propagation and checks that buffers are constants.
    """
    leaves, pairing = _setup(torch_model, flax_target, user_map, flatten_shapes, input_shape, 0)
    sd = _state_dict_arrays(state_dict, torch_model, pairing)
    out: dict[str, np.ndarray] = {}
    for pt in pairing.transfers:
        if not pt.torch_keys:  # Flax-only leaves: keep the target's own values
            out.update({k: np.asarray(leaves[k]) for k in pt.flax_keys})
            continue
        arrays = pt.transfer.to_flax([sd[k] for k in pt.torch_keys])
        out.update(zip(pt.flax_keys, _checked(pt, pt.flax_keys, arrays, leaves), strict=True))
    if _is_nnx(flax_target):
        _write_nnx(flax_target, out)
        return flax_target
    from parity.convert.common import unflatten_tree

    return unflatten_tree(out)


def flax_to_torch(
    flax_source: Any,
    torch_model: nn.Module,
    *,
    user_map: Any = None,
    flatten_shapes: Mapping[str, tuple[int, ...]] | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_batches_tracked: int = 0,
) -> OrderedDict[str, torch.Tensor]:
    """Linen variables or an NNX module -> a torch ``state_dict`` loadable (strictly) into
    ``torch_model``, in its key order. BN ``num_batches_tracked`` is set to
    ``num_batches_tracked`` (Flax keeps no counter). A tied alias gets the tensor of its first
    key (the same object, as in torch's own state_dict); a torch tensor the port holds twice is
    read from its first Flax leaf; constant buffers are the torch model's own."""
    leaves, pairing = _setup(
        torch_model, flax_source, user_map, flatten_shapes, input_shape, num_batches_tracked
    )
    template = torch_model.state_dict()
    out: dict[str, np.ndarray] = {}
    for pt in pairing.transfers:
        if pt.torch_keys and not pt.copy_of:
            arrays = pt.transfer.to_torch([np.asarray(leaves[k]) for k in pt.flax_keys])
            out.update(zip(pt.torch_keys, _checked(pt, pt.torch_keys, arrays, template), strict=True))
    for pt in pairing.transfers:
        if pt.copy_of:
            _same_copies(pt, leaves, out, pairing.ties)
    # no second copy: the rules return fresh C-ordered arrays (np.array keeps 0-d counters 0-d)
    tensors = {k: numpy_to_torch(v) for k, v in out.items()}
    tensors.update((alias, tensors[first]) for alias, first in pairing.ties.items())
    return OrderedDict((k, tensors[k]) for k in template)


def _same_copies(pt: PairedTransfer, leaves: Mapping, out: Mapping, ties: Mapping[str, str]) -> None:
    """Torch holds one tensor where the port holds copies: refuse copies that differ, so that
    converting back never drops the port's values silently."""
    arrays = pt.transfer.to_torch([np.asarray(leaves[k]) for k in pt.flax_keys])
    for key, arr in zip(pt.torch_keys, arrays, strict=True):
        first = ties.get(key, key)
        if not np.array_equal(arr, out[first]):
            raise ConversionError(
                f"{', '.join(pt.flax_keys)} differs from the Flax leaf converted to {first}: torch holds one "
                f"tensor ({key}{' is ' + first if first != key else ''}), the port holds copies that "
                "were changed apart (trained untied?); tie them in the port or convert one of them"
            )


def params_to_torch_fn(
    torch_model: nn.Module,
    flax_source: Any,
    *,
    user_map: Any = None,
    flatten_shapes: Mapping[str, tuple[int, ...]] | None = None,
    input_shape: tuple[int, ...] | None = None,
    copies: bool = False,
) -> Callable[[Mapping], dict[str, Any]]:
    """A function from a Flax ``params``-shaped tree (parameters, gradients or optimizer moments;
    a nested dict of arrays in Flax layout, NNX list indices as int or str keys) to ``{torch
    parameter name: array}`` in torch layout, for any model the general converter pairs.

    ``copies=True``: ``{torch parameter name: {Flax leaf: array}}`` instead, with every Flax leaf
    that holds a copy of the parameter (a tied alias the port keeps apart, a module the port has
    twice), its own leaf first: what :func:`parity.convert.shared.tied_gradient_cause` takes.

    The pairing is computed once, here (it raises :class:`ConversionError` like
    :func:`flax_to_torch`); each call only applies the rules, keeping the arrays' dtype (float64
    trees stay float64)."""
    _, pairing = _setup(torch_model, flax_source, user_map, flatten_shapes, input_shape, 0)
    params = {n for n, _ in torch_model.named_parameters()}
    transfers = [
        pt for pt in pairing.transfers if pt.torch_keys and all(f.startswith("params/") for f in pt.flax_keys)
    ]
    if not copies:
        transfers = [pt for pt in transfers if not pt.copy_of]

    def to_torch(tree: Mapping) -> dict[str, Any]:
        flat = flatten_tree({"params": tree})
        out: dict[str, Any] = {}
        for pt in transfers:
            arrays = pt.transfer.to_torch([np.asarray(flat[k]) for k in pt.flax_keys])
            for k, a in zip(pt.torch_keys, arrays, strict=True):
                name = pairing.ties.get(k, k)
                if name not in params:
                    continue
                if copies:
                    out.setdefault(name, {})[",".join(pt.flax_keys)] = a
                else:
                    out[name] = a
        return out

    return to_torch


def map_models(
    torch_model: nn.Module,
    flax_tree: Any,
    *,
    user_map: Any = None,
    flatten_shapes: Mapping[str, tuple[int, ...]] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[Pairing, list[dict]]:
    """The pairing of ``torch_model`` with ``flax_tree`` and its table rows (``torch``,
    ``torch_shape``, ``flax``, ``flax_shape``, ``rule``), converting the torch model's own
    weights to check every shape and dtype; problems are collected in the pairing, not raised.
    Tied aliases the port does not hold get a row of their own (``flax`` empty); the pairing's
    ``notes`` say what was tied, copied, left out or paired by Linen auto-name."""
    leaves = flax_leaves(flax_tree)
    pairing, problem = _pairing(torch_model, leaves, user_map, flatten_shapes, input_shape)
    pairing.problems += [problem] if problem else []
    state = {k: torch_tensor_to_numpy(k, v) for k, v in torch_model.state_dict().items()}
    rows = []
    for pt in pairing.transfers:
        arrays = pt.transfer.to_flax([state[k] for k in pt.torch_keys]) if pt.torch_keys else []
        try:
            if pt.torch_keys:
                _checked(pt, pt.flax_keys, arrays, leaves)
        except ConversionError as e:
            pairing.problems.append(str(e))
        how = pt.transfer.how + (f" (a second Flax copy of {pt.copy_of})" if pt.copy_of else "")
        for i in range(max(len(pt.torch_keys), len(pt.flax_keys))):
            t = pt.torch_keys[i] if i < len(pt.torch_keys) else ""
            f = pt.flax_keys[i] if i < len(pt.flax_keys) else ""
            rows.append(_row(t, state, f, leaves, how))
    held = {k for pt in pairing.transfers for k in pt.torch_keys}
    for alias, first in pairing.ties.items():
        if alias not in held:
            rows.append(_row(alias, state, "", leaves, f"tied to {first}: converted once"))
    return pairing, rows


def _row(t: str, state: Mapping, f: str, leaves: Mapping, how: str) -> dict:
    return {
        "torch": t,
        "torch_shape": tuple(state[t].shape) if t else None,
        "flax": f,
        "flax_shape": tuple(leaves[f].shape) if f else None,
        "rule": how,
    }
