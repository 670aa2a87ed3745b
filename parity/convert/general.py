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

import bisect
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from parity.convert.common import ConversionError, check_array, flatten_tree, torch_tensor_to_numpy
from parity.convert.common import validated as validated_arrays
from parity.convert.flatten import FlattenInfo, detect_flattens
from parity.convert.naming import UserMap, find_flax_path, flax_spellings, load_user_map, module_paths
from parity.convert.rules import RuleContext, Transfer, rule_for

COLLECTIONS = ("params", "batch_stats")


@dataclass(frozen=True)
class PairedTransfer:
    """One transfer of one torch module, with its full torch keys and Flax paths."""

    module: str
    module_type: str
    transfer: Transfer
    torch_keys: tuple[str, ...]
    flax_keys: tuple[str, ...]


@dataclass
class Pairing:
    """The whole pairing of a torch model with a Flax tree, and everything that did not pair."""

    transfers: list[PairedTransfer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line each, module and key named
    unmatched_torch: list[str] = field(default_factory=list)
    unmatched_flax: list[str] = field(default_factory=list)
    flatten: FlattenInfo = field(default_factory=FlattenInfo)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> None:
        """Raise :class:`ConversionError` with the first problem (and how many more there are)."""
        if self.problems:
            more = len(self.problems) - 1
            tail = f" (and {more} more problem(s); `parity map` lists them)" if more else ""
            raise ConversionError(self.problems[0] + tail)


def _join(*parts: str, sep: str = "/") -> str:
    return sep.join(p for p in parts if p)


def _layers(module: nn.Module, name: str = ""):
    """``(name, module, rule)`` for each module, not descending below a module that has a rule."""
    rule = rule_for(module)
    yield name, module, rule
    if rule is None:
        for child_name, child in module.named_children():
            yield from _layers(child, _join(name, child_name, sep="."))


def _local_keys(module: nn.Module, state_keys: list[str], name: str, recurse: bool) -> list[str]:
    """Keys of ``state_keys`` (sorted) under module ``name``, local to it; direct ones only
    unless ``recurse``. Keys sharing a prefix are contiguous when sorted: found by bisection."""
    prefix = f"{name}." if name else ""
    start = bisect.bisect_left(state_keys, prefix)
    end = bisect.bisect_left(state_keys, prefix + "\U0010ffff") if prefix else len(state_keys)
    own = [k[len(prefix) :] for k in state_keys[start:end]]
    return own if recurse else [k for k in own if "." not in k]


def _module_transfers(name: str, module: nn.Module, rule, local: list[str], ctx: RuleContext):
    """The transfers of one module and the problems found before pairing names."""
    kind = type(module).__name__
    if rule is not None:
        transfers = rule(module, ctx)
        named = {t for tr in transfers for t in tr.torch}
        stray = [k for k in local if k not in named]
        probs = [
            f"{_join(name, k, sep='.')} ({name or '(root)'} {kind}): the {kind} rule does not convert it"
            for k in stray
        ]
        return transfers, probs
    params = {n for n, _ in module.named_parameters(recurse=False)}
    if not any(True for _ in module.children()) and local:
        held = ", ".join(_join(name, k, sep=".") for k in local)
        return [], [f"{name or '(root)'} ({kind}): no layer rule (holds {held}); add one with register_rule"]
    transfers = [Transfer((k,), (f"params/{k}",), "copy (parameter)") for k in local if k in params]
    probs = [
        f"{_join(name, k, sep='.')} ({name or '(root)'} {kind}): unknown buffer, no rule converts it"
        for k in local
        if k not in params
    ]
    return transfers, probs


def pair_models(
    torch_model: nn.Module,
    flax_meta: Mapping[str, Any],
    user_map: UserMap | None = None,
    flatten: FlattenInfo | None = None,
    num_batches_tracked: int = 0,
) -> Pairing:
    """Pair every torch state key of ``torch_model`` with Flax leaves of ``flax_meta`` (flat
    ``'params/a/kernel' -> anything with .shape``). Problems are collected, not raised."""
    flatten = flatten if flatten is not None else detect_flattens(torch_model)
    state_keys = sorted(torch_model.state_dict().keys())
    flax_modules = module_paths(flax_meta)
    out = Pairing(flatten=flatten)
    claimed_torch: set[str] = set()
    claimed_flax: set[str] = set()
    for name, module, rule in _layers(torch_model):
        ctx = RuleContext(name, flatten.shapes.get(name), num_batches_tracked)
        local = _local_keys(module, state_keys, name, recurse=rule is not None)
        try:
            transfers, probs = _module_transfers(name, module, rule, local, ctx)
        except ConversionError as e:
            transfers, probs = [], [str(e)]
        out.problems += probs
        if not transfers:
            continue
        try:
            prefix = find_flax_path(name, flax_modules, user_map)
        except ConversionError as e:
            out.problems.append(str(e))
            continue
        _pair_module(
            out, name, type(module).__name__, transfers, prefix, flax_meta, claimed_torch, claimed_flax
        )
    out.unmatched_torch = sorted(set(state_keys) - claimed_torch)
    out.unmatched_flax = sorted(set(flax_meta) - claimed_flax)
    out.problems += [f"{k}: no torch tensor maps to this Flax leaf" for k in out.unmatched_flax]
    return out


def _pair_module(out, name, kind, transfers, prefix, flax_meta, claimed_torch, claimed_flax) -> None:
    where = f"({name or '(root)'} {kind})"
    for tr in transfers:
        tkeys = tuple(_join(name, t, sep=".") for t in tr.torch)
        if prefix is None:
            tried = " | ".join(flax_spellings(name)) or "(root)"
            out.problems += [f"{k} {where}: no Flax module at {tried}; add a --map rule" for k in tkeys]
            continue
        fkeys = tuple(_join(f.split("/", 1)[0], prefix, f.split("/", 1)[1]) for f in tr.flax)
        missing = [f for f in fkeys if f not in flax_meta]
        if missing and not tr.torch:
            continue  # Flax-only leaves the Flax model does not have: nothing to keep
        if missing:
            out.problems += [f"{k} {where}: the Flax model has no {missing[0]}" for k in tkeys]
            continue
        claimed_torch.update(tkeys)
        claimed_flax.update(fkeys)
        out.transfers.append(PairedTransfer(name, kind, tr, tkeys, fkeys))


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
    import jax.numpy as jnp
    from flax import nnx

    for col, typ in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, typ)
        for path, var in nnx.to_flat_state(state):
            key = _join(col, *map(str, path))
            if key in flat:
                var.set_value(jnp.asarray(flat[key]))
        nnx.update(model, state)


