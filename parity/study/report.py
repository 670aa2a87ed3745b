"""Statistics, table, plot and report of a misplacement study (:mod:`parity.study.runners`).

Statistics over seeds
    Mean, sample standard deviation (``ddof=1``) and a 95% confidence interval of the mean,
    ``mean ± t(0.975, n-1) · std / sqrt(n)``. The Student-t quantile is ``scipy.stats.t.ppf``.
    With one seed there is no interval (``None``, shown as n/a).

Differences against ``torch_correct``
    Paired per seed: every variant of a seed starts from the same converted weights and sees the
    same batches, so ``d_s = acc_variant(s) - acc_torch_correct(s)`` and the CI is that of the
    mean of ``d_s``.

Diverged seeds
    The loops stop when an epoch's mean train loss is not finite. For the per-epoch curves and the
    last-epoch statistics a diverged seed's test accuracy is carried forward from the epoch it
    stopped at (its weights are no longer finite, so further training could not change them); its
    train loss and audit are missing (``nan``) for the epochs that did not run. The table counts
    diverged seeds.

Collapsed seeds
    A seed that did not diverge, had been above twice chance accuracy (``2 / classes``, 20% for
    ten classes) at some epoch, and ends at or below it has collapsed: e.g. dead ReLUs and constant
    predictions, train loss ln(10). (A run that never rose above it is undertrained, not failed.)
    The table counts diverged and collapsed seeds as failed runs, and the reading gives the
    paired difference with and without them.

The reading is generated from the numbers: each claim (a cost in stability, "generalises
less", "a few points above" the published CNN, an audit that "matches") is made only when the
numbers support it (:data:`PARAGRAPHS`). ``curves.png`` is drawn by :mod:`parity.study.plots`;
the three files are written as one set by :mod:`parity.study.outputs`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parity.io import json_safe

#: MNIST-1D authors' CNN (github.com/greydanus/mnist1d, README table "Comparing MNIST and MNIST-1D")
MNIST1D_PAPER_CNN_ACC = "about 94%"
MNIST1D_PAPER_CNN_ACC_VALUE = 0.94
#: their ConvBase (notebooks/models.py): Conv1d(1,25,5,s2,p1), Conv1d(25,25,3,s2,p1) x2, ReLU,
#: Linear(125,10); parameters = 150 + 1900 + 1900 + 1260
MNIST1D_PAPER_CNN_PARAMS = 5210


#: why ``--linen-path auto`` chose a path, with the measurement behind it (docs/STUDY.md)
LINEN_PATH_REASON = {
    "loop": (
        "(auto on CPU: on the 2-core dev box a Python loop of jitted steps ran an 8-seed epoch in "
        "0.5-0.7 s, scan + vmap over the seeds in 19-21 s; docs/STUDY.md)"
    ),
    "vmap": (
        "(auto on GPU: one scan epoch vmap-ed over all seeds is one launch instead of one per step; "
        "scripts/gpu_check.sh measures the speed-up against the loop)"
    ),
}


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


# ---------------------------------------------------------------------------------- table


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _ci_text(ci: tuple | None, signed: bool = False) -> str:
    if ci is None:
        return "n/a"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"[{fmt.format(100 * ci[0])}, {fmt.format(100 * ci[1])}]"


def table_rows(summary: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the final table (accuracies in percent, differences in points)."""
    header = [
        "variant",
        "acc % mean ± std",
        "95% CI",
        "best ep (acc)",
        "Δ vs torch_correct [95% CI]",
        "ep-2 acc",
        "audit ep1 / ep2+",
        "failed runs",
        "wall s",
    ]
    rows = []
    for v, s in summary.items():
        fa = s["final_acc"]
        acc = _pct(fa["mean"]) + ("" if fa["std"] is None else f" ± {100 * fa['std']:.2f}")
        d = s.get("diff_vs_torch_correct")
        diff = (
            "—"
            if d is None
            else (
                f"{100 * d['mean']:+.2f} {_ci_text(d['ci'], signed=True)}" if d["mean"] is not None else "n/a"
            )
        )
        au = s["audit"]
        later = (
            "not measured"
            if au["later_mean"] is None
            else f"{au['later_mean']:.2f}"
            if au["later_min"] == au["later_max"]
            else f"{au['later_min']:.2f}–{au['later_max']:.2f}"
        )
        audit = f"{'n/a' if au['epoch1_mean'] is None else format(au['epoch1_mean'], '.2f')} / {later}" + (
            " (UNEXPECTED)" if au["as_expected"] is False else ""
        )
        best = "n/a" if s["best_epoch"] is None else f"{s['best_epoch']} ({_pct(s['best_epoch_acc'])})"
        e2 = "n/a" if s["epoch2_acc"] is None else _pct(s["epoch2_acc"]["mean"])
        ci = None if fa["ci"] is None else (max(0.0, fa["ci"][0]), min(1.0, fa["ci"][1]))
        rows.append([v, acc, _ci_text(ci), best, diff, e2, audit, _failed_text(s), f"{s['wall_time_s']:.1f}"])
    return header, rows


