"""The study driver: train every variant of a :class:`StudyConfig` over its seeds, in order.

Library use::

    from parity.study import StudyConfig, run_study, write_outputs
    results = run_study(StudyConfig(dataset="digits", seeds=3, epochs=10))
    write_outputs(results, "study-out")

The trainers are in :mod:`parity.study.runners`; ``--devices N`` in :mod:`parity.study.devices`.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from parity.progress import Progress
from parity.study.config import CPU_TORCH_THREADS, StudyConfig
from parity.study.partial import VariantStore
from parity.study.runners import (
    RUNNERS,
    EpochClock,
    StudyContext,
    build_context,
    configure_runtime,
    resolve_linen_path,
    variant_entry,
    variant_path,
)

#: ``on_variant(name, entry)``: called as each variant finishes (to keep it on disk)
OnVariant = Callable[[str, dict], None]


def _train_variant(variant: str, ctx: StudyContext, linen_path: str, steps_per_epoch: int) -> dict:
    """Train ``variant`` over every seed with its runner; its entry of ``results['variants']``."""
    c, clock = ctx.config, EpochClock(steps_per_epoch)

    def on_epoch(seed: int, rec: dict) -> None:
        clock.tick(rec["epoch"])
        ctx.progress.advance(c.epochs - rec["epoch"] if rec["diverged"] else 1)  # stopped: the rest

    path = variant_path(variant, linen_path)
    ctx.clock = clock
    t0, cpu0 = time.perf_counter(), time.process_time()
    runs = RUNNERS[path](variant, ctx, on_epoch)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return variant_entry(variant, path, wall, clock, runs, c.seed_list, cpu)


def _environment(runtime: Any, linen_path: str, torch_threads: int) -> dict:
    from importlib import metadata

    from parity.device import cpu_kernels, library_versions

    versions = library_versions()
    try:
        versions["mnist1d"] = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        versions["mnist1d"] = None
    return {
        "device": runtime.device,
        "precision": runtime.precision,
        "precision_settings": dict(runtime.settings),
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        **cpu_kernels(),
        "linen_path": linen_path,
        "torch_threads": torch_threads,
    }


def _train_variants(
    ctx: StudyContext, linen_path: str, progress: bool, steps_per_epoch: int, on_variant: OnVariant
) -> dict[str, dict]:
    """Run every variant of ``ctx.config`` in order under one progress bar; name -> result.
    ``on_variant(name, result)`` is called as each variant finishes."""
    config = ctx.config
    variants: dict[str, dict] = {}
    with Progress("epochs", len(config.variants) * config.seeds * config.epochs, enabled=progress) as bar:
        ctx.progress = bar
        for variant in config.variants:
            result = variants[variant] = _train_variant(variant, ctx, linen_path, steps_per_epoch)
            on_variant(variant, result)
            final = [s["epochs"][-1]["test_acc"] for s in result["seeds"]]
            diverged = sum(s["diverged"] for s in result["seeds"])
            steady = result["timing"]["steady_steps_per_s"]
            bar.log(
                f"{variant:<19} {result['wall_time_s']:6.1f} s"
                + ("" if steady is None else f"  {steady:6.0f} steps/s steady")
                + f"  last-epoch test acc {100 * float(np.mean(final)):.2f}%"
                + (f"  ({diverged} diverged)" if diverged else "")
            )
    return variants


def run_study(
    config: StudyConfig, progress: bool = True, runtime: Any = None, keep: str | Path | None = None
) -> dict:
    """Train every variant of ``config`` over its seeds and return the results (JSON-ready).

    ``runtime`` is a :class:`parity.device.Runtime` from :func:`configure_runtime`; if omitted
    it is configured here from ``config.device`` / ``config.precision`` (raising
    :class:`parity.device.DeviceError` for cuda without a GPU). ``progress`` shows the progress
    bar (:class:`parity.progress.Progress`) on stderr. ``keep``: an output directory in which
    each finished variant is kept (:mod:`parity.study.partial`) and from which the variants an
    interrupted run of the same study finished are taken instead of trained (listed in
    ``resumed_variants``). Returns::

        {"config": ..., "environment": ..., "model": {"name", "params", ...},
         "total_wall_time_s": ...,
         "variants": {name: {"framework", "correct", "description", "path", "path_description",
                             "wall_time_s", "timing": {"epoch_s", "first_epoch_s",
                             "steady_epoch_s", "steady_steps_per_s"},
                             "seeds": [{"seed", "diverged", "diverged_epoch",
                                        "epochs": [{"epoch", "train_loss", "test_loss",
                                                    "test_acc", "train_mode", "diverged"}]}]}}}

    Epochs are 0-based here, as in the loops. A diverged seed's list stops at the epoch whose
    mean train loss was not finite. ``timing`` separates the first epoch (compilation) from the
    steady state (:class:`EpochClock`). Non-finite floats stay ``nan`` here (``None`` in a
    resumed variant); :mod:`parity.study.report` writes them as ``null``.
    """
    config.validate()
    runtime = runtime or configure_runtime(config.device, config.precision)
    import torch

    started = time.perf_counter()
    ctx, ds = build_context(config, runtime)
    n = len(ctx.y_train)
    linen_path = resolve_linen_path(config.linen_path, runtime.device, config.eval_every)
    threads = config.torch_threads or (
        CPU_TORCH_THREADS if runtime.device == "cpu" else torch.get_num_threads()
    )
    environment = _environment(runtime, linen_path, threads)
    store = None if keep is None else VariantStore(keep, config.to_dict(), environment)
    resumed = {} if store is None else {v: e for v in config.variants if (e := store.load(v)) is not None}
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        train = _train_variants
        if config.devices > 1:
            from parity.study.devices import train_variants as train
        ctx.config = replace(config, variants=tuple(v for v in config.variants if v not in resumed))
        trained = {}
        if ctx.config.variants:
            trained = train(
                ctx, linen_path, progress, n // config.batch_size, store.save if store else _ignore
            )
    finally:
        torch.set_num_threads(previous_threads)
        ctx.config = config
    variants = {v: resumed[v] if v in resumed else trained[v] for v in config.variants}
    results = _document(ctx, ds, environment, time.perf_counter() - started, variants)
    return results | ({"resumed_variants": list(resumed)} if resumed else {})


def _document(ctx: StudyContext, ds: Any, environment: dict, wall: float, variants: dict) -> dict:
    """The results document of a finished study (see :func:`run_study`)."""
    config, n = ctx.config, len(ctx.y_train)
    return {
        "schema": 1,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "config": config.to_dict(),
        "environment": environment,
        "model": {
            "name": config.model_name,
            "params": int(sum(p.numel() for p in ctx.torch_init[0].parameters())),
            "num_classes": int(ds.num_classes),
            "train_examples": int(n),
            "test_examples": len(ds.x_test),
            "steps_per_epoch": n // config.batch_size,
        },
        "total_wall_time_s": wall,
        "variants": variants,
    }


def _ignore(variant: str, entry: dict) -> None:
    """The ``on_variant`` of a study that keeps nothing."""
