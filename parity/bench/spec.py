"""What the benchmark measures: styles, constants, the run configuration and the runner interface.

Framework-free (no torch, no jax): the command layer imports this module to validate input
before either framework loads.
"""

from __future__ import annotations

import importlib
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity.device import DEVICES, PRECISIONS
from parity.errors import ParityError
from parity.registry import MODELS

#: Per-example input shape of each model, channels-first (NCHW / NCW without the N).
INPUT_SHAPES: dict[str, tuple[int, ...]] = {"digits": (1, 8, 8), "signal1d": (1, 40)}

#: Losses of the first GATE_STEPS steps are compared with torch eager's.
GATE_STEPS = 3
#: Relative tolerance of the gate. Two float32 implementations that sum the same products in a
#: different order differ by a few ulps per operation (float32 eps is 1.2e-7); after three SGD
#: steps through four conv/dense layers and three BatchNorms we measure 0 to 2e-7 between the
#: frameworks on CPU. 1e-4 leaves orders of magnitude for GPU kernels (cuDNN picks other
#: algorithms) while real defects land well outside it (measured, default models, batch 128):
#: a 2x learning rate 2.5e-3 to 3e-3, SGD without its momentum 1e-3, another seed's initial
#: weights 5e-3 to 6e-2.
GATE_RTOL = 1e-4
#: The dropout probe (same batch every step, learning rate 0) calls the masks unchanged when the
#: losses' relative spread is at most this. With lr 0 and BatchNorm on batch statistics, only the
#: dropout mask changes the loss. Measured spreads with new masks (2026-11-30, CPU): 1.0e-2 to
#: 5.9e-2 on the tests' tiny models, 6.5e-4 to 2.7e-2 on the real ones (the smallest is the vmap
#: style's minimum over 8 seeds); with dropout off the spread stays <= 1e-5 (the tests' control),
#: and float32 summation noise between identical steps is ulps (~1e-7 relative).
DROPOUT_SPREAD_MIN = 1e-5
#: Models in the vmap style by default.
SEEDS = 8

#: Targets from the issue (one H100/H200, digits, batch 128, float32); checked on cuda runs.
GPU_TARGETS: dict[str, float] = {
    "torch_best": 3000.0,
    "linen_best": 6000.0,
    "linen_vmap_scan": 12000.0,
    "large_batch_pct_peak": 40.0,
}


class BenchError(ParityError, ValueError):
    """Bad benchmark input: unknown model or style, bad batch size, unusable output path."""


class Runner(ABC):
    """One training state stepping through a fixed array of batch indices; what every style
    implements (:mod:`parity.bench.torch_runners`, :mod:`parity.bench.flax_runners`).

    A runner is built from a :class:`~parity.bench.workload.Workload`, an index array
    ``(steps, batch)`` (``(seeds, steps, batch)`` for the vmap style) and a dropout rate
    (``None``: the model's own).
    """

    #: seconds of compilation-like work done in the constructor (graph capture); 0 elsewhere
    prepare_s: float = 0.0

    @abstractmethod
    def run(self) -> Any:
        """Train through every batch once from the current state, synchronise the device and
        return the per-step losses as device values: ``(steps,)``, or ``(seeds, steps)``."""

    @abstractmethod
    def bn_stats(self) -> dict[str, np.ndarray]:
        """BatchNorm running statistics now, as float64 host arrays keyed by name (every seed's
        stacked along axis 0 for the vmap style)."""