def _failed_text(s: dict) -> str:
    d, c = len(s["diverged_seeds"]), len(s["collapsed_seeds"])
    parts = [f"{d} diverged"] * bool(d) + [f"{c} collapsed"] * bool(c)
    return f"{d + c}/{s['seeds']}" + (f" ({', '.join(parts)})" if parts else "")


def markdown_table(summary: dict[str, dict]) -> str:
    """The final table as GitHub markdown."""
    header, rows = table_rows(summary)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(f"`{r[0]}`" if i == 0 else c for i, c in enumerate(r)) + " |" for r in rows]
    return "\n".join(lines)


def print_table(summary: dict[str, dict], title: str = "", file: Any = None) -> None:
    """Print the final table to ``file`` (stdout by default) with rich."""
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(summary)
    table = Table(title=title or None, show_lines=False)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        table.add_row(*r)
    console = Console(file=file)
    Console(file=file, width=console.width if console.is_terminal else 180).print(table)


# --------------------------------------------------------------------------------- reading


def _points(x: float) -> str:
    return f"{abs(100 * x):.2f} points {'below' if x < 0 else 'above'}"


def _names(variants: Sequence[str]) -> str:
    return ", ".join(f"`{v}`" for v in variants)


@dataclass(frozen=True)
class _Reading:
    """What every paragraph of :func:`reading` reads: the results, their summary, the groups."""

    results: dict
    summary: dict[str, dict]

    @property
    def epochs(self) -> int:
        return self.results["config"]["epochs"]

    @property
    def ref(self) -> dict | None:
        return self.summary.get("torch_correct")

    @property
    def buggy(self) -> list[str]:
        return [v for v, s in self.summary.items() if not s["correct"]]

    @property
    def correct(self) -> list[str]:
        return [v for v, s in self.summary.items() if s["correct"]]


def _verdict(lo: float, hi: float, n_failed: int) -> str:
    """What a paired CI ``[lo, hi]`` says about a last-epoch difference."""
    if lo > 0 or hi < 0:
        return "the interval excludes zero"
    if n_failed:
        return (
            f"the interval includes zero because {n_failed} failed run{'s' * (n_failed > 1)} "
            "widen it (see Failed runs)"
        )
    return "the interval includes zero, so at the last epoch this is within seed noise"


def _last_epoch_effect(r: _Reading) -> str | None:
    """**Last-epoch effect**: each seed-bug variant against ``torch_correct``, paired."""
    if r.ref is None:
        return None
    parts = []
    for v in r.buggy:
        s, d = r.summary[v], r.summary[v]["diff_vs_torch_correct"]
        if d["mean"] is None:
            continue
        text = f"`{v}` ended {_points(d['mean'])} `torch_correct` at epoch {r.epochs}"
        if d["ci"] is None:
            parts.append(text + " (one seed: no interval)")
            continue
        lo, hi = d["ci"]
        n_failed = len(s["diverged_seeds"]) + len(s["collapsed_seeds"])
        text += (
            f" (paired over {d['n']} seeds, 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}] points; "
            f"{_verdict(lo, hi, n_failed)})"
        )
        w = s.get("diff_vs_torch_correct_without_failed")
        if w and w["mean"] is not None:
            text += (
                f"; without the failed runs (diverged or collapsed seeds of either variant) it is "
                f"{100 * w['mean']:+.2f} points {_ci_text(w['ci'], signed=True)} over {w['n']} seeds"
            )
        parts.append(text)
    return "**Last-epoch effect.** " + "; ".join(parts) + "." if parts else None


