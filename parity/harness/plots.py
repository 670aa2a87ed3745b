"""``parity check --plot``: per-layer divergence bars and the trajectory error envelope.

One panel per localisation report kind (eval layers, train layers, parameter gradients): for
each layer (or parameter) a group of bars, one per model / framework / precision, giving the
relative L2 difference on a log scale, with the tolerance as a dashed line; failing tensors
are hatched. Then the trajectory panels: the running maximum of the parameter difference and
of the optimizer-state difference per step (solid), torch float32's own distance from its
float64 copy (dotted), and the tolerance.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from parity.io import atomic_write_bytes

_FLOOR = 1e-10  # exact zeros are drawn at this height on the log scale
_TITLES = {
    "layers_eval": "layer outputs, eval mode",
    "layers_train": "layer outputs, train mode (shared dropout masks)",
    "gradients_train": "parameter gradients (backward order), train mode",
}


def _bars(ax, reports: list[tuple[str, Any]], title: str) -> None:
    names: list[str] = []
    for _, rep in reports:
        for r in rep.rows:
            if r.kind in ("output", "grad") and r.name not in names:
                names.append(r.name)
    width = 0.8 / max(len(reports), 1)
    for i, (label, rep) in enumerate(reports):
        by_name = {r.name: r for r in rep.rows if r.kind in ("output", "grad")}
        xs, vals, hatches = [], [], []
        for j, n in enumerate(names):
            if n in by_name:
                r = by_name[n]
                xs.append(j + (i - (len(reports) - 1) / 2) * width)
                vals.append(max(r.rel_l2, _FLOOR) if np.isfinite(r.rel_l2) else 1.0)
                hatches.append(not r.passed)
        bars = ax.bar(xs, vals, width=width, color=f"C{i % 10}", label=label)
        for b, bad in zip(bars, hatches):
            if bad:
                b.set_hatch("//")
                b.set_edgecolor("k")
    tol = reports[0][1].tol
    ax.axhline(tol, color="k", ls="--", lw=1, label=f"tolerance {tol:.0e}")
    ax.set_yscale("log")
    ax.set_ylim(_FLOOR / 2, 1.5)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("relative L2 difference")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax.grid(axis="y", alpha=0.3)


def _envelope(ax, trajectories, field: str, f64_field: str, metric: str, title: str) -> None:
    for i, (label, rep) in enumerate(trajectories):
        steps = [r.step for r in rep.rows]
        ax.plot(
            steps,
            np.maximum.accumulate(np.maximum([getattr(r, field) for r in rep.rows], _FLOOR)),
            color=f"C{i % 10}",
            label=f"{label}: flax vs torch",
        )
        ref = [getattr(r, f64_field) for r in rep.rows]
        if all(v is not None for v in ref):
            ax.plot(
                steps,
                np.maximum.accumulate(np.maximum(ref, _FLOOR)),
                color=f"C{i % 10}",
                ls=":",
                label=f"{label}: torch32 vs torch64",
            )
    tol = trajectories[0][1].tol[metric]
    ax.axhline(tol, color="k", ls="--", lw=1, label=f"tolerance {tol:.0e}")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("running max, global rel L2")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)


def divergence_figure(
    layer_reports: Sequence[tuple[str, str, str, str, Any]],
    trajectories: Sequence[tuple[str, str, str, Any]],
    path: str,
) -> None:
    """Draw the figure and write it to ``path`` (PNG) atomically.

    ``layer_reports``: ``(model, framework, precision, kind, LocalizationReport)`` with ``kind`` one of
    ``layers_eval``, ``layers_train``, ``gradients_train``; ``trajectories``: ``(model,
    framework, precision, TrajectoryReport)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precisions = {p for _, _, p, *_ in [*layer_reports, *trajectories]}

    def label(model, fw, precision):
        return f"{model}/{fw}" + (f" ({precision})" if len(precisions) > 1 else "")

    kinds: dict[str, list] = {}
    for model, fw, precision, kind, rep in layer_reports:
        kinds.setdefault(kind, []).append((label(model, fw, precision), rep))
    panels = [("bars", kind, reps) for kind, reps in kinds.items()]
    if trajectories:
        trajs = [(label(m, fw, p), rep) for m, fw, p, rep in trajectories]
        opt = trajectories[0][3].optimizer.get("name", "")
        panels += [
            ("env", ("param_rel", "f64_param_rel", "param", f"trajectory ({opt}): parameters"), trajs),
            (
                "env",
                ("opt_rel", "f64_opt_rel", "optimizer_state", f"trajectory ({opt}): optimizer state"),
                trajs,
            ),
        ]
    if not panels:
        raise ValueError("nothing to plot: run with --localize and/or --trajectory STEPS")
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.0 * rows), squeeze=False)
    flat = list(axes.ravel())
    for ax, (kind, what, data) in zip(flat, panels):
        if kind == "bars":
            _bars(ax, data, _TITLES.get(what, what))
        else:
            _envelope(ax, data, *what)
    for ax in flat[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
