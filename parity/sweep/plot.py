"""``sweep.png``: per cell, the last-epoch and epoch-2 effects with 95% CIs, and collapse rates."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from parity.sweep.grid import cell_id


def _errorbars(ax, cells: list[dict], key: str, variants: list[str]) -> None:
    """One marker per (cell, seed-bug variant): the mean effect in points, its 95% CI as a bar."""
    width = 0.8 / max(len(variants), 1)
    for j, v in enumerate(variants):
        xs, ys, lo, hi = [], [], [], []
        for i, cell in enumerate(cells):
            stat = cell["variants"].get(v, {}).get(key)
            if not stat:
                continue
            mean = 100 * stat["mean"]
            low, high = (100 * np.asarray(stat["ci"])) if stat["ci"] else (mean, mean)
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(mean)
            lo.append(mean - low)
            hi.append(high - mean)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=3, label=v)
    ax.axhline(0, color="grey", lw=0.8)


def _collapse_bars(ax, cells: list[dict], variants: list[str]) -> None:
    """Collapse rate per (cell, variant) with its exact binomial 95% CI."""
    width = 0.8 / max(len(variants), 1)
    for j, v in enumerate(variants):
        xs, rates, lo, hi = [], [], [], []
        for i, cell in enumerate(cells):
            c = cell["variants"].get(v, {}).get("collapse")
            if not c or not c["n"]:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            rates.append(100 * c["rate"])
            lo.append(100 * (c["rate"] - c["ci"][0]))
            hi.append(100 * (c["ci"][1] - c["rate"]))
        ax.bar(xs, rates, width=width, yerr=[lo, hi], capsize=2, label=v, alpha=0.8)


def plot_sweep(document: dict, path: str | Path) -> Path:
    """Write the three-panel figure of a ``sweep.json`` document to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = document["cells"]
    variants = list(dict.fromkeys(v for c in cells for v in c["variants"]))
    buggy = [v for v in variants if not any(c["variants"].get(v, {}).get("correct") for c in cells)]
    names = [cell_id(c["model"], c["eval_every"]) for c in cells]
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 1.1 * len(cells) + 2), 10), sharex=True)
    _errorbars(axes[0], cells, "effect_last", buggy)
    axes[0].set_ylabel("last-epoch effect\n(points vs torch_correct)")
    _errorbars(axes[1], cells, "effect_epoch2", buggy)
    axes[1].set_ylabel("epoch-2 effect\n(points vs torch_correct)")
    _collapse_bars(axes[2], cells, variants)
    axes[2].set_ylabel("collapsed runs (%)\nexact 95% CI")
    axes[2].set_ylim(0, 100)
    axes[2].set_xticks(range(len(cells)), names, rotation=30, ha="right")
    for ax in axes:
        ax.legend(fontsize=7, loc="best")
        ax.grid(axis="y", alpha=0.3)
    c = document["config"]
    axes[0].set_title(f"parity sweep: {c['seeds']} seeds x {c['epochs']} epochs per cell, means with 95% CIs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