def _audit_text(v: str, a: dict, epochs: int) -> str:
    """One variant's measured audit, e.g. ``1.00 in epoch 1 and 0.00 in epochs 2–30``."""
    e1 = "n/a" if a["epoch1_mean"] is None else f"{a['epoch1_mean']:.2f}"
    if a["later_mean"] is None:
        return f"`{v}` {e1} in epoch 1, nothing measured after it"
    later = (
        f"{a['later_mean']:.2f}"
        if a["later_min"] == a["later_max"]
        else f"{a['later_min']:.2f}–{a['later_max']:.2f}"
    )
    return f"`{v}` {e1} in epoch 1 and {later} in {'epoch 2' if epochs == 2 else f'epochs 2–{epochs}'}"


def _audit_verdict(summary: dict[str, dict]) -> str:
    """Whether the audits match: contradicted, not measured after epoch 1, or all matching."""
    bad = [v for v, s in summary.items() if s["audit"]["as_expected"] is False]
    unmeasured = [v for v, s in summary.items() if s["audit"]["as_expected"] is None]
    if bad:
        return f" UNEXPECTED audit for {_names(bad)}: the loop does not do what it claims."
    if unmeasured:
        text = (
            f" Not measured after epoch 1 for {_names(unmeasured)} (one epoch, or divergence in "
            "epoch 1): epoch 1 trains in train mode in every variant, so these runs cannot tell the "
            "correct loop from the seed's bug."
        )
        matched = [v for v in summary if v not in unmeasured]
        return text + (f" {_names(matched)} match their expectation." if matched else "")
    expectations = "; ".join(dict.fromkeys(f"{s['audit']['expected']}" for s in summary.values()))
    return f" Every variant matches its expectation ({expectations})."


def _mode_audit(r: _Reading) -> str | None:
    """**Mode audit**: the measured train-mode share per variant and whether it matches."""
    if not r.summary:
        return None
    text = (
        "**Mode audit (measured at call time, not assumed).** Share of BatchNorm/Dropout calls "
        "in training steps that ran in training mode: "
        + "; ".join(_audit_text(v, s["audit"], r.epochs) for v, s in r.summary.items())
        + "."
        + _audit_verdict(r.summary)
    )
    bug_names = [v for v in r.buggy if v != "linen_bug_emulated"]
    if bug_names:
        text += (
            f" In {' and '.join(f'`{v}`' for v in bug_names)} nothing in the code says "
            '"train in eval mode": one `.train()` call before the loop and an `evaluate()` that '
            "leaves `.eval()` behind are enough."
        )
    if "linen_bug_emulated" in r.summary:
        text += " In Linen the same schedule had to be written on purpose (`linen_bug_emulated`)."
    return text


def _runtime_guard(r: _Reading) -> str | None:
    """**Runtime guard**: whether the recording guard objected in the torch variants, and where."""
    guarded = {v: x["seeds"] for v, x in r.results["variants"].items() if v.startswith("torch_")}
    if not guarded:
        return None
    every = r.results["config"].get("eval_every", "epoch")
    where = "at the first step of" if every == "epoch" else "first in"
    parts = []
    for v, seeds in guarded.items():
        hits = [x for x in seeds if x.get("guard_epoch") is not None]
        if not hits:
            parts.append(f"`{v}` silent in all {len(seeds)} runs")
            continue
        first = min(hits, key=lambda x: x["guard_epoch"])
        parts.append(
            f"`{v}` would have raised in {len(hits)}/{len(seeds)} runs, {where} "
            f"epoch {first['guard_epoch'] + 1}, naming {', '.join(first['guard_modules'])}"
        )
    return (
        "**Runtime guard.** `torch_impl.guard.training_guard`, recording instead of raising, "
        "checked every torch training step: " + "; ".join(parts) + "."
    )