@dataclass(frozen=True)
class Style:
    """An execution style: its ``framework`` (torch/linen/nnx) and its runner class.

    ``runner`` is ``"module:Class"`` under :mod:`parity.bench`, imported only when the style runs;
    ``options`` are extra constructor arguments. ``vmapped`` styles train several models per step
    (rate in model-steps/s).
    """

    name: str
    framework: str
    runner: str
    description: str
    options: tuple[tuple[str, Any], ...] = ()
    vmapped: bool = False

    @property
    def unit(self) -> str:
        """The unit of this style's rate."""
        return "model-steps/s" if self.vmapped else "steps/s"


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style("torch_eager", "torch", "torch_runners:TorchLoopRunner",
              "torch_impl.train.train_step in a Python loop (reference)", (("compiled", False),)),
        Style("torch_compile", "torch", "torch_runners:TorchLoopRunner",
              "torch.compile(model), eager optimizer, Python loop", (("compiled", True),)),
        Style("torch_cudagraph", "torch", "torch_runners:TorchCudaGraphRunner",
              "whole step captured with torch.cuda.graph, replayed"),
        Style("linen_jit", "linen", "flax_runners:LinenJitRunner",
              "flax_impl.linen_train.train_step (jax.jit) in a Python loop"),
        Style("linen_scan", "linen", "flax_runners:LinenScanRunner",
              "flax_impl.linen_train.train_epoch_scan: steps in one lax.scan"),
        Style("linen_vmap_scan", "linen", "flax_runners:LinenVmapScanRunner",
              "train_epoch_scan_seeds: the scan vmap-ed over seeds", vmapped=True),
        Style("nnx_jit", "nnx", "flax_runners:NnxJitRunner",
              "flax_impl.nnx_train.train_step (nnx.jit) in a Python loop"),
        Style("nnx_split", "nnx", "flax_runners:NnxSplitRunner",
              "nnx.split once, jax.jit step on (graphdef, state)"),
    )
}  # fmt: skip
#: Styles that run all steps of a repeat in one ``lax.scan`` (slow on XLA:CPU, see BENCHMARKS.md).
SCAN_STYLES = ("linen_scan", "linen_vmap_scan")


def runner_class(style: str) -> type[Runner]:
    """The :class:`Runner` subclass of ``style`` (importing its framework's module)."""
    if style not in STYLES:
        raise BenchError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")
    module, name = STYLES[style].runner.split(":")
    return getattr(importlib.import_module(f"parity.bench.{module}"), name)


def skip_reason(
    style: str, device: str, quick: bool, batch_size: int = 128, explicit: bool = False
) -> str | None:
    """Why ``style`` cannot or should not run here, or ``None`` when it runs.

    Styles that cannot run (CUDA graphs on CPU, torch.compile without a C++ compiler) are always
    skipped. Styles that would only blow the time budget (torch.compile in ``--quick``; on CPU
    the scan styles in ``--quick`` and the vmap style at batch >= 1024) are skipped unless
    ``explicit`` (named in ``--styles``).
    """
    if style == "torch_cudagraph" and device != "cuda":
        return f"CUDA graphs need a CUDA GPU (device is {device})"
    if style == "torch_compile" and device == "cpu":
        cxx = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)]
        if not cxx:
            return "torch.compile on CPU needs a C++ compiler (no g++, c++ or clang++ on PATH)"
    if explicit:
        return None
    if style == "torch_compile" and quick:
        return (
            "not in --quick: Inductor compiles every model and batch size twice (gate and "
            "timing); one compile took ~45 s with a cold cache on the 2-core dev box; run "
            "without --quick"
        )
    if device != "cpu":
        return None
    if style == "linen_vmap_scan" and batch_size >= 1024:
        return (
            "not by default on CPU at batch >= 1024: vmap x8 of the scanned step ran at "
            "0.2 model-steps/s on the 2-core dev box (minutes per repeat); name it in --styles "
            "to run it anyway"
        )
    if style in SCAN_STYLES and quick:
        return (
            "not in --quick on CPU: XLA:CPU runs a scanned conv step 5-50x slower than a "
            "jitted one (see BENCHMARKS.md); run without --quick to measure it"
        )
    return None