def _setup(torch_model, flax_tree, user_map, flatten_shapes, input_shape, num_batches_tracked):
    """Flax leaves and the pairing; layer problems are raised before a failed flatten detection."""
    if not isinstance(torch_model, nn.Module):
        raise ConversionError(f"torch_model must be a torch.nn.Module, got {type(torch_model).__name__}")
    leaves = flax_leaves(flax_tree)
    detection_error = None
    try:
        flatten = detect_flattens(torch_model, input_shape, flatten_shapes)
    except ConversionError as e:
        flatten, detection_error = FlattenInfo({}, "failed"), str(e)
    pairing = pair_models(torch_model, leaves, load_user_map(user_map), flatten, num_batches_tracked)
    pairing.raise_if_failed()
    if detection_error:
        raise ConversionError(detection_error)
    return leaves, pairing


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


def _checked(pt: PairedTransfer, keys: tuple[str, ...], arrays: list, expected: Mapping[str, Any]) -> list:
    if len(arrays) != len(keys):
        raise ConversionError(
            f"{pt.module} ({pt.module_type}): the rule returned {len(arrays)} arrays for {keys}"
        )
    for key, arr in zip(keys, arrays, strict=True):
        want = expected[key]
        dtype = _numpy_dtype(want.dtype) if isinstance(want, torch.Tensor) else np.dtype(want.dtype)
        try:
            check_array(key, arr, tuple(want.shape), dtype)
        except ConversionError as e:
            raise ConversionError(f"{pt.module or '(root)'} ({pt.module_type}): {e}") from None
    return arrays


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
    O)``); or an ``nnx.Module``: updated in place and returned. ``state_dict`` must have exactly
    ``torch_model``'s keys, shapes and dtypes. ``user_map``: callable or rules file
    (:mod:`parity.convert.naming`); ``flatten_shapes`` ``{linear: (C, *spatial)}`` overrides
    detection; ``input_shape`` (torch layout) makes detection use shape propagation.
    """
    leaves, pairing = _setup(torch_model, flax_target, user_map, flatten_shapes, input_shape, 0)
    expected = {k: (tuple(v.shape), _numpy_dtype(v.dtype)) for k, v in torch_model.state_dict().items()}
    sd = validated_arrays("torch state_dict", state_dict, expected)
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
    ``num_batches_tracked`` (Flax keeps no counter)."""
    leaves, pairing = _setup(
        torch_model, flax_source, user_map, flatten_shapes, input_shape, num_batches_tracked
    )
    template = torch_model.state_dict()
    out: dict[str, np.ndarray] = {}
    for pt in pairing.transfers:
        if not pt.torch_keys:
            continue
        arrays = pt.transfer.to_torch([np.asarray(leaves[k]) for k in pt.flax_keys])
        out.update(zip(pt.torch_keys, _checked(pt, pt.torch_keys, arrays, template), strict=True))
    # no second copy: the rules return fresh C-ordered arrays (np.array keeps 0-d counters 0-d)
    return OrderedDict(
        (k, torch.from_numpy(out[k] if out[k].flags.c_contiguous else np.array(out[k], order="C")))
        for k in template
    )