def _epoch2(r: _Reading) -> str | None:
    """**Epoch 2**: mean test accuracy in the first epoch the bug trains in eval mode."""
    if r.ref is None or r.epochs < 2 or not r.buggy:
        return None
    parts = [f"`torch_correct` {_pct(r.ref['epoch2_acc']['mean'])}%"]
    for v in r.buggy:
        d = r.summary[v].get("epoch2_diff_vs_torch_correct")
        extra = "" if not d or d["mean"] is None else f" ({100 * d['mean']:+.2f} points)"
        parts.append(f"`{v}` {_pct(r.summary[v]['epoch2_acc']['mean'])}%{extra}")
    every = r.results["config"].get("eval_every", "epoch")
    title = "Epoch 2, the first epoch trained in eval mode" if every == "epoch" else "Epoch 2"
    return f"**{title}.** Mean test accuracy: " + ", ".join(parts) + "."


def fits_more_generalises_less(s: dict, ref: dict) -> bool:
    """True when the paired 95% CIs say both: a lower last-epoch test accuracy than ``ref``
    (``diff_vs_torch_correct`` entirely below zero) and a lower last train loss (the paired
    per-seed difference of the last finite train losses entirely below zero)."""
    acc = s.get("diff_vs_torch_correct")
    pairs = [
        (a, b)
        for a, b in zip(s["final_train_loss_per_seed"], ref["final_train_loss_per_seed"], strict=True)
        if a is not None and b is not None
    ]
    loss = mean_ci([a - b for a, b in pairs])
    return bool(acc and acc["ci"] and acc["ci"][1] < 0 and loss["ci"] and loss["ci"][1] < 0)


def _late_training(r: _Reading) -> str | None:
    """**Late training**: last train losses and the late swing; the "generalises less" reading
    only where :func:`fits_more_generalises_less` holds."""
    if r.ref is None or r.ref["swing"] is None:
        return None
    losses = ", ".join(
        f"`{v}` {s['final_train_loss_median']:.2g}"
        for v, s in r.summary.items()
        if s["final_train_loss_median"] is not None
    )
    sw = ", ".join(f"`{v}` {100 * s['swing']:.2f}" for v, s in r.summary.items() if s["swing"] is not None)
    text = (
        f"**Late training.** Median last-epoch train loss over seeds: {losses}. Epoch-to-epoch swing of "
        f"a seed's test accuracy over epochs {r.epochs // 2}–{r.epochs} (mean absolute change, points; "
        f"lower is steadier): {sw}."
    )
    fits_more = [v for v in r.buggy if fits_more_generalises_less(r.summary[v], r.ref)]
    if fits_more:
        text += (
            f" {_names(fits_more)} end{'s' if len(fits_more) == 1 else ''} with a lower train loss and a "
            "lower test accuracy than `torch_correct`, both by paired 95% CIs that exclude zero: without "
            "dropout and with frozen normalisation statistics the network fits the training set further "
            "and generalises less."
        )
    return text


def _frameworks(r: _Reading) -> str | None:
    """**Frameworks**: paired differences between variants with the same mode handling; "agree up
    to seed noise" only for the pairs whose 95% CI includes zero."""
    parts, apart = [], []
    for group, base in ((r.correct, "torch_correct"), (r.buggy, "torch_seed_bug")):
        if base not in r.summary:
            continue
        for v in group:
            if v == base:
                continue
            d = mean_ci(
                np.subtract(r.summary[v]["final_acc_per_seed"], r.summary[base]["final_acc_per_seed"])
            )
            if d["mean"] is not None:
                parts.append(f"`{v}` − `{base}` {100 * d['mean']:+.2f} {_ci_text(d['ci'], signed=True)}")
                if d["ci"] is not None and (d["ci"][0] > 0 or d["ci"][1] < 0):
                    apart.append(f"`{v}` − `{base}`")
    if not parts:
        return None
    verdict = "So these pairs should agree up to seed noise, not exactly; " + (
        f"{', '.join(apart)} differ{'s' * (len(apart) == 1)} by more (the 95% CI excludes zero)."
        if apart
        else "every interval includes zero."
    )
    return (
        "**Frameworks.** The same mode handling should give the same result in every framework. "
        "Last-epoch paired differences, points [95% CI]: " + "; ".join(parts) + ". Every variant "
        "of a seed starts from the same converted weights and sees the same batches; dropout masks "
        "come from each framework's own generator, and `torch_seed_bug` keeps the unbiased batch "
        "variance in its running statistics where Flax keeps the biased one, which matters once "
        "training runs on running statistics. " + verdict
    )


