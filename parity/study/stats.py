"""Statistics of a misplacement study: per-variant summaries, paired 95% CIs, Fisher's test.

Mean, sample std (``ddof=1``) and the 95% CI of the mean, ``mean ± t(0.975, n-1)·std/sqrt(n)``
(Student t from ``scipy.stats.t.ppf``; no interval with one seed). Differences against
``torch_correct`` are paired per seed. A diverged seed's test accuracy is carried forward from
the epoch it stopped at; a seed that rose above twice chance and ends at or below it has
collapsed. Diverged and collapsed seeds are the failed runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom (scipy.stats.t)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mean_ci(values: Sequence[float]) -> dict:
    """``{'n', 'mean', 'std', 'ci': (low, high)}`` over the finite ``values``; std/ci ``None`` if n < 2."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci": None}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci": None}
    std = float(v.std(ddof=1))
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci": (mean - half, mean + half)}


# ------------------------------------------------------------------------------ per-epoch arrays


def epoch_arrays(variant: dict, epochs: int) -> dict[str, np.ndarray]:
    """``(seeds, epochs)`` arrays of ``test_acc`` (carried forward after divergence), ``train_loss``
    and ``train_mode`` (``nan`` where an epoch did not run)."""
    seeds = variant["seeds"]
    acc = np.full((len(seeds), epochs), np.nan)
    loss = np.full_like(acc, np.nan)
    mode = np.full_like(acc, np.nan)
    for i, s in enumerate(seeds):
        for r in s["epochs"]:
            e = r["epoch"]
            acc[i, e], loss[i, e], mode[i, e] = (_f(r["test_acc"]), _f(r["train_loss"]), _f(r["train_mode"]))
        ran = len(s["epochs"])
        if 0 < ran < epochs:
            acc[i, ran:] = acc[i, ran - 1]
    return {"test_acc": acc, "train_loss": loss, "train_mode": mode}


def _f(x: Any) -> float:
    return float("nan") if x is None else float(x)


