"""Runtime guards for Flax: Linen's forgotten ``batch_stats``, and NNX's mutable mode.

**Linen.** A training step must apply with ``mutable=['batch_stats']`` *and store* the returned
statistics in the new state (``flax_impl.linen_train.train_step`` does). A step that applies with
``mutable`` but drops the update is silent: the running mean / variance stay at their initial
0 / 1, training looks normal (it normalises with batch statistics), and evaluation, which reads
the running statistics, collapses (MODE_BUGS.md row 6). Two host-side checks catch it:

* :func:`check_batch_stats_updated` ``(before, after)`` — after one or more training steps,
  every BatchNorm layer's statistics must differ from ``before``. Holding ``before`` costs
  nothing: jax arrays are immutable, so it is a reference, not a copy. The comparison runs on
  the device and fetches one boolean per statistic. It also flags a training step that ran
  with ``train=False`` (the seed's schedule, ``flax_impl.linen_train.fit_bug_emulated``).
* :func:`assert_stats_tracked` ``(state)`` — after training, no BatchNorm layer may still hold
  exactly its initial statistics (mean all 0 and variance all 1).

Call either once per epoch (or every N steps), not inside a jitted function: each returns
control to Python and raises :class:`BatchStatsError` naming the layers.

**NNX** brings PyTorch's mutable mode back (``model.train()`` / ``model.eval()``), so it gets
PyTorch's guard: :func:`assert_training` raises :class:`ModeError` naming every BatchNorm /
Dropout module found in eval mode, except the ones declared frozen.

Arguments named ``state`` accept a Linen ``TrainState`` (its ``batch_stats``), a variables
dict with a ``'batch_stats'`` key, a ``batch_stats`` tree itself, or an NNX module (its
``nnx.BatchStat`` variables). Layer names are ``/``-joined paths (``bn1``, ``block/bn``).
Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util


class BatchStatsError(RuntimeError):
    """BatchNorm running statistics that should have moved did not; ``layers`` names them."""

    def __init__(self, message: str, layers: list[str]) -> None:
        super().__init__(message)
        self.layers = layers


class ModeError(RuntimeError):
    """An NNX training step found modules in the wrong mode (mirror of
    ``torch_impl.guard.ModeError``): ``in_eval`` and ``frozen_in_train`` name them."""

    def __init__(self, message: str, in_eval: list[str], frozen_in_train: list[str]) -> None:
        super().__init__(message)
        self.in_eval = in_eval
        self.frozen_in_train = frozen_in_train


# ------------------------------------------------------------------------------ batch_stats


def batch_stats_of(state: Any) -> dict[str, Any]:
    """The BatchNorm statistics of ``state`` as a flat ``{'bn1/mean': array, ...}`` dict.

    ``state``: a Linen ``TrainState`` (or anything with a ``batch_stats`` attribute), a
    variables dict with ``'batch_stats'``, a ``batch_stats`` tree, or an NNX module.
    """
    if isinstance(state, nnx.Module):
        tree = nnx.to_pure_dict(nnx.state(state, nnx.BatchStat))
    elif hasattr(state, "batch_stats"):
        tree = state.batch_stats
    elif isinstance(state, Mapping) and "batch_stats" in state:
        tree = state["batch_stats"]
    elif isinstance(state, Mapping):
        tree = state
    else:
        raise TypeError(
            f"expected a TrainState, a variables dict, a batch_stats tree or an NNX "
            f"module, got {type(state).__name__}"
        )
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    if not flat:
        raise ValueError(
            "no BatchNorm statistics found (the model has no BatchNorm, or the state's batch_stats is empty)"
        )
    return flat


def _layer(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


def _frozen_layers(layers: Iterable[str], frozen: Iterable[str]) -> set[str]:
    layers = list(layers)
    out = set()
    for f in frozen:
        f = f.strip("/")
        hit = {layer for layer in layers if layer == f or layer.startswith(f + "/")}
        if not hit:
            raise ValueError(
                f"frozen name {f!r} matches no BatchNorm layer; known: {', '.join(sorted(set(layers)))}"
            )
        out |= hit
    return out


def check_batch_stats_updated(before: Any, after: Any, *, frozen: Iterable[str] = ()) -> None:
    """Raise :class:`BatchStatsError` if a training step left a BatchNorm layer's statistics
    bit-identical, i.e. the update was never stored (or the step ran with ``train=False``).

    ``before`` / ``after``: states taken before and after at least one training step (see the
    module docstring for accepted types). Layers in ``frozen`` (names or name prefixes) may be
    unchanged. Use once per epoch::

        before = state
        state, _ = run_epoch(state, ...)
        check_batch_stats_updated(before, state)
    """
    a, b = batch_stats_of(before), batch_stats_of(after)
    if set(a) != set(b):
        raise ValueError(f"before/after have different BatchNorm statistics: {sorted(set(a) ^ set(b))}")
    same = jax.device_get({k: jnp.array_equal(a[k], b[k]) for k in a})
    layers = sorted({_layer(k) for k in a})
    skip = _frozen_layers(layers, frozen)
    stale = [
        layer
        for layer in layers
        if layer not in skip and all(bool(v) for k, v in same.items() if _layer(k) == layer)
    ]
    if stale:
        raise BatchStatsError(
            f"BatchNorm statistics unchanged by training in {len(stale)} of {len(layers)} layer(s): "
            f"{', '.join(stale)}. The step applied with mutable=['batch_stats'] but did not store "
            "the returned statistics (keep them: state.replace(batch_stats=updates['batch_stats']) "
            "or apply_gradients(..., batch_stats=...)), or it ran with train=False. Evaluation "
            "reads these running statistics. If a layer is frozen on purpose, pass frozen=[...].",
            stale,
        )


def assert_stats_tracked(state: Any, *, frozen: Iterable[str] = ()) -> None:
    """Raise :class:`BatchStatsError` if a BatchNorm layer still holds exactly its initial
    statistics (every mean 0 and every variance 1) — the signature of statistics that were
    never stored. Meant for after training (a fresh model fails it by design)."""
    flat = batch_stats_of(state)
    stats = jax.device_get({k: (jnp.all(v == 0), jnp.all(v == 1)) for k, v in flat.items()})
    layers = sorted({_layer(k) for k in flat})
    skip = _frozen_layers(layers, frozen)
    at_init = []
    for layer in layers:
        if layer in skip:
            continue
        mean = [z for k, (z, _) in stats.items() if _layer(k) == layer and k.endswith("mean")]
        var = [o for k, (_, o) in stats.items() if _layer(k) == layer and k.endswith("var")]
        if mean and var and all(map(bool, mean)) and all(map(bool, var)):
            at_init.append(layer)
    if at_init:
        raise BatchStatsError(
            f"BatchNorm running statistics still at their initial values (mean 0, var 1) in "
            f"{len(at_init)} of {len(layers)} layer(s): {', '.join(at_init)}. The training step "
            "never stored the batch_stats returned by apply(..., mutable=['batch_stats']); "
            "evaluation with train=False will normalise with mean 0 / var 1.",
            at_init,
        )


# --------------------------------------------------------------------------------------- NNX


def _path(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def nnx_mode_report(model: nnx.Module, frozen: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """``(in_eval, frozen_in_train)`` for an NNX model: ``/``-joined paths of BatchNorm /
    Dropout modules in eval mode that are not declared frozen, and of frozen ones in train mode.
    ``frozen`` holds paths or path prefixes (``"bn1"``, ``"block"``)."""
    layers = {_path(p): m for p, m in nnx.iter_modules(model) if isinstance(m, (nnx.BatchNorm, nnx.Dropout))}
    roots = [f.strip("/") for f in frozen]
    known = {_path(p) for p, _ in nnx.iter_modules(model)}
    for r in roots:
        if r not in known:
            raise ValueError(f"frozen name {r!r} is not a submodule of {type(model).__name__}")
    is_frozen = lambda n: any(r == "" or n == r or n.startswith(r + "/") for r in roots)
    in_eval_flag = lambda m: bool(m.use_running_average if isinstance(m, nnx.BatchNorm) else m.deterministic)
    in_eval = [n for n, m in layers.items() if in_eval_flag(m) and not is_frozen(n)]
    frozen_in_train = [n for n, m in layers.items() if not in_eval_flag(m) and is_frozen(n)]
    return in_eval, frozen_in_train


def assert_training(model: nnx.Module, frozen: Iterable[str] = (), *, check_frozen: bool = True) -> None:
    """NNX: raise :class:`ModeError` unless every BatchNorm / Dropout is in train mode
    (``use_running_average=False`` / ``deterministic=False``), frozen ones excepted — and, with
    ``check_frozen``, required to be in eval mode. Reads static attributes only (no device work)."""
    in_eval, frozen_in_train = nnx_mode_report(model, frozen)
    if not check_frozen:
        frozen_in_train = []
    parts = []
    if in_eval:
        parts.append(
            f"training step with {len(in_eval)} BatchNorm/Dropout module(s) in eval mode: "
            f"{', '.join(in_eval)}. An evaluation left model.eval() behind; call "
            "model.train() each epoch, or train and evaluate through nnx.view(...) views"
        )
    if frozen_in_train:
        parts.append(
            f"{len(frozen_in_train)} module(s) declared frozen are in train mode: "
            f"{', '.join(frozen_in_train)} (a later model.train() unfroze them)"
        )
    if parts:
        raise ModeError("; ".join(parts) + ".", in_eval, frozen_in_train)


__all__ = [
    "BatchStatsError",
    "ModeError",
    "assert_stats_tracked",
    "assert_training",
    "batch_stats_of",
    "check_batch_stats_updated",
    "nnx_mode_report",
]