def fisher_exact_p(failed_a: int, runs_a: int, failed_b: int, runs_b: int) -> float:
    """Two-sided p of Fisher's exact test (scipy.stats.fisher_exact) for the 2x2 table
    failed/ok x group a/b."""
    from scipy import stats

    table = [[failed_a, runs_a - failed_a], [failed_b, runs_b - failed_b]]
    return float(stats.fisher_exact(table, alternative="two-sided").pvalue)


def _failed_count(summary: dict[str, dict], variants: list[str]) -> tuple[int, int]:
    """(failed runs, runs) over ``variants``: diverged or collapsed seeds."""
    failed = sum(len(summary[v]["diverged_seeds"]) + len(summary[v]["collapsed_seeds"]) for v in variants)
    return failed, sum(summary[v]["seeds"] for v in variants)


def _failure_rate(r: _Reading) -> str | None:
    """**Failure rate**: failed runs of the seed-bug variants against the correct ones, with
    Fisher's exact test; a stability cost is claimed only when p < 0.05."""
    if not r.buggy or not r.correct:
        return None
    (fb, nb), (fc, nc) = _failed_count(r.summary, r.buggy), _failed_count(r.summary, r.correct)
    text = f"**Failure rate.** Failed runs (diverged or collapsed): seed bug {fb}/{nb}, correct {fc}/{nc}"
    if fb + fc == 0:
        return text + "; no run failed, so this study shows no cost in stability."
    p = fisher_exact_p(fb, nb, fc, nc)
    text += f" (Fisher's exact test, two-sided p = {p:.2g})."
    if p < 0.05 and fb / nb > fc / nc:
        return text + " The seed's bug fails more often than the correct loops: a cost in stability."
    return text + (
        " Too few failures to say that either fails more often (the runs are paired by seed, so "
        "this is a rough comparison)."
    )


def _failed_runs(r: _Reading) -> str | None:
    """**Failed runs**: each diverged or collapsed seed, and whether only buggy variants failed."""
    failed = []
    for v, s in r.summary.items():
        for seed in s["diverged_seeds"]:
            failed.append(
                f"`{v}` seed {seed} diverged (non-finite train loss; stopped, its test accuracy carried forward)"
            )
        seeds = r.results["variants"][v]["seeds"]
        for seed in s["collapsed_seeds"]:
            last = next(x for x in seeds if x["seed"] == seed)["epochs"][-1]
            failed.append(
                f"`{v}` seed {seed} collapsed: last-epoch test accuracy {_pct(last['test_acc'], 1)}%, "
                f"train loss {last['train_loss']:.2f} (ln 10 = 2.30 is a constant prediction), "
                "with every loss finite"
            )
    if not failed:
        return None
    ok = [v for v, s in r.summary.items() if not s["diverged_seeds"] and not s["collapsed_seeds"]]
    failing = [v for v, s in r.summary.items() if s["diverged_seeds"] or s["collapsed_seeds"]]
    return (
        "**Failed runs.** "
        + "; ".join(failed)
        + "."
        + (f" No failed run in {_names(ok)}." if ok else "")
        + (
            " A failed run is part of the bug's damage: the means and intervals above include it."
            if all(not r.summary[v]["correct"] for v in failing)
            else " The means and intervals above include the failed runs."
        )
    )


#: the paragraphs of the reading, in order; each returns ``None`` when it has nothing to say
PARAGRAPHS = (
    _last_epoch_effect,
    _mode_audit,
    _runtime_guard,
    _epoch2,
    _late_training,
    _frameworks,
    _failed_runs,
    _failure_rate,
)


def reading(results: dict, summary: dict[str, dict]) -> list[str]:
    """Plain-language paragraphs generated from the numbers (:data:`PARAGRAPHS`)."""
    r = _Reading(results, summary)
    return [p for paragraph in PARAGRAPHS if (p := paragraph(r)) is not None]


# ---------------------------------------------------------------------------- external check


