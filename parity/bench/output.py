"""The report: summaries and ratios, the Markdown tables, and the files written (JSON, chart).

Output paths are checked before any work starts (:func:`check_output_paths`); files are
written atomically (:mod:`parity.io`).
"""

from __future__ import annotations

import os
import platform
from typing import Any

from parity.bench.plot import fmt_rate
from parity.bench.spec import GPU_TARGETS, BenchError
from parity.device import cpu_kernels
from parity.registry import FRAMEWORKS

#: chart formats ``--plot`` accepts (matplotlib writes each from the file's extension)
PLOT_FORMATS = (".png", ".svg", ".pdf")
#: ``--json`` must name a ``.json`` file
JSON_FORMATS = (".json",)


def check_output_paths(json_path: str | None, plot_path: str | None) -> None:
    """Refuse, before any work, an output path that is a directory, has an extension the writer
    does not know, or lies in a directory that cannot be written (:class:`BenchError`)."""
    from parity.io import ensure_writable_dir

    for flag, path, formats in (("--json", json_path, JSON_FORMATS), ("--plot", plot_path, PLOT_FORMATS)):
        if path is None:
            continue
        if not path or os.path.isdir(path) or path.endswith(os.sep):
            raise BenchError(f"{flag} {path!r} is a directory or empty; give a file name")
        ext = os.path.splitext(path)[1].lower()
        if ext not in formats:
            raise BenchError(
                f"{flag} {path!r}: unknown extension {ext or '(none)'!r}; use {', '.join(formats)}"
            )
        try:
            ensure_writable_dir(os.path.dirname(os.path.abspath(path)))
        except OSError as e:
            raise BenchError(f"{flag}: {e}") from e


