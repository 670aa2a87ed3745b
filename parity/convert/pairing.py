"""Pairing a torch model's state keys with a Flax model's leaves (what ``parity map`` shows).

Each torch module with a layer rule (:mod:`.rules`) is paired by name (:mod:`.naming`), by a
user map, or by Linen auto-name order (:mod:`.autonames`). Beyond layers:

* **tied tensors** (``lm_head.weight is wte.weight``): converted once; the alias key is dropped
  when the port has no leaf for it, copied when it has one (the port then has them untied);
* **constant buffers** of modules without a rule (a causal mask): left out, restored from the
  torch model on the way back;
* **bare parameters** (``cls_token``, a layer-scale ``gamma``, CLIP's ``proj``) and the
  weights of rule-less layers such as an ``RMSNorm`` class: paired with a Flax ``self.param``,
  a Dense ``kernel`` (transposed when the shapes say so) or, for 1-D ``weight``/``gamma``, a
  ``scale`` leaf;
* **reshaped kernels**: a Flax leaf whose shape splits the converted shape into more axes
  (``DenseGeneral`` ``(d, h, k)`` for a torch ``Linear(d, h*k)``) gets a reshape.

Problems are collected, one line each, never raised here.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from torch import nn

from parity.convert.common import ConversionError
from parity.convert.flatten import FlattenInfo
from parity.convert.naming import UserMap, flax_spellings, module_paths, resolve_path
from parity.convert.rules import RuleContext, Transfer, rule_for
from parity.convert.shared import tied_keys

# a rule-less layer's 1-D weight may be the Flax ``scale`` (RMSNorm, a custom LayerNorm)
_ROLE_SYNONYMS = {"weight": ("scale",), "gamma": ("scale",), "g": ("scale",), "beta": ("bias",)}
BARE = "copy (parameter)"


@dataclass(frozen=True)
class PairedTransfer:
    """One transfer of one torch module, with its full torch keys and Flax paths.

    ``copy_of``: the torch tensor was already converted by another transfer (a tied alias or a
    module the port has twice); converting back ignores this one."""

    module: str
    module_type: str
    transfer: Transfer
    torch_keys: tuple[str, ...]
    flax_keys: tuple[str, ...]
    copy_of: str | None = None


@dataclass
class Pairing:
    """The whole pairing of a torch model with a Flax tree, and everything that did not pair.

    ``ties``: alias torch key -> the key of the same tensor converted first; ``constants``:
    buffer keys left out of the conversion; ``notes``: one line each, not problems."""

    transfers: list[PairedTransfer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unmatched_torch: list[str] = field(default_factory=list)
    unmatched_flax: list[str] = field(default_factory=list)
    flatten: FlattenInfo = field(default_factory=FlattenInfo)
    notes: list[str] = field(default_factory=list)
    ties: dict[str, str] = field(default_factory=dict)
    constants: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_if_failed(self) -> None:
        """Raise :class:`ConversionError` with the first problem (and how many more there are)."""
        if self.problems:
            more = len(self.problems) - 1
            tail = f" (and {more} more problem(s); `parity map` lists them)" if more else ""
            raise ConversionError(self.problems[0] + tail)


def join(*parts: str, sep: str = "/") -> str:
    return sep.join(p for p in parts if p)


def _layers(module: nn.Module, name: str = ""):
    """``(name, module, rule)`` for each module, not descending below a module that has a rule."""
    rule = rule_for(module)
    yield name, module, rule
    if rule is None:
        for child_name, child in module.named_children():
            yield from _layers(child, join(name, child_name, sep="."))


def _local_keys(state_keys: list[str], name: str, recurse: bool) -> list[str]:
    """Keys of ``state_keys`` (sorted) under module ``name``, local to it; direct ones only
    unless ``recurse``. Keys sharing a prefix are contiguous when sorted: found by bisection."""
    prefix = f"{name}." if name else ""
    start = bisect.bisect_left(state_keys, prefix)
    end = bisect.bisect_left(state_keys, prefix + "\U0010ffff") if prefix else len(state_keys)
    own = [k[len(prefix) :] for k in state_keys[start:end]]
    return own if recurse else [k for k in own if "." not in k]


def _constant(local: str, value: np.ndarray) -> Transfer:
    """A buffer no rule converts: dropped on the way to Flax, the torch model's value restored."""
    how = "constant buffer: not converted (restored from the torch model)"
    return Transfer((local,), (), how, lambda xs: [], lambda xs: [np.array(value)])


def _module_transfers(name: str, module: nn.Module, rule, local: list[str], ctx: RuleContext, state):
    """The transfers of one module and the problems found before pairing names."""
    kind = type(module).__name__
    if rule is not None:
        transfers = rule(module, ctx)
        named = {t for tr in transfers for t in tr.torch}
        stray = [k for k in local if k not in named]
        probs = [
            f"{join(name, k, sep='.')} ({name or '(root)'} {kind}): the {kind} rule does not convert it"
            for k in stray
        ]
        return transfers, probs
    params = {n for n, _ in module.named_parameters(recurse=False)}
    transfers = [Transfer((k,), (f"params/{k}",), BARE) for k in local if k in params]
    transfers += [_constant(k, state[join(name, k, sep=".")]) for k in local if k not in params]
    return transfers, []


