"""The device's float32 matmul peak: measured (median of long samples) and, on CPU, bounded.

The "% of peak" of every rate divides by a peak measured under the same precision policy, next
to the rates (:func:`parity.bench.benchmark` measures it before and after each model). On CPU
the measurement is checked against ``cores x clock x FLOP/cycle``
(:func:`theoretical_cpu_peak`); a measured peak above that bound is flagged, not hidden.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

#: float32 FLOPs per cycle per core by the widest FMA-capable vector ISA in /proc/cpuinfo's
#: flags, assuming two FMA pipes (Skylake-SP and later Xeons, Zen 2 to 4): lanes x 2 (multiply
#: and add) x 2 pipes. Zen 4 runs AVX-512 on 256-bit pipes (32 a cycle), so for it the AVX-512
#: row is a loose bound, never a low one. Without FMA: a separate 8-lane add and multiply (AVX).
FLOPS_PER_CYCLE: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("avx512f+fma", ("avx512f", "fma"), 64),
    ("avx2+fma", ("avx2", "fma"), 32),
    ("avx", ("avx",), 16),
    ("sse2", ("sse2",), 8),
)


def theoretical_cpu_peak(cpuinfo: str, cores: int) -> dict | None:
    """``cores x clock x FLOP/cycle`` float32 TFLOP/s from ``/proc/cpuinfo`` text, or ``None``.

    The clock is the largest ``cpu MHz`` listed: the clock the kernel reports, which boost
    clocks can exceed (so a measurement above the bound means a boosting clock or a wrong
    measurement, and is flagged either way). ``None`` when the clock or the flags are missing.
    """
    mhz = [float(line.split(":", 1)[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
    flags = next(
        (line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []
    )
    isa = next(((name, per) for name, need, per in FLOPS_PER_CYCLE if set(need) <= set(flags)), None)
    if not mhz or isa is None or cores < 1:
        return None
    clock = max(mhz)
    return {
        "tflops": cores * clock * 1e6 * isa[1] / 1e12,
        "cores": cores,
        "mhz": clock,
        "isa": isa[0],
        "flops_per_cycle": isa[1],
        "formula": f"{cores} cores x {clock:.0f} MHz x {isa[1]} FLOP/cycle ({isa[0]})",
    }


def cpu_bound(cores: int | None = None) -> dict | None:
    """:func:`theoretical_cpu_peak` of this machine (``cores``: the CPUs this process may use)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    return theoretical_cpu_peak(text, cores or len(os.sched_getaffinity(0)))


def median_rate(
    call: Callable[[], object],
    flops: float,
    samples: int = 7,
    min_sample_s: float = 0.25,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """FLOP/s of ``call`` (``flops`` per call, synchronised): the median over ``samples`` samples.

    One untimed call warms up; one timed call sizes the samples: each sample repeats ``call``
    enough times to last about ``min_sample_s``, so a sample is long against timer and scheduler
    noise, and the median ignores a lucky (or preempted) sample. Returns ``{"tflops"`` (median),
    ``"min", "max", "calls_per_sample", "samples"}``.
    """
    call()
    t0 = clock()
    call()
    one = max(clock() - t0, 1e-9)
    per = max(1, round(min_sample_s / one))
    rates = []
    for _ in range(samples):
        t0 = clock()
        for _ in range(per):
            call()
        rates.append(per * flops / max(clock() - t0, 1e-12) / 1e12)
    return {
        "tflops": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "calls_per_sample": per,
        "samples": samples,
    }


def _torch_matmul(device: str, n: int) -> Callable[[], object]:
    """``a @ b`` on ``n x n`` float32 torch matrices, synchronised. TF32 for matmul follows the
    precision policy's convolution setting (``cudnn.allow_tf32``), where these models' FLOPs are."""
    import torch

    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    a, b = (torch.randn(n, n, generator=g, device=dev) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    tf32 = torch.backends.cudnn.allow_tf32 and device == "cuda"

    def call() -> None:
        old = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            a @ b
            sync()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old

    return call


def _jax_matmul(n: int) -> Callable[[], object]:
    """A jitted ``n x n`` float32 matmul under jax's configured default matmul precision."""
    import jax
    import jax.numpy as jnp

    a, b = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    return lambda: mm(a, b).block_until_ready()


def measure_peak(
    device: str,
    n: int | None = None,
    samples: int = 7,
    min_sample_s: float = 0.25,
    label: str = "",
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Measured float32 matmul rate (TFLOP/s) of torch and jax on ``device``, under the precision
    policy in force (:func:`parity.device.configure` before calling).

    ``n x n`` matrices (default 8192 on cuda, 1024 on cpu), :func:`median_rate` each. Returns
    ``{"label", "n", "torch", "jax", "tflops"}``: ``torch``/``jax`` are median_rate's dicts,
    ``tflops`` the larger median. ``clock`` times the samples (tests pass a fake).
    """
    import jax

    n = n or (8192 if device == "cuda" else 1024)
    flops = 2.0 * n**3
    torch_rate = median_rate(_torch_matmul(device, n), flops, samples, min_sample_s, clock)
    jax_rate = median_rate(_jax_matmul(n), flops, samples, min_sample_s, clock)
    return {
        "label": label,
        "n": n,
        "jax_matmul_precision": jax.config.jax_default_matmul_precision,
        "torch": torch_rate,
        "jax": jax_rate,
        "tflops": max(torch_rate["tflops"], jax_rate["tflops"]),
    }


def peak_summary(measurements: list[dict], bound: dict | None) -> dict:
    """All peak measurements of a run and the bound: ``tflops`` is the median of the
    measurements' ``tflops``; ``above_bound`` is True when it exceeds ``bound`` (None when no
    bound is known)."""
    tflops = statistics.median(m["tflops"] for m in measurements)
    return {
        "tflops": tflops,
        "n": measurements[0]["n"],
        "measurements": measurements,
        "theoretical": bound,
        "above_bound": None if bound is None else bool(tflops > bound["tflops"]),
    }