def params_to_torch_fn(
    torch_model: nn.Module,
    flax_source: Any,
    *,
    user_map: Any = None,
    flatten_shapes: Mapping[str, tuple[int, ...]] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Callable[[Mapping], dict[str, np.ndarray]]:
    """A function from a Flax ``params``-shaped tree (parameters, gradients or optimizer moments;
    a nested dict of arrays in Flax layout, NNX list indices as int or str keys) to ``{torch
    parameter name: array}`` in torch layout, for any model the general converter pairs.

    The pairing is computed once, here (it raises :class:`ConversionError` like
    :func:`flax_to_torch`); each call only applies the rules, keeping the arrays' dtype (float64
    trees stay float64)."""
    from parity.convert.common import flatten_tree

    _, pairing = _setup(torch_model, flax_source, user_map, flatten_shapes, input_shape, 0)
    params = {n for n, _ in torch_model.named_parameters()}
    transfers = [
        pt for pt in pairing.transfers if pt.torch_keys and all(f.startswith("params/") for f in pt.flax_keys)
    ]

    def to_torch(tree: Mapping) -> dict[str, np.ndarray]:
        flat = flatten_tree({"params": tree})
        out: dict[str, np.ndarray] = {}
        for pt in transfers:
            arrays = pt.transfer.to_torch([np.asarray(flat[k]) for k in pt.flax_keys])
            out.update((k, a) for k, a in zip(pt.torch_keys, arrays, strict=True) if k in params)
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
    weights to check every shape and dtype; problems are collected in the pairing, not raised."""
    leaves = flax_leaves(flax_tree)
    try:
        flatten = detect_flattens(torch_model, input_shape, flatten_shapes)
        problem = None
    except ConversionError as e:
        flatten, problem = FlattenInfo({}, "failed"), str(e)
    pairing = pair_models(torch_model, leaves, load_user_map(user_map), flatten)
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
        for i in range(max(len(pt.torch_keys), len(pt.flax_keys))):
            t = pt.torch_keys[i] if i < len(pt.torch_keys) else ""
            f = pt.flax_keys[i] if i < len(pt.flax_keys) else ""
            rows.append(
                {
                    "torch": t,
                    "torch_shape": tuple(state[t].shape) if t else None,
                    "flax": f,
                    "flax_shape": tuple(leaves[f].shape) if f else None,
                    "rule": pt.transfer.how,
                }
            )
    return pairing, rows
