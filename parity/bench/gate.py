"""Correctness checks: the gate before timing and the checks of the timed run itself.

* **Gate** (:func:`check_gate`): with dropout off and ``strict`` precision, a style's first
  :data:`GATE_STEPS` losses must match ``torch_eager``'s within :data:`GATE_RTOL`.
* **Dropout probe** (:func:`probe_dropout`): the style's own runner with the model's dropout,
  the same batch at every step and learning rate 0, so only the dropout mask can change the
  loss; the losses must differ between steps (:data:`DROPOUT_SPREAD_MIN`).
* **Timed run** (:func:`check_timed_run`): every loss of every timed repeat is finite and every
  BatchNorm running statistic moved between before the warm-up and after the last repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from parity.bench.spec import DROPOUT_SPREAD_MIN, GATE_RTOL, GATE_STEPS, Runner
from parity.bench.workload import Workload, make_runner


def to_numpy(losses: Any) -> np.ndarray:
    """Device losses (a torch tensor, a jax array or a list of scalars) as a float64 array."""
    if hasattr(losses, "detach"):
        return losses.detach().cpu().numpy().astype(np.float64)
    return np.asarray(losses, dtype=np.float64)


@dataclass(frozen=True)
class Gate:
    """The correctness gate of one style: its first losses against the reference's."""

    passed: bool
    max_rel_err: float
    losses: list
    reference: list
    rtol: float = GATE_RTOL
    steps: int = GATE_STEPS


def reference_losses(wl: Workload, steps: int = GATE_STEPS) -> np.ndarray:
    """``torch_eager``'s first ``steps`` losses with dropout off: the gate's reference."""
    return to_numpy(make_runner("torch_eager", wl, steps, dropout=0.0).run())


def check_gate(style: str, wl: Workload, reference: np.ndarray, rtol: float = GATE_RTOL) -> Gate:
    """Run ``style`` for ``len(reference)`` steps with dropout off and compare its losses.

    Passes when every loss is finite and ``max |loss - ref| / |ref| <= rtol`` (for the vmap style,
    over every seed).
    """
    steps = len(reference)
    losses = to_numpy(make_runner(style, wl, steps, dropout=0.0, gate=True).run())
    err = np.abs(losses - reference) / np.abs(reference)
    max_err = float(np.max(err)) if np.all(np.isfinite(losses)) else math.inf
    return Gate(bool(max_err <= rtol), max_err, losses.tolist(), reference.tolist(), rtol, steps)


def probe_dropout(style: str, wl: Workload, steps: int = GATE_STEPS) -> dict:
    """Whether ``style``'s dropout masks change between steps.

    Runs ``style``'s runner with the model's dropout for ``steps`` steps on seed 0's first batch
    every step, at learning rate 0: the weights stay put and BatchNorm normalises with batch
    statistics, so the losses of two steps differ only if their masks do. Returns
    ``{"changes", "rel_spread", "losses"}``: ``rel_spread`` is ``(max - min) / |mean|`` over the
    steps (per seed for the vmap style, the smallest), ``changes`` is it > DROPOUT_SPREAD_MIN.
    """
    one = np.broadcast_to(wl.idx[:, :1], (wl.seeds, steps, wl.batch_size))
    runner = make_runner(style, replace(wl, lr=0.0), steps, dropout=None, idx=one)
    losses = to_numpy(runner.run()).reshape(-1, steps)
    spread = (losses.max(axis=1) - losses.min(axis=1)) / np.abs(losses.mean(axis=1))
    rel = float(np.min(spread)) if np.all(np.isfinite(losses)) else math.nan
    return {"changes": bool(rel > DROPOUT_SPREAD_MIN), "rel_spread": rel, "losses": losses.tolist()}


def gate_failure(gate: dict) -> str | None:
    """Why a gate verdict (a row's ``gate``) fails, or ``None`` when it passes."""
    if not gate["passed"]:
        return (
            f"gate: losses differ from torch_eager's by {gate['max_rel_err']:.3g} relative "
            f"(tolerance {gate['rtol']:g}) over the first {gate['steps']} steps at batch "
            f"{gate['batch_size']}"
        )
    probe = gate.get("dropout")
    if probe is not None and not probe["changes"]:
        return (
            f"gate: dropout masks do not change between steps (loss spread {probe['rel_spread']:.3g} "
            f"at learning rate 0 on one batch, need > {DROPOUT_SPREAD_MIN:g})"
        )
    return None


def check_timed_run(outputs: list, bn_before: dict[str, np.ndarray], runner: Runner) -> dict:
    """The timed run's own checks, from its repeats' ``outputs`` (device losses) and the
    BatchNorm statistics before the warm-up and now.

    Returns ``{"losses_finite", "bn_moved", "bn_frozen", "problems"}``: ``bn_frozen`` names the
    statistics that did not change (or are not finite); ``problems`` is a list of sentences,
    empty when the run is sound.
    """
    finite = all(np.all(np.isfinite(to_numpy(o))) for o in outputs)
    after = runner.bn_stats()
    frozen = [
        k
        for k, v in bn_before.items()
        if k not in after or not np.all(np.isfinite(after[k])) or np.array_equal(after[k], v)
    ]
    problems = []
    if not finite:
        problems.append("timed run: a loss is not finite")
    if frozen or not bn_before:
        named = ", ".join(frozen[:4]) + (" ..." if len(frozen) > 4 else "") or "(none found)"
        problems.append(f"timed run: BatchNorm running statistics did not move: {named}")
    moved = not frozen and bool(bn_before)
    return {"losses_finite": finite, "bn_moved": moved, "bn_frozen": frozen, "problems": problems}