@dataclass
class _Claims:
    torch: set[str] = field(default_factory=set)
    flax: set[str] = field(default_factory=set)


def pair_models(
    torch_model: nn.Module,
    flax_meta: Mapping[str, Any],
    user_map: UserMap | None = None,
    flatten: FlattenInfo | None = None,
    num_batches_tracked: int = 0,
    state: Mapping[str, np.ndarray] | None = None,
) -> Pairing:
    """Pair every torch state key of ``torch_model`` with Flax leaves of ``flax_meta`` (flat
    ``'params/a/kernel' -> anything with .shape``). Problems are collected, not raised.
    ``state``: the torch model's state as numpy (computed when not given)."""
    from parity.convert.autonames import auto_name_paths
    from parity.convert.common import torch_tensor_to_numpy
    from parity.convert.flatten import detect_flattens

    flatten = flatten if flatten is not None else detect_flattens(torch_model)
    if state is None:
        state = {k: torch_tensor_to_numpy(k, v) for k, v in torch_model.state_dict().items()}
    state_keys = sorted(state)
    flax_modules = module_paths(flax_meta)
    out = Pairing(flatten=flatten, ties=tied_keys(torch_model))
    auto = auto_name_paths(torch_model, flax_modules, user_map)
    claims = _Claims()
    for name, module, rule in _layers(torch_model):
        ctx = RuleContext(name, flatten.shapes.get(name), num_batches_tracked)
        local = _local_keys(state_keys, name, recurse=rule is not None)
        try:
            transfers, probs = _module_transfers(name, module, rule, local, ctx, state)
        except ConversionError as e:
            transfers, probs = [], [str(e)]
        out.problems += probs
        if not transfers:
            continue
        try:
            prefixes = resolve_path(name, flax_modules, user_map) or auto.get(name)
        except ConversionError as e:
            out.problems.append(str(e))
            continue
        site = _Site(name, type(module).__name__, prefixes, bool(local) and rule is None and _is_leaf(module))
        _pair_module(out, site, transfers, flax_meta, state, claims, user_map)
    _finish(out, state_keys, flax_meta, claims, auto)
    return out


def _is_leaf(module: nn.Module) -> bool:
    return not any(True for _ in module.children())


def _finish(out: Pairing, state_keys, flax_meta, claims: _Claims, auto: dict) -> None:
    for alias, canonical in out.ties.items():
        claimed = any(alias in pt.torch_keys for pt in out.transfers)
        how = "the port has its own leaf for it: copied there too" if claimed else "converted once"
        out.notes.append(f"{alias}: tied to {canonical} (the same tensor in torch); {how}")
        claims.torch.add(alias)
    out.constants = sorted(
        k for pt in out.transfers if pt.transfer.how.startswith("constant") for k in pt.torch_keys
    )
    if out.constants:
        out.notes.append(f"constant buffers, not converted: {', '.join(out.constants)}")
    out.notes += [f"{t} -> {f[0]} (Linen auto-name, paired by order)" for t, f in auto.items()]
    out.unmatched_torch = sorted(set(state_keys) - claims.torch)
    out.unmatched_flax = sorted(set(flax_meta) - claims.flax)
    out.problems += [f"{k}: no torch tensor maps to this Flax leaf" for k in out.unmatched_flax]


@dataclass(frozen=True)
class _Site:
    """A torch module being paired: its name, type, Flax module paths (``None``: none found;
    several: the port has it more than once) and whether it is a rule-less leaf layer."""

    name: str
    kind: str
    prefixes: tuple[str, ...] | None
    ruleless_leaf: bool

    @property
    def where(self) -> str:
        return f"({self.name or '(root)'} {self.kind})"


def _pair_module(out: Pairing, site: _Site, transfers, flax_meta, state, claims: _Claims, user_map) -> None:
    bare_failed: list[str] = []
    for tr in transfers:
        tkeys = tuple(join(site.name, t, sep=".") for t in tr.torch)
        if not tr.flax:  # torch-only tensors (constants, counters): nothing to find in Flax
            claims.torch.update(tkeys)
            out.transfers.append(PairedTransfer(site.name, site.kind, tr, tkeys, ()))
            continue
        tied = out.ties.get(tkeys[0]) if tkeys and all(k in out.ties for k in tkeys) else None
        placed, probs = [], []
        for n, prefix in enumerate(site.prefixes or [None]):
            copy_of = tied or (tkeys[0] if n and tkeys else None)
            pt, why = _place(site, tr, tkeys, prefix, flax_meta, state, user_map, copy_of)
            placed += [pt] if pt else []
            probs += why
        out.transfers += placed
        if placed or tied:
            claims.torch.update(tkeys)
            claims.flax.update(f for pt in placed for f in pt.flax_keys)
        if probs and not tied:
            if tr.how == BARE and site.ruleless_leaf and not placed:
                bare_failed += tkeys
            else:
                out.problems += probs
        if len(placed) > 1:
            where = ", ".join(site.prefixes or ())
            out.notes.append(f"{', '.join(tkeys)} feeds {len(placed)} Flax modules ({where}): copied to each")
    if bare_failed:
        held = ", ".join(bare_failed)
        out.problems.append(
            f"{site.name or '(root)'} ({site.kind}): no layer rule (holds {held}); add one with register_rule"
        )


