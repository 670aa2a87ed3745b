"""``curves.png`` of a misplacement study: the study package's one plotting module.

Three panels, one line per variant (colour: framework; solid: correct mode handling; dashed:
the seed's bug):

1. test accuracy per epoch, mean over all seeds, band ±1 sample std (clipped to 0-100%);
2. a zoom on the second half, mean ±1 std over the seeds that did not fail (diverged or
   collapsed seeds are left out there, and the title says how many);
3. the median over seeds of the train loss per epoch (log scale).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from parity.io import atomic_open
from parity.study.stats import epoch_arrays, nanmean, nanstd

#: line colour per framework
COLOURS = {"torch": "#1f77b4", "linen": "#d62728", "nnx": "#2ca02c"}


def _style(s: dict) -> dict:
    """Matplotlib line keywords of a variant's summary ``s`` (colour, dash, marker)."""
    return dict(
        color=COLOURS.get(s["framework"], "k"),
        linestyle="-" if s["correct"] else "--",
        marker="o" if s["correct"] else "s",
        markersize=3,
        linewidth=1.6,
    )


def _band(ax: Any, epochs: np.ndarray, mean: np.ndarray, std: np.ndarray, style: dict, alpha: float) -> None:
    """A line at ``mean`` with a ±``std`` band, clipped to 0-100 (percent)."""
    ax.plot(epochs, mean, **style)
    low, high = np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100)
    ax.fill_between(epochs, low, high, color=style["color"], alpha=alpha, linewidth=0)


def _zoom_line(ax: Any, epochs: np.ndarray, acc: np.ndarray, style: dict, alpha: float) -> tuple | None:
    """Panel 2 for one variant: ``acc`` (seeds kept, epochs) from the zoom's first epoch on;
    returns the ``(low, high)`` the band spans, ``None`` if nothing finite is drawn."""
    mean, std = nanmean(acc), np.nan_to_num(nanstd(acc))
    _band(ax, epochs, mean, std, style, alpha)
    if not np.isfinite(mean).any():
        return None
    return float(np.nanmin(mean - std)), float(np.nanmax(mean + std))


def _draw_variant(axes: Any, results: dict, v: str, s: dict, zoom: slice) -> tuple[tuple | None, int]:
    """Draw variant ``v`` (summary ``s``) on the three panels; returns the zoom band's span and
    how many of its seeds the zoom leaves out."""
    E = results["config"]["epochs"]
    epochs = np.arange(1, E + 1)
    arrays = epoch_arrays(results["variants"][v], E)
    acc, loss = 100 * arrays["test_acc"], arrays["train_loss"]
    style, alpha = _style(s), 0.10 if s["correct"] else 0.07
    label = f"{v} ({'correct' if s['correct'] else 'seed bug'})"
    _band(axes[0], epochs, nanmean(acc), np.nan_to_num(nanstd(acc)), style | {"label": label}, alpha)

    failed = set(s["diverged_seeds"]) | set(s["collapsed_seeds"])
    keep = [i for i, x in enumerate(results["variants"][v]["seeds"]) if x["seed"] not in failed]
    span = _zoom_line(axes[1], epochs[zoom], acc[keep][:, zoom], style, alpha) if keep else None

    with warnings.catch_warnings():  # all-nan epochs (every seed diverged) stay nan
        warnings.simplefilter("ignore", RuntimeWarning)
        median_loss = np.nanmedian(loss, axis=0)
    axes[2].plot(epochs, np.where(median_loss > 0, median_loss, np.nan), **style)
    return span, len(failed)


def _decorate(axes: Any, fig: Any, results: dict, summary: dict, spans: list, left_out: int) -> None:
    """Titles, axis labels and limits, grid, legend and the figure's caption."""
    from matplotlib.ticker import MaxNLocator

    cfg = results["config"]
    E, zoom_from = cfg["epochs"], max(1, cfg["epochs"] // 2)
    n = max(s["seeds"] for s in summary.values())
    axes[0].set_title(f"Test accuracy ({cfg.get('model', cfg['dataset'])}): mean of {n} seeds, band ±1 std")
    axes[0].set_ylim(top=100.5)
    axes[1].set_title(
        f"Zoom, epochs {zoom_from}–{E}" + (f" (failed runs left out: {left_out})" if left_out else "")
    )
    if spans:
        low, high = min(lo for lo, _ in spans), max(hi for _, hi in spans)
        axes[1].set_ylim(max(0.0, low - 0.5), min(100.5, high + 0.5))
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


def plot_curves(results: dict, summary: dict[str, dict], path: str | os.PathLike) -> None:
    """Write ``curves.png`` (see the module doc) to ``path``, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    E = results["config"]["epochs"]
    zoom = slice(max(1, E // 2) - 1, None)
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.4), constrained_layout=True)
    try:
        spans, left_out = [], 0
        for v, s in summary.items():
            span, failed = _draw_variant(axes, results, v, s, zoom)
            spans += [span] if span is not None else []
            left_out += failed
        _decorate(axes, fig, results, summary, spans, left_out)
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
