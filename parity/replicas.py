"""How many replicas (devices, worker processes) a data-parallel run may use, checked before
any work starts, and making jax see them.

One rule for ``parity check --data-parallel N`` and ``parity study --devices N``:

* ``cuda``: one replica per GPU; ``N`` above the GPUs torch sees is refused (so on a one-GPU
  machine any ``N > 1`` is).
* ``cpu``: a replica is a worker process (a gloo rank, a study worker) and, for jax, a simulated
  CPU device (``jax_num_cpu_devices``, the config behind
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``). More replicas than cores still give
  the same numbers, only not faster, so up to :data:`CPU_REPLICAS_PER_CORE` per core are
  allowed (the issue's ``--devices 4`` must run on a 2-core box); more is refused.

Simulated CPU devices exist only if the count is set before jax's backend starts:
:func:`ensure_jax_cpu_devices` sets it when it still can and refuses, naming both numbers,
when jax already started with fewer.
"""

from __future__ import annotations

import os

#: worker processes (or simulated jax devices) per CPU core at most: beyond one per core a
#: replica only waits for a core; four per core lets a 2-core box run the 4-replica checks
CPU_REPLICAS_PER_CORE = 4


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_count() -> int:
    """CUDA GPUs torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def max_replicas(device: str) -> int:
    """How many replicas ``device`` (``"cpu"`` or ``"cuda"``) holds: the GPUs torch sees, or
    :data:`CPU_REPLICAS_PER_CORE` worker processes per CPU core."""
    return gpu_count() if device == "cuda" else CPU_REPLICAS_PER_CORE * cpu_cores()


def check_replicas(n: int, device: str, option: str) -> None:
    """Raise ``ValueError`` (one line, naming ``option`` and the numbers) when ``n`` replicas
    cannot run on ``device`` (``"cpu"`` or ``"cuda"``, resolved). See the module doc."""
    if n < 1:
        raise ValueError(f"{option} must be at least 1, got {n}")
    if device == "cuda":
        gpus = gpu_count()
        if gpus == 0:
            raise ValueError(f"{option} {n} on --device cuda, but torch sees no CUDA GPU; use --device cpu")
        if n > gpus:
            raise ValueError(
                f"{option} {n} needs {n} GPUs, one per replica; torch sees {gpus} "
                f"(use {option} {max(gpus, 1)}, or --device cpu for simulated CPU devices)"
            )
        return
    if n > max_replicas("cpu"):
        raise ValueError(
            f"{option} {n} is more than the {max_replicas('cpu')} CPU worker processes "
            f"available ({CPU_REPLICAS_PER_CORE} per core on {cpu_cores()} cores)"
        )


def ensure_jax_cpu_devices(n: int) -> None:
    """Make jax's CPU backend hold at least ``n`` devices, or raise ``ValueError``.

    Before jax's backend starts this sets ``jax_num_cpu_devices`` (no effect on GPUs); after, it
    only checks: a backend started with fewer CPU devices cannot grow.
    """
    import jax

    if n <= 1:
        return
    try:
        if jax.config.jax_num_cpu_devices < n:
            jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend already started; the count below is final
        pass
    have = len(jax.devices("cpu"))
    if have < n:
        raise ValueError(
            f"jax already started with {have} CPU device(s), {n} needed: start a fresh process "
            f"(the parity commands arrange it) or set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before jax starts"
        )