def machine(runtime: Any) -> dict:
    """The machine the run used: CPU model, torch's CPU capability (the vector ISA its float32
    kernels use), cores, platform, Python, GPU name (cuda only)."""
    return {
        **cpu_kernels(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": runtime.settings.get("torch_device_name") if runtime.device == "cuda" else None,
    }


def mark_fastest(results: list[dict]) -> None:
    """Set ``fastest`` on the best single-model style per framework, model and batch size
    (the vmap style counts several models per step and is not a candidate)."""
    best: dict[tuple, dict] = {}
    for r in results:
        if r["status"] != "ok" or r["unit"] != "steps/s":
            continue
        key = (r["model"], r["batch_size"], r["framework"])
        if key not in best or r["rate"]["median"] > best[key]["rate"]["median"]:
            best[key] = r
    for r in best.values():
        r["fastest"] = True


def _best(rows: list[dict], framework: str) -> dict | None:
    ok = [r for r in rows if r["framework"] == framework and r["fastest"]]
    return ok[0] if ok else None


def summarize(results: list[dict]) -> list[dict]:
    """Per model and batch size: the best style per framework and the ratios
    ``torch_best / linen_best``, ``vmap / linen_scan`` and ``vmap / linen_best``."""
    out = []
    keys = list(dict.fromkeys((r["model"], r["batch_size"]) for r in results))
    for model, batch in keys:
        rows = [r for r in results if (r["model"], r["batch_size"]) == (model, batch)]
        entry: dict[str, Any] = {"model": model, "batch_size": batch}
        for fw in FRAMEWORKS:
            b = _best(rows, fw)
            entry[f"{fw}_best"] = {"style": b["style"], "rate": b["rate"]["median"]} if b else None
        by_style = {r["style"]: r for r in rows if r["status"] == "ok"}
        rate = lambda s: by_style[s]["rate"]["median"] if s in by_style else None
        tb, lb = entry["torch_best"], entry["linen_best"]
        entry["torch_over_linen"] = tb["rate"] / lb["rate"] if tb and lb else None
        vm, sc = rate("linen_vmap_scan"), rate("linen_scan")
        entry["vmap_over_scan"] = vm / sc if vm and sc else None
        entry["vmap_over_linen_best"] = vm / lb["rate"] if vm and lb else None
        out.append(entry)
    return out


def check_targets(report: dict) -> list[dict]:
    """The issue's GPU targets (digits, batch 128; the largest batch for % of peak) against
    this run: ``[{"target", "value", "threshold", "met"}]`` (``value`` None when not measured)."""
    summ = {(s["model"], s["batch_size"]): s for s in report["summary"]}
    d128 = summ.get(("digits", 128), {})
    vmap = [
        r
        for r in report["results"]
        if (r["model"], r["batch_size"], r["style"], r["status"]) == ("digits", 128, "linen_vmap_scan", "ok")
    ]
    big = max((r["batch_size"] for r in report["results"]), default=None)
    pct = [
        r["pct_peak"]
        for r in report["results"]
        if r["batch_size"] == big and r["status"] == "ok" and r.get("fastest")
    ]
    values = {
        "torch_best": (d128.get("torch_best") or {}).get("rate"),
        "linen_best": (d128.get("linen_best") or {}).get("rate"),
        "linen_vmap_scan": vmap[0]["rate"]["median"] if vmap else None,
        "large_batch_pct_peak": max(pct) if pct else None,
    }
    return [
        {
            "target": k,
            "value": values[k],
            "threshold": t,
            "met": None if values[k] is None else bool(values[k] >= t),
        }
        for k, t in GPU_TARGETS.items()
    ]


def _header(report: dict) -> list[str]:
    v, m = report["versions"], report["machine"]
    isa = m.get("torch_cpu_capability", "not recorded")
    where = m["gpu"] or f"{m['cpu']}, torch CPU capability {isa}, {m['cores']} cores"
    load = report["load_average"]
    return [
        f"parity bench: device {report['device']} ({where}), precision {report['precision']}, "
        f"{report['date']}",
        f"versions: torch {v['torch']}, jax {v['jax']}, flax {v['flax']}, optax {v['optax']}, "
        f"numpy {v['numpy']}; torch threads {report['config']['torch_threads']}; load average "
        f"(1, 5, 15 min) before {', '.join(f'{x:.2f}' for x in load['before'])}, after "
        f"{', '.join(f'{x:.2f}' for x in load['after'])}",
    ]


def _peak_table(peak: dict) -> list[str]:
    """The peak measurements (median, min-max of the samples) and the theoretical bound."""
    n, first = peak["n"], peak["measurements"][0]
    lines = [
        "",
        f"float32 matmul peak ({n}x{n}; median of {first['torch']['samples']} samples, each a "
        f"loop of matmuls; jax matmul precision {first['jax_matmul_precision']}):",
        "",
        "| measured | torch TFLOP/s (min-max) | jax TFLOP/s (min-max) | peak TFLOP/s | above bound |",
        "|---|---:|---:|---:|---|",
    ]
    span = lambda r: f"{r['tflops']:.3g} ({r['min']:.3g}-{r['max']:.3g})"
    for p in peak["measurements"]:
        flag = "-" if p["above_bound"] is None else ("**YES**" if p["above_bound"] else "no")
        lines.append(f"| {p['label']} | {span(p['torch'])} | {span(p['jax'])} | {p['tflops']:.3g} | {flag} |")
    bound = peak["theoretical"]
    if bound is None:
        lines.append("| theoretical bound | | | unknown | |")
    else:
        lines.append(f"| theoretical bound: {bound['formula']} | | | {bound['tflops']:.3g} | |")
    if peak["above_bound"]:
        lines += ["", "WARNING: the measured peak is above the theoretical bound: the clock runs above "
                  "the reported MHz (boost) or the measurement is wrong; treat % of peak with care."]  # fmt: skip
    return lines


def _gate_text(r: dict) -> str:
    if r["style"] == "torch_eager":
        text = "reference"
    else:
        g = r["gate"]
        at = "" if g.get("batch_size", r["batch_size"]) == r["batch_size"] else f" at batch {g['batch_size']}"
        text = f"ok ({g['max_rel_err']:.1e}{at})"
    probe = r["gate"].get("dropout")
    return text + ("" if probe is None else f"; dropout masks change ({probe['rel_spread']:.1e})")


def _results_table(report: dict) -> list[str]:
    lines = [
        "",
        "| model | batch | style | rate (median) | min | max | unit | compile s | TFLOP/s | % peak | gate |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        head = f"| {r['model']} | {r['batch_size']} | {r['style']}{' *' if r['fastest'] else ''} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status'].upper()} | | | | | | | {r['reason']} |")
            continue
        rt = r["rate"]
        lines.append(
            f"{head} {fmt_rate(rt['median'])} | {fmt_rate(rt['min'])} | {fmt_rate(rt['max'])} "
            f"| {r['unit']} | {r['compile_s']:.2f} | {r['tflops']:.3g} | {r['pct_peak']:.1f} | {_gate_text(r)} |"
        )
    lines += [
        "",
        "`*` fastest single-model style per framework; vmap rates are model-steps/s "
        f"({report['config']['seeds']} models per step); % peak against the peak measured "
        "before and after that model (mean of the two).",
    ]
    over = [
        f"{r['model']} b{r['batch_size']} {r['style']}"
        for r in report["results"]
        if r.get("pct_peak", 0) > 100
    ]
    if over:
        lines += ["", f"WARNING: above 100 % of the measured peak ({', '.join(over)}): the peak "
                  "measurement was disturbed (other load on the machine?); these % are not meaningful."]  # fmt: skip
    return lines


def _summary_table(report: dict) -> list[str]:
    lines = [
        "",
        "| model | batch | torch best | Linen best | NNX best | torch/Linen | vmap/scan | vmap/Linen best |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    ratio = lambda x: "-" if x is None else f"{x:.2f}"
    best = lambda b: "-" if b is None else f"{b['style']} {fmt_rate(b['rate'])}"
    for s in report["summary"]:
        lines.append(
            f"| {s['model']} | {s['batch_size']} | {best(s['torch_best'])} | {best(s['linen_best'])} "
            f"| {best(s['nnx_best'])} | {ratio(s['torch_over_linen'])} | {ratio(s['vmap_over_scan'])} "
            f"| {ratio(s['vmap_over_linen_best'])} |"
        )
    return lines


def _targets_table(report: dict) -> list[str]:
    if "targets" not in report:
        return []
    lines = [
        "",
        "| target (digits, batch 128; % peak at the largest batch) | value | threshold | met |",
        "|---|---:|---:|---|",
    ]
    for t in report["targets"]:
        val = "-" if t["value"] is None else f"{t['value']:,.1f}"
        lines.append(f"| {t['target']} | {val} | {t['threshold']:,.0f} | {t['met']} |")
    return lines


def format_report(report: dict) -> str:
    """The report as Markdown: header, peak table (measurements and bound), results table
    (``*`` marks the fastest single-model style per framework), ratio table and, on cuda, the
    targets."""
    lines = _header(report) + _peak_table(report["peak"]) + _results_table(report)
    lines += _summary_table(report) + _targets_table(report)
    return "\n".join(lines + ["", f"wall time {report['wall_s']:.1f} s"])


def write_outputs(report: dict, json_path: str | None = None, plot_path: str | None = None) -> None:
    """Write the report as strict JSON (:func:`parity.io.json_safe`) and/or the chart
    (:func:`parity.bench.plot.plot_report`), each atomically."""
    from parity.io import atomic_write_json

    if json_path:
        atomic_write_json(json_path, report, indent=2)
    if plot_path:
        from parity.bench.plot import plot_report

        plot_report(report, plot_path)
