"""Checks on a user's ``--input-shape`` before any full-size tensor exists: the input rank a
model's first layer takes, and the memory a check of that batch would need.

Both run the torch model once on a batch of at most two samples, so a wrong or huge shape is
one line naming the shape, not a shape error deep in the model or a RESOURCE_EXHAUSTED
traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn as tnn

from parity.harness.results import CheckError
from parity.harness.sides import leaf_modules

#: How many float32-sized copies of one pass's activations a check holds at its peak: every
#: torch leaf's input and output (2), the Flax outputs captured beside them and jax's own
#: buffers of that pass (2), and the float64 re-check of a pass, twice the bytes (2). A rough
#: bound from the harness's structure, not a measurement: it decides only refusals far over the
#: available memory.
COPIES = 6


@dataclass(frozen=True)
class SmallRun:
    """What one torch pass on at most two samples showed: the first leaf layer called, whether
    it received the model input itself, and the bytes of every leaf output per sample."""

    first: tuple[str, tnn.Module] | None
    first_takes_input: bool
    bytes_per_sample: int | None


def small_run(model: tnn.Module, sample: Callable[[int], np.ndarray], batch: int) -> SmallRun:
    """Run a private eval-mode copy of ``model`` on ``sample(min(batch, 2))`` (torch layout);
    ``bytes_per_sample`` is ``None`` when the model fails on it."""
    import copy

    n = max(1, min(batch, 2))
    x = torch.from_numpy(sample(n))
    tm = copy.deepcopy(model).eval().cpu()
    calls: list[tuple[str, tnn.Module, bool]] = []
    total = [int(x.numel() * x.element_size())]

    def pre(name):
        return lambda m, args: calls.append((name, m, bool(args) and args[0] is x)) if not calls else None

    def post(m, args, out):
        if isinstance(out, torch.Tensor):
            total[0] += int(out.numel() * out.element_size())

    leaves = leaf_modules(tm)
    handles = [m.register_forward_pre_hook(pre(n)) for n, m in leaves.items()]
    handles += [m.register_forward_hook(post) for m in leaves.values()]
    ok = True
    try:
        with torch.no_grad():
            dtype = next(iter(tm.parameters()), torch.zeros(())).dtype
            tm(x.to(dtype) if x.is_floating_point() else x)
    except Exception:  # user code on a shape it may not take: reported below or by the check
        ok = False
    finally:
        for h in handles:
            h.remove()
    first = (calls[0][0], calls[0][1]) if calls else None
    return SmallRun(first, bool(calls) and calls[0][2], total[0] // n if ok else None)


def check_input_rank(shape: tuple[int, ...], run: SmallRun) -> None:
    """Refuse an input whose rank the first layer does not take batched: a ``ConvNd`` over
    ``k`` spatial dimensions takes ``(N, C, *k)``, rank ``k + 2``."""
    if run.first is None or not run.first_takes_input:
        return
    name, module = run.first
    if isinstance(module, tnn.modules.conv._ConvNd):
        want = len(module.kernel_size) + 2
        if len(shape) != want:
            spatial = ("H", "W") if want == 4 else ("L",) if want == 3 else ("D", "H", "W")
            raise CheckError(
                f"--input-shape {','.join(map(str, shape))} has rank {len(shape)}, but the first layer "
                f"{name} ({type(module).__name__}) takes rank-{want} inputs (N, C, {', '.join(spatial)})"
            )


def available_memory() -> int:
    """Bytes of memory available now (``MemAvailable`` on Linux, else free physical pages)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(shape: tuple[int, ...], itemsize: int, run: SmallRun, available: int | None = None) -> None:
    """Refuse a batch whose check would need more memory than is available: ``COPIES`` times
    the per-sample activation bytes times ``N`` (the input alone when the small run failed)."""
    per_sample = run.bytes_per_sample or int(np.prod(shape[1:], dtype=np.int64)) * itemsize
    need = COPIES * per_sample * shape[0]
    have = available_memory() if available is None else available
    if need > have:
        gib = 2.0**30
        raise CheckError(
            f"--input-shape {','.join(map(str, shape))} needs about {need / gib:,.1f} GiB "
            f"({per_sample:,} bytes of activations per sample x {shape[0]:,} samples x {COPIES} "
            f"copies the check keeps), but {have / gib:,.1f} GiB are available; use a smaller N"
        )