def versus_paper(acc: float) -> str:
    """How a correct-CNN test accuracy ``acc`` (fraction) compares with the authors' ~94%, in words
    that hold for the number: "a few points above" only for 1 to 5 points above."""
    d = 100 * (acc - MNIST1D_PAPER_CNN_ACC_VALUE)
    if d > 5:
        return f"{d:.1f} points above theirs, more than a larger normalised model alone explains"
    if d >= 1:
        return f"a few points above theirs ({d:+.1f}), which is what a larger normalised model should give"
    if d > -1:
        return f"within a point of theirs ({d:+.1f})"
    return (
        f"{-d:.1f} points below theirs, where a larger normalised model should not be: too few "
        "epochs (the default is 30) or a problem with the data or the training"
    )


def external_check(results: dict, summary: dict[str, dict]) -> str:
    """How the correct CNN compares with the MNIST-1D authors' CNN (mnist1d only)."""
    cfg = results["config"]
    if cfg["dataset"] != "mnist1d":
        return (
            "The external reference (the MNIST-1D authors' CNN, about 94%) is for MNIST-1D; this "
            f"study ran on `{cfg['dataset']}`, so there is no published number to compare with here."
        )
    ref = summary.get("torch_correct") or next((s for s in summary.values() if s["correct"]), None)
    if cfg.get("model", "signal1d") != "signal1d":
        measured = (
            ""
            if ref is None or ref["final_acc"]["mean"] is None
            else (
                f" Our correct `{cfg['model']}` reached {_pct(ref['final_acc']['mean'])}% after {cfg['epochs']} epochs."
            )
        )
        return (
            "The MNIST-1D authors report " + MNIST1D_PAPER_CNN_ACC + " for their CNN; the architecture "
            f"comparison written here is for the default `signal1d` CNN, not `{cfg['model']}`." + measured
        )
    params = results["model"]["params"]
    text = (
        "The MNIST-1D authors report " + MNIST1D_PAPER_CNN_ACC + " test accuracy for their CNN "
        '(README of github.com/greydanus/mnist1d, table "Comparing MNIST and MNIST-1D"). '
    )
    measured = ref is not None and ref["final_acc"]["mean"] is not None
    if measured:
        text += (
            f"Our correct CNN reached {_pct(ref['final_acc']['mean'])}% after {cfg['epochs']} epochs "
            f"(mean of {ref['final_acc']['n']} seeds): {versus_paper(ref['final_acc']['mean'])}. "
        )
    return text + (
        f"The architectures differ: theirs (`ConvBase` in the repository's notebooks/models.py) is three "
        f"stride-2 Conv1d layers of 25 channels with ReLU and one linear layer, no BatchNorm, no dropout, "
        f"about {MNIST1D_PAPER_CNN_PARAMS / 1000:.1f}k parameters; ours has two convolutions with "
        f"BatchNorm and max-pooling, a {cfg['model_config'].get('hidden', 128)}-unit "
        f"dense layer with BatchNorm, dropout, and {params / 1000:.1f}k parameters, trained with SGD + "
        f"momentum. It is a sanity check of the data and the training, not a like-for-like comparison."
    )


# --------------------------------------------------------------------------------- report.md


def _env_lines(results: dict) -> list[str]:
    env = results["environment"]
    v = env["versions"]
    ps = env["precision_settings"]
    return [
        f"- device: **{env['device']}** ({ps.get('torch_device_name')}, jax backend {ps.get('jax_backend')}); "
        f"{env['cpu_count']} CPUs, torch threads {env['torch_threads']}",
        f"- float32 precision policy: **{env['precision']}** — torch cudnn.allow_tf32="
        f"{ps.get('torch.backends.cudnn.allow_tf32')}, cuda.matmul.allow_tf32="
        f"{ps.get('torch.backends.cuda.matmul.allow_tf32')}, float32_matmul_precision="
        f"{ps.get('torch.float32_matmul_precision')}; jax_default_matmul_precision="
        f"{ps.get('jax_default_matmul_precision')}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + f", python {env['python']}",
        f"- platform: {env['platform']}",
    ]


def eval_schedule_text(every: int | str) -> str:
    """``--eval-every`` in words."""
    if every == "epoch":
        return "after every epoch (the default)"
    if every == "end":
        return "only after the last epoch (the control: nothing can leak a mode into training)"
    return f"every {every} training steps"


