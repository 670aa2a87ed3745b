"""Statistics, table, plot and report of a misplacement study (:mod:`parity.study.runners`).

Statistics over seeds
    Mean, sample standard deviation (``ddof=1``) and a 95% confidence interval of the mean,
    ``mean ± t(0.975, n-1) · std / sqrt(n)``. The Student-t quantile comes from a table for
    ``n-1 = 1..30`` (values to 9 digits) and, beyond, the Cornish-Fisher expansion of the t
    quantile around the normal one (Abramowitz & Stegun 26.7.5; error < 1e-5 for ``df > 30``).
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

Files (each written atomically with :mod:`parity.io`): ``results.json`` (non-finite numbers as
``null``), ``curves.png``, ``report.md``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from parity.io import atomic_open, atomic_write_text, ensure_writable_dir, json_safe

# t(0.975, df) for df = 1..30
_T975 = (
    12.706204736,
    4.302652730,
    3.182446305,
    2.776445105,
    2.570581836,
    2.446911851,
    2.364624252,
    2.306004135,
    2.262157163,
    2.228138852,
    2.200985160,
    2.178812830,
    2.160368656,
    2.144786688,
    2.131449546,
    2.119905299,
    2.109815578,
    2.100922040,
    2.093024054,
    2.085963447,
    2.079613845,
    2.073873068,
    2.068657610,
    2.063898562,
    2.059538553,
    2.055529439,
    2.051830516,
    2.048407142,
    2.045229642,
    2.042272456,
)
_Z975 = 1.959963985

#: MNIST-1D authors' CNN (github.com/greydanus/mnist1d, README table "Comparing MNIST and MNIST-1D")
MNIST1D_PAPER_CNN_ACC = "about 94%"
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
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom (see module doc)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


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


def _nanmean(a: np.ndarray, axis: int = 0) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        count = np.sum(np.isfinite(a), axis=axis)
        total = np.nansum(a, axis=axis)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _nanstd(a: np.ndarray, axis: int = 0) -> np.ndarray:
    out = np.full(a.shape[1 - axis], np.nan)
    for j in range(a.shape[1 - axis]):
        col = a[:, j] if axis == 0 else a[j]
        col = col[np.isfinite(col)]
        if len(col) > 1:
            out[j] = col.std(ddof=1)
    return out


# --------------------------------------------------------------------------------- summary


def summarize(results: dict) -> dict[str, dict]:
    """Per-variant statistics of a :func:`parity.study.run_study` result (accuracies as fractions)."""
    cfg = results["config"]
    epochs = cfg["epochs"]
    classes = results.get("model", {}).get("num_classes", 10)
    arrays = {v: epoch_arrays(r, epochs) for v, r in results["variants"].items()}
    ref = arrays.get("torch_correct")
    summary = {}
    for v, r in results["variants"].items():
        a = arrays[v]
        acc = a["test_acc"]
        mean_curve = _nanmean(acc)
        best = int(np.nanargmax(mean_curve)) if np.isfinite(mean_curve).any() else None
        s: dict[str, Any] = {
            "framework": r["framework"],
            "correct": r["correct"],
            "path": r["path"],
            "wall_time_s": r["wall_time_s"],
            "seeds": len(r["seeds"]),
            "final_acc": mean_ci(acc[:, -1]),
            "final_acc_per_seed": acc[:, -1].tolist(),
            "best_epoch": None if best is None else best + 1,  # 1-based
            "best_epoch_acc": None if best is None else float(mean_curve[best]),
            "epoch2_acc": mean_ci(acc[:, 1]) if epochs >= 2 else None,
            "diverged": sum(x["diverged"] for x in r["seeds"]),
            "diverged_seeds": [x["seed"] for x in r["seeds"] if x["diverged"]],
            "collapsed_seeds": [
                x["seed"]
                for i, x in enumerate(r["seeds"])
                if not x["diverged"] and acc[i, -1] <= 2.0 / classes < np.nanmax(acc[i])
            ],
            "curve": {
                "test_acc_mean": mean_curve.tolist(),
                "test_acc_std": _nanstd(acc).tolist(),
                "train_loss_mean": _nanmean(a["train_loss"]).tolist(),
                "train_mode_mean": _nanmean(a["train_mode"]).tolist(),
            },
            "swing": _swing(acc),
            "final_train_loss_median": _median_last(a["train_loss"]),
            "audit": _audit(a["train_mode"], r["correct"]),
        }
        if ref is not None and v != "torch_correct":
            r_acc = ref["test_acc"]  # same seeds, same order: paired
            s["diff_vs_torch_correct"] = mean_ci(acc[:, -1] - r_acc[:, -1])
            s["epoch2_diff_vs_torch_correct"] = mean_ci(acc[:, 1] - r_acc[:, 1]) if epochs >= 2 else None
            ids = [x["seed"] for x in r["seeds"]]
            failed = set(s["diverged_seeds"] + s["collapsed_seeds"]) | set(
                summary.get("torch_correct", {}).get("diverged_seeds", [])
                + summary.get("torch_correct", {}).get("collapsed_seeds", [])
            )
            keep = [i for i, seed in enumerate(ids) if seed not in failed]
            s["diff_vs_torch_correct_without_failed"] = (
                mean_ci(acc[keep, -1] - r_acc[keep, -1]) if failed and keep else None
            )
        summary[v] = s
    return summary


def _median_last(loss: np.ndarray) -> float | None:
    """Median over seeds of the last recorded (finite) train loss."""
    last = [row[np.isfinite(row)][-1] for row in loss if np.isfinite(row).any()]
    return float(np.median(last)) if last else None


def _swing(acc: np.ndarray) -> float | None:
    """Instability: mean over seeds of the mean |epoch-to-epoch change| of test accuracy over the
    second half of training (fraction; None with fewer than 4 epochs)."""
    epochs = acc.shape[1]
    if epochs < 4:
        return None
    half = acc[:, epochs // 2 - 1 :]
    return float(np.nanmean(np.abs(np.diff(half, axis=1))))


def _audit(mode: np.ndarray, correct: bool) -> dict:
    """Measured train-mode fraction in epoch 1 and over epochs 2..E, and whether it matches the
    expectation (correct variants: 1.0 every epoch; seed-bug variants: 1.0 then 0.0)."""
    first = mode[:, 0][np.isfinite(mode[:, 0])]
    later = mode[:, 1:][np.isfinite(mode[:, 1:])]
    out = {
        "epoch1_mean": float(first.mean()) if len(first) else None,
        "later_mean": float(later.mean()) if len(later) else None,
        "later_min": float(later.min()) if len(later) else None,
        "later_max": float(later.max()) if len(later) else None,
        "expected": "1.0 every epoch" if correct else "1.0 in epoch 1, 0.0 after",
    }
    want_later = 1.0 if correct else 0.0
    out["as_expected"] = bool(np.all(first == 1.0) and np.all(later == want_later))
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
            "n/a"
            if au["later_mean"] is None
            else f"{au['later_mean']:.2f}"
            if au["later_min"] == au["later_max"]
            else f"{au['later_min']:.2f}–{au['later_max']:.2f}"
        )
        audit = f"{'n/a' if au['epoch1_mean'] is None else format(au['epoch1_mean'], '.2f')} / {later}" + (
            "" if au["as_expected"] else " (UNEXPECTED)"
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


# ----------------------------------------------------------------------------------- plot

_COLOURS = {"torch": "#1f77b4", "linen": "#d62728", "nnx": "#2ca02c"}


def plot_curves(results: dict, summary: dict[str, dict], path: str | os.PathLike) -> None:
    """Write ``curves.png``, one line per variant (colour: framework; dashed: seed bug):

    1. test accuracy per epoch, mean over all seeds, band ±1 sample std (clipped to 0-100%);
    2. a zoom on the second half, mean ±1 std over the seeds that did not fail (diverged or
       collapsed seeds are left out there, and the title says how many);
    3. the median over seeds of the train loss per epoch (log scale).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    cfg = results["config"]
    E = cfg["epochs"]
    epochs = np.arange(1, E + 1)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4), constrained_layout=True)
    zoom_from = max(1, E // 2)
    zoom = slice(zoom_from - 1, None)
    zoom_lo, zoom_hi, left_out = [], [], 0
    for v, s in summary.items():
        arrays = epoch_arrays(results["variants"][v], E)
        acc, loss = 100 * arrays["test_acc"], arrays["train_loss"]
        style = dict(
            color=_COLOURS.get(s["framework"], "k"),
            linestyle="-" if s["correct"] else "--",
            marker="o" if s["correct"] else "s",
            markersize=3,
            linewidth=1.6,
        )
        label = f"{v} ({'correct' if s['correct'] else 'seed bug'})"
        alpha = 0.10 if s["correct"] else 0.07

        mean, std = _nanmean(acc), np.nan_to_num(_nanstd(acc))
        axes[0].plot(epochs, mean, label=label, **style)
        axes[0].fill_between(
            epochs,
            np.clip(mean - std, 0, 100),
            np.clip(mean + std, 0, 100),
            color=style["color"],
            alpha=alpha,
            linewidth=0,
        )

        failed = set(s["diverged_seeds"]) | set(s["collapsed_seeds"])
        keep = [i for i, x in enumerate(results["variants"][v]["seeds"]) if x["seed"] not in failed]
        left_out += len(failed)
        if keep:
            zmean, zstd = _nanmean(acc[keep]), np.nan_to_num(_nanstd(acc[keep]))
            axes[1].plot(epochs[zoom], zmean[zoom], **style)
            axes[1].fill_between(
                epochs[zoom],
                (zmean - zstd)[zoom],
                (zmean + zstd)[zoom],
                color=style["color"],
                alpha=alpha,
                linewidth=0,
            )
            if np.isfinite(zmean[zoom]).any():
                zoom_lo.append(np.nanmin((zmean - zstd)[zoom]))
                zoom_hi.append(np.nanmax((zmean + zstd)[zoom]))

        with warnings.catch_warnings():  # all-nan epochs (every seed diverged) stay nan
            warnings.simplefilter("ignore", RuntimeWarning)
            median_loss = np.nanmedian(loss, axis=0)
        axes[2].plot(epochs, np.where(median_loss > 0, median_loss, np.nan), **style)

    n = max(s["seeds"] for s in summary.values())
    axes[0].set_title(f"Test accuracy ({cfg['dataset']}): mean of {n} seeds, band ±1 std")
    axes[0].set_ylim(top=100.5)
    axes[1].set_title(
        f"Zoom, epochs {zoom_from}–{E}" + (f" (failed runs left out: {left_out})" if left_out else "")
    )
    if zoom_lo:
        axes[1].set_ylim(
            max(0.0, float(np.nanmin(zoom_lo)) - 0.5), min(100.5, float(np.nanmax(zoom_hi)) + 0.5)
        )
    axes[2].set_title("Train loss per epoch: median over seeds (log scale)")
    axes[2].set_yscale("log")
    for ax in axes[:2]:
        ax.set_ylabel("test accuracy (%)")
    axes[2].set_ylabel("mean train loss of the epoch")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(
        "Solid: mode handled correctly. Dashed: the seed's train()/eval() misplacement "
        "(training in eval mode from epoch 2 on). Colour: framework.",
        fontsize=10,
    )
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------- report


def _points(x: float) -> str:
    return f"{abs(100 * x):.2f} points {'below' if x < 0 else 'above'}"


def reading(results: dict, summary: dict[str, dict]) -> list[str]:
    """Plain-language paragraphs generated from the numbers."""
    cfg = results["config"]
    E = cfg["epochs"]
    out = []
    ref = summary.get("torch_correct")
    buggy = [v for v, s in summary.items() if not s["correct"]]
    correct = [v for v, s in summary.items() if s["correct"]]

    if ref is not None and buggy:
        parts = []
        for v in buggy:
            d = summary[v]["diff_vs_torch_correct"]
            if d["mean"] is None:
                continue
            if d["ci"] is None:
                parts.append(
                    f"`{v}` ended {_points(d['mean'])} `torch_correct` at epoch {E} (one seed: no interval)"
                )
                continue
            lo, hi = d["ci"]
            n_failed = len(summary[v]["diverged_seeds"]) + len(summary[v]["collapsed_seeds"])
            verdict = (
                "the interval excludes zero"
                if lo > 0 or hi < 0
                else f"the interval includes zero because {n_failed} failed run{'s' * (n_failed > 1)} "
                "widen it (see Failed runs)"
                if n_failed
                else "the interval includes zero, so at the last epoch this is within seed noise"
            )
            text = (
                f"`{v}` ended {_points(d['mean'])} `torch_correct` at epoch {E} "
                f"(paired over {d['n']} seeds, 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}] points; {verdict})"
            )
            w = summary[v].get("diff_vs_torch_correct_without_failed")
            if w and w["mean"] is not None:
                text += (
                    f"; without the failed runs (diverged or collapsed seeds of either variant) it is "
                    f"{100 * w['mean']:+.2f} points {_ci_text(w['ci'], signed=True)} over {w['n']} seeds"
                )
            parts.append(text)
        if parts:
            out.append("**Last-epoch effect.** " + "; ".join(parts) + ".")

    if buggy or correct:

        def fmt(v: str) -> str:
            a = summary[v]["audit"]
            e1 = "n/a" if a["epoch1_mean"] is None else f"{a['epoch1_mean']:.2f}"
            if a["later_mean"] is None:
                return f"`{v}` {e1} in epoch 1"
            later = (
                f"{a['later_mean']:.2f}"
                if a["later_min"] == a["later_max"]
                else f"{a['later_min']:.2f}–{a['later_max']:.2f}"
            )
            return f"`{v}` {e1} in epoch 1 and {later} in {'epoch 2' if E == 2 else f'epochs 2–{E}'}"

        text = (
            "**Mode audit (measured at call time, not assumed).** Share of BatchNorm/Dropout calls "
            "in training steps that ran in training mode: " + "; ".join(fmt(v) for v in summary) + "."
        )
        bad = [v for v, s in summary.items() if not s["audit"]["as_expected"]]
        text += (
            " Every variant matches its expectation (correct: 1.0 every epoch; seed bug: 1.0 then 0.0)."
            if not bad
            else f" UNEXPECTED audit for {', '.join(bad)}: the loop does not do what it claims."
        )
        bug_names = [v for v in buggy if v != "linen_bug_emulated"]
        if bug_names:
            text += (
                f" In {' and '.join(f'`{v}`' for v in bug_names)} nothing in the code says "
                '"train in eval mode": one `.train()` call before the loop and an `evaluate()` that '
                "leaves `.eval()` behind are enough."
            )
        if "linen_bug_emulated" in summary:
            text += " In Linen the same schedule had to be written on purpose (`linen_bug_emulated`)."
        out.append(text)

    guarded = {v: r["seeds"] for v, r in results["variants"].items() if v.startswith("torch_")}
    if guarded:
        parts = []
        for v, seeds in guarded.items():
            hits = [x for x in seeds if x.get("guard_epoch") is not None]
            if not hits:
                parts.append(f"`{v}` silent in all {len(seeds)} runs")
                continue
            first = min(hits, key=lambda x: x["guard_epoch"])
            parts.append(
                f"`{v}` would have raised in {len(hits)}/{len(seeds)} runs, at the first step of "
                f"epoch {first['guard_epoch'] + 1}, naming {', '.join(first['guard_modules'])}"
            )
        out.append(
            "**Runtime guard.** `torch_impl.guard.training_guard`, recording instead of raising, "
            "checked every torch training step: " + "; ".join(parts) + "."
        )

    if ref is not None and E >= 2 and buggy:
        parts = [f"`torch_correct` {_pct(ref['epoch2_acc']['mean'])}%"]
        for v in buggy:
            d = summary[v].get("epoch2_diff_vs_torch_correct")
            extra = "" if not d or d["mean"] is None else f" ({100 * d['mean']:+.2f} points)"
            parts.append(f"`{v}` {_pct(summary[v]['epoch2_acc']['mean'])}%{extra}")
        text = (
            "**Epoch 2, the first epoch trained in eval mode.** Mean test accuracy: " + ", ".join(parts) + "."
        )
        out.append(text)

    if ref is not None and ref["swing"] is not None:
        losses = ", ".join(
            f"`{v}` {s['final_train_loss_median']:.2g}"
            for v, s in summary.items()
            if s["final_train_loss_median"] is not None
        )
        sw = ", ".join(f"`{v}` {100 * s['swing']:.2f}" for v, s in summary.items() if s["swing"] is not None)
        text = (
            f"**Late training.** Median last-epoch train loss over seeds: {losses}. Epoch-to-epoch swing of "
            f"a seed's test accuracy over epochs {E // 2}–{E} (mean absolute change, points; lower is "
            f"steadier): {sw}."
        )
        fits_more = [
            v
            for v in buggy
            if summary[v]["final_train_loss_median"] is not None
            and ref["final_train_loss_median"] is not None
            and summary[v]["final_train_loss_median"] < ref["final_train_loss_median"]
            and (summary[v]["final_acc"]["mean"] or 0) < (ref["final_acc"]["mean"] or 0)
        ]
        if fits_more:
            text += (
                f" {', '.join(f'`{v}`' for v in fits_more)} end{'s' if len(fits_more) == 1 else ''} with a "
                "lower train loss and a lower test accuracy than `torch_correct`: without dropout and with "
                "frozen normalisation statistics the network fits the training set further and "
                "generalises less."
            )
        out.append(text)

    parts = []
    for group, base in ((correct, "torch_correct"), (buggy, "torch_seed_bug")):
        if base not in summary:
            continue
        for v in group:
            if v == base:
                continue
            d = mean_ci(np.subtract(summary[v]["final_acc_per_seed"], summary[base]["final_acc_per_seed"]))
            if d["mean"] is not None:
                parts.append(f"`{v}` − `{base}` {100 * d['mean']:+.2f} {_ci_text(d['ci'], signed=True)}")
    if parts:
        out.append(
            "**Frameworks.** The same mode handling should give the same result in every framework. "
            "Last-epoch paired differences, points [95% CI]: " + "; ".join(parts) + ". Every variant "
            "of a seed starts from the same converted weights and sees the same batches; dropout masks "
            "come from each framework's own generator, and `torch_seed_bug` keeps the unbiased batch "
            "variance in its running statistics where Flax keeps the biased one, which matters once "
            "training runs on running statistics. So these pairs agree up to seed noise, not exactly."
        )

    failed = []
    for v, s in summary.items():
        for seed in s["diverged_seeds"]:
            failed.append(
                f"`{v}` seed {seed} diverged (non-finite train loss; stopped, its test accuracy "
                "carried forward)"
            )
        for seed in s["collapsed_seeds"]:
            rec = results["variants"][v]["seeds"][
                [x["seed"] for x in results["variants"][v]["seeds"]].index(seed)
            ]
            last = rec["epochs"][-1]
            failed.append(
                f"`{v}` seed {seed} collapsed: last-epoch test accuracy {_pct(last['test_acc'], 1)}%, "
                f"train loss {last['train_loss']:.2f} (ln 10 = 2.30 is a constant prediction), "
                "with every loss finite"
            )
    if failed:
        ok = [v for v, s in summary.items() if not s["diverged_seeds"] and not s["collapsed_seeds"]]
        out.append(
            "**Failed runs.** "
            + "; ".join(failed)
            + "."
            + (f" No failed run in {', '.join(f'`{v}`' for v in ok)}." if ok else "")
            + (
                " A failed run is part of the bug's damage: the means and intervals above include it."
                if all(
                    not summary[v]["correct"]
                    for v in summary
                    if summary[v]["diverged_seeds"] or summary[v]["collapsed_seeds"]
                )
                else " The means and intervals above include the failed runs."
            )
        )
    return out


def external_check(results: dict, summary: dict[str, dict]) -> str:
    """How the correct CNN compares with the MNIST-1D authors' CNN (mnist1d only)."""
    cfg = results["config"]
    if cfg["dataset"] != "mnist1d":
        return (
            "The external reference (the MNIST-1D authors' CNN, about 94%) is for MNIST-1D; this "
            f"study ran on `{cfg['dataset']}`, so there is no published number to compare with here."
        )
    ref = summary.get("torch_correct") or next((s for s in summary.values() if s["correct"]), None)
    params = results["model"]["params"]
    text = (
        "The MNIST-1D authors report " + MNIST1D_PAPER_CNN_ACC + " test accuracy for their CNN "
        '(README of github.com/greydanus/mnist1d, table "Comparing MNIST and MNIST-1D"). '
    )
    if ref is not None and ref["final_acc"]["mean"] is not None:
        text += (
            f"Our correct CNN reached {_pct(ref['final_acc']['mean'])}% after {cfg['epochs']} epochs "
            f"(mean of {ref['final_acc']['n']} seeds). "
        )
    text += (
        f"The architectures differ: theirs (`ConvBase` in the repository's notebooks/models.py) is three "
        f"stride-2 Conv1d layers of 25 channels with ReLU and one linear layer, no BatchNorm, no dropout, "
        f"about {MNIST1D_PAPER_CNN_PARAMS / 1000:.1f}k parameters; ours has two convolutions with "
        f"BatchNorm and max-pooling, a {results['config']['model_config'].get('hidden', 128)}-unit "
        f"dense layer with BatchNorm, dropout, and {params / 1000:.1f}k parameters, trained with SGD + "
        f"momentum. A few points above theirs is what a larger normalised model should give; it is "
        f"a sanity check of the data and the training, not a like-for-like comparison."
    )
    return text


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


def render_report(results: dict, summary: dict[str, dict]) -> str:
    """``report.md``: configuration, environment, table, plot and a plain-language reading."""
    cfg = results["config"]
    m = results["model"]
    paths = sorted({(s["framework"], s["path"]) for s in summary.values()})
    lines = [
        "# The train()/eval() misplacement study",
        "",
        "Each variant trains the same CNN from the same converted initial weights with the same batch "
        "order per seed; only where and how the BatchNorm/Dropout mode is set differs. See "
        "docs/STUDY.md for the variants and how to read this file.",
        "",
        "## Configuration",
        "",
        f"- dataset **{cfg['dataset']}** ({m['train_examples']} train / {m['test_examples']} test), model "
        f"`{m['name']}` ({m['params']:,} parameters){', config ' + json.dumps(cfg['model_config']) if cfg['model_config'] else ''}",
        f"- {cfg['seeds']} seeds ({', '.join(map(str, cfg['seed_list']))}), {cfg['epochs']} epochs, "
        f"SGD lr {cfg['lr']} momentum {cfg['momentum']}, batch size {cfg['batch_size']} "
        f"({m['steps_per_epoch']} steps/epoch, last partial batch dropped)",
        "- execution: "
        + "; ".join(
            f"{fw}: {results['variants'][next(v for v, s in summary.items() if s['path'] == p)]['path_description']}"
            for fw, p in paths
        ),
        f"- Linen path: **{results['environment']['linen_path']}** "
        + (
            LINEN_PATH_REASON.get(results["environment"]["linen_path"], "")
            if cfg["linen_path"] == "auto"
            else "(chosen with --linen-path)"
        ),
        f"- total wall time {results['total_wall_time_s']:.1f} s; run {results['created_utc']}",
        "",
        "## Environment",
        "",
        *_env_lines(results),
        "",
        "## Results",
        "",
        "Test accuracy at the last epoch over seeds: mean ± sample std, and the 95% CI of the mean "
        "(Student t; shown clipped to [0, 100]). Δ: paired per-seed difference to `torch_correct` in percentage points. Best epoch: "
        "the epoch (1-based) with the highest mean test accuracy. Audit: measured share of BN/Dropout "
        "calls in training steps that ran in training mode, epoch 1 / epochs 2+. Wall time includes "
        "compilation (the first variant of each framework pays it).",
        "",
        markdown_table(summary),
        "",
        "![Test accuracy and train loss per epoch](curves.png)",
        "",
        "*curves.png: left, test accuracy per epoch, mean over all seeds with a band of ±1 sample standard "
        "deviation across seeds; middle, the second half zoomed, over the seeds that did not fail; right, the "
        "median train loss. Solid lines: correct mode handling; dashed: the seed's bug. Colour: framework.*",
        "",
        "## Reading",
        "",
    ]
    for p in reading(results, summary):
        lines += [p, ""]
    lines += ["## External check", "", external_check(results, summary), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- output


def to_json(results: dict) -> str:
    """``results`` as JSON text; non-finite floats become ``null`` (strict JSON, no NaN literals)."""
    return json.dumps(json_safe(results), indent=1, allow_nan=False) + "\n"


def write_outputs(results: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.json`` (with the summary), ``curves.png`` and ``report.md`` into ``out_dir``,
    each atomically; return their paths. ``results.json`` is written first."""
    out = ensure_writable_dir(out_dir)
    summary = summarize(results)
    paths = {"results": out / "results.json", "curves": out / "curves.png", "report": out / "report.md"}
    atomic_write_text(paths["results"], to_json(results | {"summary": summary}))
    plot_curves(results, summary, paths["curves"])
    atomic_write_text(paths["report"], render_report(results, summary))
    return paths
