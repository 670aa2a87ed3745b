"""Rendering a study: the final table (terminal and markdown), ``report.md`` and ``results.json``.

The numbers come from :mod:`parity.study.stats`, the sentences from :mod:`parity.study.reading`;
``curves.png`` is drawn by :mod:`parity.study.plots`, the files written by
:mod:`parity.study.outputs`.
"""

from __future__ import annotations

import json
from typing import Any

from parity.io import json_safe
from parity.study.reading import ci_text, external_check, pct, reading

#: why ``--linen-path auto`` chose a path (the measurements behind it are in docs/STUDY.md, not
#: repeated here: they are one machine's, and this text goes into every user's report)
LINEN_PATH_REASON = {
    "loop": "(auto on CPU: a Python loop of jitted steps is faster there than scan + vmap over the seeds; docs/STUDY.md)",
    "vmap": "(auto on GPU: one scan epoch vmap-ed over all seeds is one launch instead of one per step)",
}


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
        acc = pct(fa["mean"]) + ("" if fa["std"] is None else f" ± {100 * fa['std']:.2f}")
        d = s.get("diff_vs_torch_correct")
        diff = (
            "—"
            if d is None
            else (
                f"{100 * d['mean']:+.2f} {ci_text(d['ci'], signed=True)}" if d["mean"] is not None else "n/a"
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
        best = "n/a" if s["best_epoch"] is None else f"{s['best_epoch']} ({pct(s['best_epoch_acc'])})"
        e2 = "n/a" if s["epoch2_acc"] is None else pct(s["epoch2_acc"]["mean"])
        ci = None if fa["ci"] is None else (max(0.0, fa["ci"][0]), min(1.0, fa["ci"][1]))
        rows.append([v, acc, ci_text(ci), best, diff, e2, audit, _failed_text(s), f"{s['wall_time_s']:.1f}"])
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


# --------------------------------------------------------------------------------- report.md


def _env_lines(results: dict) -> list[str]:
    env = results["environment"]
    v = env["versions"]
    ps = env["precision_settings"]
    return [
        f"- device: **{env['device']}** ({ps.get('torch_device_name')}, jax backend {ps.get('jax_backend')}); "
        f"{env['cpu_count']} CPUs, torch threads {env['torch_threads']}",
        f"- CPU: {env.get('cpu', 'not recorded')}; torch CPU capability (the vector ISA its float32 kernels "
        f"use) {env.get('torch_cpu_capability', 'not recorded')}: float32 results can differ between ISAs",
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