def nanmean(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Mean over ``axis`` of the finite values; ``nan`` where there are none (no warning)."""
    with np.errstate(invalid="ignore"):
        count = np.sum(np.isfinite(a), axis=axis)
        total = np.nansum(a, axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def nanstd(a: np.ndarray, axis: int = 0) -> np.ndarray:
    """Sample std (``ddof=1``) over ``axis`` of the finite values; ``nan`` with fewer than two."""
    out = np.full(a.shape[1 - axis], np.nan)
    for j in range(a.shape[1 - axis]):
        col = a[:, j] if axis == 0 else a[j]
        col = col[np.isfinite(col)]
        if len(col) > 1:
            out[j] = col.std(ddof=1)
    return out


# --------------------------------------------------------------------------------- summary


def _collapsed(seeds: list[dict], acc: np.ndarray, classes: int) -> list[int]:
    """Seeds that did not diverge, were above twice chance at some epoch and end at or below it."""
    return [
        x["seed"]
        for i, x in enumerate(seeds)
        if not x["diverged"] and acc[i, -1] <= 2.0 / classes < np.nanmax(acc[i])
    ]


def _variant_summary(r: dict, a: dict[str, np.ndarray], classes: int, expected: np.ndarray) -> dict[str, Any]:
    """One variant's statistics from its result ``r`` and :func:`epoch_arrays` ``a``; ``expected``:
    its per-epoch train-mode share (:func:`expected_train_mode`)."""
    acc = a["test_acc"]
    epochs = acc.shape[1]
    mean_curve = nanmean(acc)
    best = int(np.nanargmax(mean_curve)) if np.isfinite(mean_curve).any() else None
    return {
        "framework": r["framework"],
        "correct": r["correct"],
        "path": r["path"],
        "wall_time_s": r["wall_time_s"],
        "timing": r.get("timing"),
        "seeds": len(r["seeds"]),
        "final_acc": mean_ci(acc[:, -1]),
        "final_acc_per_seed": acc[:, -1].tolist(),
        "best_epoch": None if best is None else best + 1,  # 1-based
        "best_epoch_acc": None if best is None else float(mean_curve[best]),
        "epoch2_acc": mean_ci(acc[:, 1]) if epochs >= 2 else None,
        "diverged": sum(x["diverged"] for x in r["seeds"]),
        "diverged_seeds": [x["seed"] for x in r["seeds"] if x["diverged"]],
        "collapsed_seeds": _collapsed(r["seeds"], acc, classes),
        "curve": {
            "test_acc_mean": mean_curve.tolist(),
            "test_acc_std": nanstd(acc).tolist(),
            "train_loss_mean": nanmean(a["train_loss"]).tolist(),
            "train_mode_mean": nanmean(a["train_mode"]).tolist(),
        },
        "swing": _swing(acc),
        "final_train_loss_per_seed": _last_finite(a["train_loss"]),
        "final_train_loss_median": _median_last(a["train_loss"]),
        "audit": _audit(a["train_mode"], expected),
    }


def _paired(s: dict, r: dict, acc: np.ndarray, ref_acc: np.ndarray, ref_s: dict | None) -> dict:
    """Paired per-seed differences of a variant against ``torch_correct`` (same seeds, same order)."""
    epochs = acc.shape[1]
    failed = set(s["diverged_seeds"] + s["collapsed_seeds"])
    if ref_s is not None:
        failed |= set(ref_s["diverged_seeds"] + ref_s["collapsed_seeds"])
    keep = [i for i, x in enumerate(r["seeds"]) if x["seed"] not in failed]
    return {
        "diff_vs_torch_correct": mean_ci(acc[:, -1] - ref_acc[:, -1]),
        "epoch2_diff_vs_torch_correct": mean_ci(acc[:, 1] - ref_acc[:, 1]) if epochs >= 2 else None,
        "diff_vs_torch_correct_without_failed": (
            mean_ci(acc[keep, -1] - ref_acc[keep, -1]) if failed and keep else None
        ),
    }


def summarize(results: dict) -> dict[str, dict]:
    """Per-variant statistics of a :func:`parity.study.run_study` result (accuracies as fractions)."""
    epochs = results["config"]["epochs"]
    classes = results.get("model", {}).get("num_classes", 10)
    arrays = {v: epoch_arrays(r, epochs) for v, r in results["variants"].items()}
    every = results["config"].get("eval_every", "epoch")
    steps = results.get("model", {}).get("steps_per_epoch", 1)
    summary = {
        v: _variant_summary(r, arrays[v], classes, expected_train_mode(r["correct"], every, steps, epochs))
        for v, r in results["variants"].items()
    }
    if "torch_correct" in arrays:
        ref_acc, ref_s = arrays["torch_correct"]["test_acc"], summary["torch_correct"]
        for v, r in results["variants"].items():
            if v != "torch_correct":
                summary[v] |= _paired(summary[v], r, arrays[v]["test_acc"], ref_acc, ref_s)
    return summary


def _last_finite(loss: np.ndarray) -> list[float | None]:
    """Per seed, the last recorded (finite) train loss; ``None`` if none is finite."""
    return [float(row[np.isfinite(row)][-1]) if np.isfinite(row).any() else None for row in loss]


def _median_last(loss: np.ndarray) -> float | None:
    """Median over seeds of the last recorded (finite) train loss."""
    last = [x for x in _last_finite(loss) if x is not None]
    return float(np.median(last)) if last else None


def _swing(acc: np.ndarray) -> float | None:
    """Instability: mean over seeds of the mean |epoch-to-epoch change| of test accuracy over the
    second half of training (fraction; None with fewer than 4 epochs)."""
    epochs = acc.shape[1]
    if epochs < 4:
        return None
    half = acc[:, epochs // 2 - 1 :]
    return float(np.nanmean(np.abs(np.diff(half, axis=1))))


def expected_train_mode(
    correct: bool, eval_every: int | str, steps_per_epoch: int, epochs: int
) -> np.ndarray:
    """The train-mode share each epoch should measure, ``(epochs,)``: 1.0 throughout for a correct
    variant; for a seed-bug variant 1.0 until the loop's first evaluation and 0.0 after it, which
    is after epoch 1 (``eval_every="epoch"``), after step N (an ``int``), or never (``"end"``)."""
    if correct or eval_every == "end":
        return np.ones(epochs)
    first = steps_per_epoch if eval_every == "epoch" else int(eval_every)
    done = np.arange(epochs) * steps_per_epoch
    return np.clip(first - done, 0, steps_per_epoch) / steps_per_epoch


def _expectation_text(expected: np.ndarray) -> str:
    if np.all(expected == 1.0):
        return "1.0 every epoch"
    if expected[0] == 1.0 and np.all(expected[1:] == 0.0):
        return "1.0 in epoch 1, 0.0 after"
    return (
        "1.0 until the loop's first evaluation, 0.0 after ("
        + ", ".join(f"{x:.2f}" for x in expected[:3])
        + ", ...)"
    )


def _audit(mode: np.ndarray, expected: np.ndarray) -> dict:
    """Measured train-mode fraction in epoch 1 and over epochs 2..E, and whether it matches the
    ``expected`` per-epoch share (:func:`expected_train_mode`; default schedule: correct
    variants 1.0 every epoch, seed-bug variants 1.0 then 0.0).

    ``as_expected`` is ``None`` when epoch 1 matched but no epoch after it ran (``--epochs 1``,
    or every seed diverged in epoch 1): only epochs 2+ tell the correct loop from the seed's bug,
    so nothing was measured that could match or contradict it.
    """
    first = mode[:, 0][np.isfinite(mode[:, 0])]
    later = mode[:, 1:][np.isfinite(mode[:, 1:])]
    out = {
        "epoch1_mean": float(first.mean()) if len(first) else None,
        "later_mean": float(later.mean()) if len(later) else None,
        "later_min": float(later.min()) if len(later) else None,
        "later_max": float(later.max()) if len(later) else None,
        "expected": _expectation_text(expected),
    }
    ran = np.isfinite(mode)
    want = np.broadcast_to(expected, mode.shape)
    matches = bool(np.all(np.isclose(mode[ran], want[ran], rtol=0, atol=1e-6)))
    if not np.all(np.isclose(first, expected[0], rtol=0, atol=1e-6)):
        out["as_expected"] = False
    elif len(later) == 0:
        out["as_expected"] = None
    else:
        out["as_expected"] = matches
    return out


def fisher_exact_p(failed_a: int, runs_a: int, failed_b: int, runs_b: int) -> float:
    """Two-sided p of Fisher's exact test (scipy.stats.fisher_exact) for the 2x2 table
    failed/ok x group a/b."""
    from scipy import stats

    table = [[failed_a, runs_a - failed_a], [failed_b, runs_b - failed_b]]
    return float(stats.fisher_exact(table, alternative="two-sided").pvalue)