def _place(site: _Site, tr: Transfer, tkeys, prefix, flax_meta, state, user_map, copy_of):
    """Pair one transfer under one Flax prefix: ``(PairedTransfer or None, problems)``."""
    if tr.how == BARE:
        tr, fkeys = _bare(tr, tkeys[0], prefix, flax_meta, state, user_map)
    elif prefix is not None:
        fkeys = tuple(join(f.split("/", 1)[0], prefix, f.split("/", 1)[1]) for f in tr.flax)
    else:
        fkeys = None
    if fkeys is not None and all(f in flax_meta for f in fkeys):
        tr = _reshaped(tr, tkeys, fkeys, flax_meta, state)
        return PairedTransfer(site.name, site.kind, tr, tkeys, fkeys, copy_of), []
    if copy_of or (fkeys is not None and not tr.torch):
        return None, []  # a tied alias the port does not have, or Flax-only leaves it lacks
    if fkeys is None:
        tried = " | ".join(flax_spellings(site.name)) or "(root)"
        return None, [f"{k} {site.where}: no Flax module at {tried}; add a --map rule" for k in tkeys]
    missing = next(f for f in fkeys if f not in flax_meta)
    return None, [f"{k} {site.where}: the Flax model has no {missing}" for k in tkeys]


def _bare(tr: Transfer, key: str, prefix: str | None, flax_meta, state, user_map):
    """A bare parameter's Flax leaf (``self.param``, a Dense ``kernel``, a ``scale``) and its
    transfer (copy, or transpose when the Flax shape is the reversed 2-D torch shape)."""
    local = tr.torch[0]
    mapped = resolve_path(key, module_paths(flax_meta) | _leaf_paths(flax_meta), user_map, leaf=True)
    if mapped:
        candidates = [f"params/{mapped[0]}", f"params/{mapped[0]}/kernel"]
    elif prefix is not None:
        names = (local, f"{local}/kernel", *_ROLE_SYNONYMS.get(local, ()))
        candidates = [f"params/{join(prefix, n)}" for n in names]
    else:
        return tr, None
    found = [c for c in candidates if c in flax_meta]
    if not found:
        return tr, (candidates[0],)
    fkey, shape = found[0], tuple(state[key].shape)
    fshape = tuple(flax_meta[fkey].shape)
    if len(shape) == 2 and fshape == shape[::-1] and shape[0] != shape[1]:
        t = lambda xs: [np.ascontiguousarray(xs[0].T)]  # noqa: E731
        return Transfer(tr.torch, (fkey,), "transpose (parameter)", t, t), (fkey,)
    return Transfer(tr.torch, (fkey,), BARE), (fkey,)


def _leaf_paths(flax_meta) -> set[str]:
    return {k.split("/", 1)[1] for k in flax_meta if k.startswith("params/")}


def _splits(natural: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether ``target`` is ``natural`` with some axes split into several (C order kept)."""
    if natural == target or math.prod(natural) != math.prod(target) or len(target) <= len(natural):
        return False
    i = 0
    for d in natural:
        acc = 1
        while acc < d and i < len(target):
            acc *= target[i]
            i += 1
        if acc != d:
            return False
    return i == len(target)


def _reshaped(tr: Transfer, tkeys, fkeys, flax_meta, state) -> Transfer:
    """``tr`` with a reshape to the Flax shapes where they split the converted shapes (a
    head-split ``DenseGeneral`` kernel ``(d, h, k)`` of a ``Linear(d, h*k)``), else ``tr``."""
    fshapes = [tuple(flax_meta[f].shape) for f in fkeys]
    if not tkeys or max(map(len, fshapes), default=0) <= max((len(state[k].shape) for k in tkeys), default=0):
        return tr  # no Flax leaf has more axes than the torch tensors: nothing split
    natural = [tuple(a.shape) for a in tr.to_flax([np.zeros(state[k].shape, state[k].dtype) for k in tkeys])]
    if len(natural) != len(fshapes) or not any(_splits(n, f) for n, f in zip(natural, fshapes, strict=True)):
        return tr
    to_f = lambda xs: [
        a.reshape(f) if _splits(a.shape, f) else a for a, f in zip(tr.to_flax(xs), fshapes, strict=True)
    ]  # noqa: E731
    to_t = lambda ys: tr.to_torch(
        [y.reshape(n) if _splits(n, tuple(y.shape)) else y for y, n in zip(ys, natural, strict=True)]
    )  # noqa: E731
    splits = [f for n, f in zip(natural, fshapes, strict=True) if _splits(n, f)]
    return replace(tr, how=f"{tr.how} + reshape to {splits[0]}", to_flax=to_f, to_torch=to_t)