def _configuration_lines(results: dict, summary: dict[str, dict]) -> list[str]:
    """The ``## Configuration`` list: data, model, schedule, execution paths, wall time."""
    cfg, m = results["config"], results["model"]
    paths = sorted({(s["framework"], s["path"]) for s in summary.values()})
    described = {s["path"]: results["variants"][v]["path_description"] for v, s in summary.items()}
    linen_path = results["environment"]["linen_path"]
    model_config = f", config {json.dumps(cfg['model_config'])}" if cfg["model_config"] else ""
    return [
        f"- dataset **{cfg['dataset']}** ({m['train_examples']} train / {m['test_examples']} test), model "
        f"`{m['name']}` ({m['params']:,} parameters){model_config}",
        f"- {cfg['seeds']} seeds ({', '.join(map(str, cfg['seed_list']))}), {cfg['epochs']} epochs, "
        f"SGD lr {cfg['lr']} momentum {cfg['momentum']}, batch size {cfg['batch_size']} "
        f"({m['steps_per_epoch']} steps/epoch, last partial batch dropped)",
        f"- evaluation inside training: {eval_schedule_text(cfg.get('eval_every', 'epoch'))}",
        "- execution: " + "; ".join(f"{fw}: {described[p]}" for fw, p in paths),
        f"- Linen path: **{linen_path}** "
        + (
            LINEN_PATH_REASON.get(linen_path, "")
            if cfg["linen_path"] == "auto"
            else "(chosen with --linen-path)"
        ),
        f"- total wall time {results['total_wall_time_s']:.1f} s; run {results['created_utc']}",
    ]


def _speed_line(summary: dict[str, dict]) -> str | None:
    """Steady-state steps/s per variant and its first epoch (which pays the compilation)."""
    parts = [
        f"`{v}` {t['steady_steps_per_s']:.0f} steps/s (first epoch {t['first_epoch_s']:.1f} s)"
        for v, s in summary.items()
        if (t := s.get("timing")) and t.get("steady_steps_per_s") is not None
    ]
    if not parts:
        return None
    return (
        "Speed, steady state (median over epochs 2+ of the steps all seeds ran in an epoch over "
        "its wall time; the first epoch, which compiles, is left out): " + "; ".join(parts) + "."
    )


def _results_lines(summary: dict[str, dict]) -> list[str]:
    """The ``## Results`` section: how to read the table, the table, speed and the plot."""
    speed = _speed_line(summary)
    return [
        "Test accuracy at the last epoch over seeds: mean ± sample std, and the 95% CI of the mean "
        "(Student t; shown clipped to [0, 100]). Δ: paired per-seed difference to `torch_correct` in "
        "percentage points. Best epoch: the epoch (1-based) with the highest mean test accuracy. "
        "Audit: measured share of BN/Dropout calls in training steps that ran in training mode, "
        "epoch 1 / epochs 2+. Wall time includes compilation (the first variant of each framework "
        "pays it).",
        "",
        markdown_table(summary),
        "",
        *([speed, ""] if speed else []),
        "![Test accuracy and train loss per epoch](curves.png)",
        "",
        "*curves.png: left, test accuracy per epoch, mean over all seeds with a band of ±1 sample standard "
        "deviation across seeds; middle, the second half zoomed, over the seeds that did not fail; right, the "
        "median train loss. Solid lines: correct mode handling; dashed: the seed's bug. Colour: framework.*",
    ]


def render_report(results: dict, summary: dict[str, dict]) -> str:
    """``report.md``: configuration, environment, table, plot and a plain-language reading."""
    lines = [
        "# The train()/eval() misplacement study",
        "",
        "Each variant trains the same CNN from the same converted initial weights with the same batch "
        "order per seed; only where and how the BatchNorm/Dropout mode is set differs. See "
        "docs/STUDY.md for the variants and how to read this file.",
        "",
        "## Configuration",
        "",
        *_configuration_lines(results, summary),
        "",
        "## Environment",
        "",
        *_env_lines(results),
        "",
        "## Results",
        "",
        *_results_lines(summary),
        "",
        "## Reading",
        "",
    ]
    for p in reading(results, summary):
        lines += [p, ""]
    lines += ["## External check", "", external_check(results, summary), ""]
    return "\n".join(lines)


def to_json(results: dict) -> str:
    """``results`` as JSON text; non-finite floats become ``null`` (strict JSON, no NaN literals)."""
    return json.dumps(json_safe(results), indent=1, allow_nan=False) + "\n"
