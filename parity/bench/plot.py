"""The bench chart: grouped bars (log scale) of median rates, one panel per model."""

from __future__ import annotations

import io
import math
import os

from parity.bench.spec import STYLES

COLORS = {
    "torch_eager": "#f4a261",
    "torch_compile": "#e76f51",
    "torch_cudagraph": "#9c2f1a",
    "linen_jit": "#8ecae6",
    "linen_scan": "#219ebc",
    "linen_vmap_scan": "#023047",
    "nnx_jit": "#95d5b2",
    "nnx_split": "#2d6a4f",
}


def fmt_rate(x: float | None) -> str:
    """A rate with 3 significant digits at most, thousands separated; ``-`` for None."""
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def _bar(ax, xpos: float, row: dict, width: float) -> None:
    """One style's bar (median, min-max whiskers, outlined when fastest) or its status label."""
    if row["status"] != "ok":
        ax.text(xpos, 0.03, row["status"], rotation=90, ha="center", va="bottom", fontsize=7,
                color="dimgray", transform=ax.get_xaxis_transform())  # fmt: skip
        return
    rt = row["rate"]
    ax.bar(xpos, rt["median"], width * 0.92, color=COLORS.get(row["style"], "gray"),
           yerr=[[rt["median"] - rt["min"]], [rt["max"] - rt["median"]]], capsize=2,
           edgecolor="black", linewidth=1.2 if row["fastest"] else 0.0)  # fmt: skip
    label = fmt_rate(rt["median"]) + (" *" if row["fastest"] else "")
    ax.text(xpos, rt["max"] * 1.12, label, ha="center", va="bottom", fontsize=7, rotation=90)


def _panel(ax, model: str, rows: list[dict], styles: list[str], ylim: tuple[float, float]) -> None:
    """``model``'s panel: a group of bars per batch size, one bar per style."""
    width = 0.8 / max(1, len(styles))
    batches = list(dict.fromkeys(r["batch_size"] for r in rows))
    for i, b in enumerate(batches):
        for j, style in enumerate(styles):
            row = next((r for r in rows if (r["style"], r["batch_size"]) == (style, b)), None)
            if row is not None:
                _bar(ax, i + (j - (len(styles) - 1) / 2) * width, row, width)
    ax.set_yscale("log")
    ax.set_ylim(*ylim)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_title(model, fontsize=10)
    ax.set_ylabel("steps/s (log)")
    ax.grid(axis="y", which="major", alpha=0.4)


def plot_report(report: dict, path: str) -> None:
    """Grouped bar chart (log scale) of median rates with min-max whiskers: one panel per model,
    one group of bars per batch size, one colour per style, the fastest per framework outlined
    and starred, skipped/failed styles labelled. Written atomically; the format follows
    ``path``'s extension (PNG, SVG, PDF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from parity.io import atomic_write_bytes

    results = report["results"]
    models = list(dict.fromkeys(r["model"] for r in results))
    styles = list(dict.fromkeys(r["style"] for r in results))
    n_batches = max(len({r["batch_size"] for r in results if r["model"] == m}) for m in models)
    size = (max(7.0, 1.5 + 0.55 * len(styles) * n_batches), 1.2 + 3.6 * len(models))
    fig, axes = plt.subplots(len(models), 1, squeeze=False, figsize=size)
    ok = [r for r in results if r["status"] == "ok"]
    ylim = (
        min((r["rate"]["min"] for r in ok), default=1.0) / 3,
        max((r["rate"]["max"] for r in ok), default=10.0) * 6,
    )
    for ax, model in zip(axes[:, 0], models):
        _panel(ax, model, [r for r in results if r["model"] == model], styles, ylim)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS.get(s, "gray")) for s in styles]
    labels = [s + (" (model-steps/s)" if STYLES[s].vmapped else "") for s in styles]
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(styles)), fontsize=8, frameon=False)
    m = report["machine"]
    fig.suptitle(
        f"parity bench, {report['device']} ({m['gpu'] or m['cpu']}), {report['precision']} float32, "
        f"{report['date']}, load average {report['load_average']['before'][0]:.1f} before, "
        f"{report['load_average']['after'][0]:.1f} after\nmedian of {report['config']['repeats']} "
        "repeats, whiskers min-max, * fastest per framework",
        fontsize=9,
    )
    legend_in = 0.15 + 0.2 * math.ceil(len(styles) / 4)  # inches kept free for the legend
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path)[1].lstrip(".").lower() or "png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
