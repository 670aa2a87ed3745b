"""Timing: one style (:func:`measure_style`), and every model, batch size and style of a
:class:`~parity.bench.spec.BenchConfig` with the peak measured around them (:func:`benchmark`)."""

from __future__ import annotations

import datetime
import os
import statistics
import time
from dataclasses import asdict
from typing import Any

import numpy as np

from parity.bench.gate import check_gate, check_timed_run, gate_failure, probe_dropout, reference_losses
from parity.bench.output import check_targets, mark_fastest, summarize
from parity.bench.peak import cpu_bound, measure_peak, peak_summary
from parity.bench.spec import (
    GATE_RTOL,
    GATE_STEPS,
    INPUT_SHAPES,
    STYLES,
    BenchConfig,
    BenchError,
    Runner,
    default_steps,
    skip_reason,
)
from parity.bench.workload import Workload, make_runner, make_workload, model_dropout, train_flops_per_example
from parity.progress import Progress


def time_runner(runner: Runner, repeats: int, units: int, outputs: list | None = None) -> dict:
    """Warm up with one ``run()``, then time ``repeats`` runs; ``units`` steps (or model-steps)
    per run. Returns ``{"median", "min", "max", "runs", "compile_s", "seconds"}`` (rates in units
    per second). ``compile_s`` is the runner's ``prepare_s`` plus the first run's excess over the
    fastest timed run: the compilation (and first-call) cost the rates leave out. ``outputs``,
    when given, receives every run's losses (warm-up first), for :func:`check_timed_run`."""
    keep = outputs.append if outputs is not None else (lambda out: None)
    t0 = time.perf_counter()
    keep(runner.run())
    first = time.perf_counter() - t0
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = runner.run()
        seconds.append(time.perf_counter() - t0)
        keep(out)
    rates = [units / s for s in seconds]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "runs": rates,
        "seconds": seconds,
        "compile_s": runner.prepare_s + max(first - min(seconds), 0.0),
    }


def _gate(style: str, wl: Workload, reference: np.ndarray) -> dict:
    """The gate verdict of ``style`` (JSON-ready): :func:`check_gate`'s fields, the batch size
    and, when the model has dropout, :func:`probe_dropout`'s result under ``dropout``."""
    gate = asdict(check_gate(style, wl, reference))
    gate |= {"reference_style": "torch_eager", "batch_size": wl.batch_size, "dropout": None}
    if gate["passed"] and model_dropout(wl) > 0:
        gate["dropout"] = probe_dropout(style, wl)
    return gate


def _timed(style: str, wl: Workload, steps: int, repeats: int) -> tuple[dict, dict]:
    """Time ``style`` with the model's dropout, then check that run (:func:`check_timed_run`)."""
    runner = make_runner(style, wl, steps, dropout=None)
    before = runner.bn_stats()
    outputs: list = []
    units = steps * (wl.seeds if STYLES[style].vmapped else 1)
    timing = time_runner(runner, repeats, units, outputs)
    return timing, check_timed_run(outputs, before, runner)


def _row(style: str, wl: Workload, steps: int, repeats: int) -> dict[str, Any]:
    s = STYLES[style]
    return {
        "model": wl.model, "batch_size": wl.batch_size, "style": style, "framework": s.framework,
        "unit": s.unit, "steps": steps, "repeats": repeats, "status": "ok", "reason": None,
        "gate": None, "checks": None, "rate": None, "compile_s": None, "fastest": False,
    }  # fmt: skip


def measure_style(
    style: str,
    wl: Workload,
    reference: np.ndarray,
    repeats: int,
    precision: str = "strict",
    quick: bool = False,
    steps: int | None = None,
    explicit: bool = False,
    gate: dict | None = None,
) -> dict:
    """Gate, time and check one style on ``wl`` (``steps`` per repeat, default ``wl.steps``); a
    JSON-ready row.

    ``status`` is ``ok``, ``failed`` (the gate, then not timed; or the timed run's own checks,
    ``checks``), ``skipped`` (``reason`` says why) or ``error`` (an exception; ``reason`` has
    it). The gate runs under ``strict`` precision, the timing under ``precision``. ``gate``: an
    earlier verdict of this style and model (a row's ``gate``) to reuse instead of gating again.
    """
    from parity.device import configure

    steps = steps or wl.steps
    if steps > wl.steps:
        raise BenchError(f"{steps} steps requested but the workload has batches for {wl.steps}")
    row = _row(style, wl, steps, repeats)
    reason = skip_reason(style, wl.device, quick, wl.batch_size, explicit)
    if reason:
        return row | {"status": "skipped", "reason": reason}
    try:
        if gate is None:
            configure(wl.device, "strict")
            gate = _gate(style, wl, reference)
        row["gate"] = gate
        failure = gate_failure(gate)
        if failure:
            return row | {"status": "failed", "reason": failure}
        configure(wl.device, precision)
        timing, row["checks"] = _timed(style, wl, steps, repeats)
    except Exception as e:
        return row | {"status": "error", "reason": f"{type(e).__name__}: {e}"}
    if row["checks"]["problems"]:
        return row | {"status": "failed", "reason": "; ".join(row["checks"]["problems"])}
    row["compile_s"] = timing.pop("compile_s")
    row["rate"] = timing
    return row