def default_steps(device: str, batch_size: int, quick: bool, style: str | None = None) -> int:
    """Steps per repeat: a fixed number of examples per repeat, clamped.

    cuda: ``262144 / batch`` in [20, 500] (quick: ``65536 / batch`` in [10, 100]); cpu:
    ``2560 / batch`` in [3, 20] (quick: ``512 / batch`` in [2, 4]), and a quarter of that (at
    least 2) for the scan styles, whose steps run 5-50x slower on XLA:CPU. A repeat then lasts
    roughly 0.05-2 s on an H100 and 0.2-5 s on the 2-core dev box.
    """
    if device == "cuda":
        budget, lo, hi = (65536, 10, 100) if quick else (262144, 20, 500)
    else:
        budget, lo, hi = (512, 2, 4) if quick else (2560, 3, 20)
    steps = max(lo, min(hi, budget // batch_size))
    if device == "cpu" and style in SCAN_STYLES:
        steps = max(2, steps // 4)
    return steps


def validate(models: Sequence[str], styles: Sequence[str], batch_sizes: Sequence[int]) -> None:
    """Raise :class:`BenchError` naming the choices for an unknown model or style, or naming the
    bad batch sizes (each must be an integer >= 2; BatchNorm needs a batch)."""
    for kind, given, choices in (("model", models, MODELS), ("style", styles, STYLES)):
        bad = [x for x in given if x not in choices]
        if bad or not given:
            named = ", ".join(map(repr, bad)) or "(none given)"
            raise BenchError(f"unknown {kind}(s) {named}; choose from {', '.join(choices)}")
    if not batch_sizes or any(b < 2 for b in batch_sizes):
        raise BenchError(f"batch sizes must be integers >= 2, got {list(batch_sizes)}")


@dataclass(frozen=True)
class BenchConfig:
    """What :func:`parity.bench.benchmark` measures; validated when built (:class:`BenchError`).

    ``device`` is ``auto``, ``cpu`` or ``cuda``; ``steps=None`` picks :func:`default_steps`;
    ``config`` overrides architecture widths (tests), ``peak_n`` the peak matmul's size and
    ``peak_sample_s`` the length of one of its samples (default 0.25 s, ``--quick`` 0.1 s),
    ``explicit_styles`` runs named styles even where they are slow on this device.
    """

    models: Sequence[str] = MODELS
    batch_sizes: Sequence[int] = (128, 1024, 8192)
    styles: Sequence[str] = tuple(STYLES)
    device: str = "auto"
    precision: str = "strict"
    repeats: int = 5
    steps: int | None = None
    seeds: int = SEEDS
    quick: bool = False
    config: dict = field(default_factory=dict)
    peak_n: int | None = None
    peak_sample_s: float | None = None
    torch_threads: int | None = None
    explicit_styles: bool = False

    def __post_init__(self) -> None:
        for name in ("models", "batch_sizes", "styles"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        validate(self.models, self.styles, self.batch_sizes)
        if self.device not in DEVICES or self.precision not in PRECISIONS:
            raise BenchError(f"device must be one of {DEVICES}, precision one of {PRECISIONS}")
        counts = {"repeats": self.repeats, "steps": self.steps, "seeds": self.seeds,
                  "torch_threads": self.torch_threads, "peak_n": self.peak_n}  # fmt: skip
        bad = [k for k, v in counts.items() if v is not None and (not isinstance(v, int) or v < 1)]
        if bad:
            raise BenchError(f"{', '.join('--' + b.replace('_', '-') for b in bad)} must be >= 1")
        if self.peak_sample_s is not None and not self.peak_sample_s > 0:
            raise BenchError(f"peak_sample_s must be > 0, got {self.peak_sample_s}")
        if "dropout" in self.config:
            raise BenchError("config sets dropout itself: the benchmark trains with the model's dropout")


def check_runnable(cfg: BenchConfig) -> None:
    """Refuse (:class:`BenchError`) a configuration in which :func:`skip_reason` skips every
    style at every batch size (e.g. ``--styles torch_cudagraph --device cpu``): a run that would
    measure nothing. ``cfg.device`` must be resolved (``cpu`` or ``cuda``)."""
    reasons = {
        style: skip_reason(style, cfg.device, cfg.quick, batch, cfg.explicit_styles)
        for style in cfg.styles
        for batch in cfg.batch_sizes
    }
    if all(reasons.values()):
        why = "; ".join(f"{style}: {reason}" for style, reason in reasons.items())
        raise BenchError(f"nothing to measure on {cfg.device}: every style is skipped ({why})")