def _measure_model(cfg: BenchConfig, device: str, model: str, gates: dict, bar: Progress) -> list[dict]:
    """Every batch size and style of ``model``: rows of :func:`measure_style`. ``gates`` holds
    the verdicts to reuse under ``--quick`` (one gate per model and style)."""
    from parity.device import configure
    from torch_impl.models import build_model

    flops_ex = train_flops_per_example(build_model(model, **cfg.config), INPUT_SHAPES[model])
    rows = []
    for batch in cfg.batch_sizes:
        steps = {s: cfg.steps or default_steps(device, batch, cfg.quick, s) for s in cfg.styles}
        wl = make_workload(model, batch, max(*steps.values(), GATE_STEPS), device, cfg.seeds, cfg.config)
        configure(device, "strict")
        bar.describe(f"{model} b{batch}: reference")
        ref = reference_losses(wl)
        for style in cfg.styles:
            bar.describe(f"{model} b{batch}: {style}")
            earlier = gates.get((model, style)) if cfg.quick else None
            row = measure_style(style, wl, ref, cfg.repeats, cfg.precision, cfg.quick, steps[style],
                                cfg.explicit_styles, earlier)  # fmt: skip
            if row["gate"] is not None:
                gates.setdefault((model, style), row["gate"])
            row["flops_per_step"] = flops_ex * batch
            rows.append(row)
            bar.advance()
    return rows


def _peak(cfg: BenchConfig, device: str, label: str, bound: dict | None, bar: Progress) -> dict:
    """One peak measurement under the timing precision (:func:`measure_peak`), flagged against
    ``bound``. ``--quick`` takes 5 samples of >= 0.1 s, a full run 7 of >= 0.25 s."""
    from parity.device import configure

    bar.describe(f"matmul peak ({label})")
    configure(device, cfg.precision)
    samples, sample_s = (5, 0.1) if cfg.quick else (7, 0.25)
    peak = measure_peak(device, cfg.peak_n, samples, cfg.peak_sample_s or sample_s, label)
    peak["above_bound"] = None if bound is None else bool(peak["tflops"] > bound["tflops"])
    return peak


def _attach_peak(rows: list[dict], around: list[dict]) -> None:
    """Rates as TFLOP/s and % of the peak measured around them (the mean of the measurements
    just before and just after the model's timings)."""
    peak = statistics.fmean(p["tflops"] for p in around)
    for row in rows:
        row["peak_tflops"] = peak
        if row["status"] == "ok":
            row["tflops"] = row["flops_per_step"] * row["rate"]["median"] / 1e12
            row["pct_peak"] = 100.0 * row["tflops"] / peak


def benchmark(cfg: BenchConfig, progress: Progress | None = None) -> dict:
    """Measure every (model, batch size, style) of ``cfg``; return the report (JSON-ready).

    The float32 matmul peak is measured before the first model and after each model, under
    the timing precision, and each model's "% of peak" divides by the peaks around it. Raises
    :class:`parity.device.DeviceError` for ``cuda`` without a GPU.
    """
    import torch

    from parity.device import configure

    total = len(cfg.models) * len(cfg.batch_sizes) * len(cfg.styles)
    bar = progress or Progress("units", total, enabled=False)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    device = configure(cfg.device, "strict").device
    timing_runtime = configure(device, cfg.precision)
    bound = cpu_bound() if device == "cpu" else None
    peaks = [_peak(cfg, device, f"before {cfg.models[0]}", bound, bar)]
    results: list[dict] = []
    gates: dict[tuple[str, str], dict] = {}
    for model in cfg.models:
        rows = _measure_model(cfg, device, model, gates, bar)
        peaks.append(_peak(cfg, device, f"after {model}", bound, bar))
        _attach_peak(rows, peaks[-2:])
        results += rows
    configure(device, cfg.precision)
    mark_fastest(results)
    report = _report(cfg, timing_runtime, results, peak_summary(peaks, bound), load_before)
    report["wall_s"] = time.perf_counter() - started
    return report


def _report(cfg: BenchConfig, runtime, results: list[dict], peak: dict, load_before: tuple) -> dict:
    """The JSON-ready report of a run (schema ``parity-bench/2``)."""
    import torch

    from parity.bench.output import machine
    from parity.device import library_versions

    report = {
        "schema": "parity-bench/2",
        "date": datetime.date.today().isoformat(),
        "device": runtime.device,
        "precision": cfg.precision,
        "settings": runtime.settings,
        "machine": machine(runtime),
        "versions": library_versions(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "config": {
            "models": list(cfg.models),
            "batch_sizes": list(cfg.batch_sizes),
            "styles": list(cfg.styles),
            "repeats": cfg.repeats,
            "steps": cfg.steps,
            "seeds": cfg.seeds,
            "quick": cfg.quick,
            "gate_steps": GATE_STEPS,
            "torch_threads": torch.get_num_threads(),
            "gate_rtol": GATE_RTOL,
            "model_config": cfg.config,
        },  # fmt: skip
        "peak": peak,
        "styles": {name: STYLES[name].description for name in cfg.styles},
        "results": results,
        "summary": summarize(results),
    }
    if runtime.device == "cuda":
        report["targets"] = check_targets(report)
    return report
