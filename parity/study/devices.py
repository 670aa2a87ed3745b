"""``parity study --devices N``: the study's seeds spread over N devices, same numbers as one.

The Linen vmap-over-seeds path shards the seed axis over a 1-D mesh (simulated CPU devices on
CPU); the per-seed paths (torch, Linen loop, NNX) run whole ``(variant, seed)`` tasks in N
``forkserver`` worker processes with the parent's study context. Per-seed paths give the
numbers of ``--devices 1`` bit for bit; the sharded vmap path to float32 rounding
(docs/DATA_PARALLEL.md). A worker that dies, raises or hangs stops the study with
:class:`DeviceWorkerError`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from parity import replicas
from parity.errors import ParityError
from parity.progress import Progress
from parity.study import runners
from parity.study.config import StudyError, config_items

#: a worker that reports nothing (no epoch finished) for this long is taken as hung: the
#: slowest epoch measured is a few seconds (a torch epoch of mnist1d at one thread)
STALL_S = 600.0
#: modules the forkserver imports once, so that a worker starts without importing torch or jax
#: (about 10 s each on the loaded 2-core box); the Flax ones only when a Flax path is queued
PRELOAD = ("torch", "parity.study.runners", "parity.convert", "torch_impl.train", "torch_impl.audit")
PRELOAD_FLAX = ("jax", "flax", "optax", "flax_impl.linen_train", "flax_impl.nnx_train")
#: per-seed paths, longest first (torch ~3x a Flax seed on CPU): the queue's order
PATH_ORDER = ("torch", "nnx", "loop")


class DeviceWorkerError(ParityError, RuntimeError):
    """A study worker died, raised or hung; the message names it and its task."""

    exit_code = 1


def train_variants(
    ctx: Any, linen_path: str, progress: bool, steps_per_epoch: int, on_variant: Callable[[str, dict], None]
) -> dict[str, dict]:
    """:func:`parity.study.driver.run_study`'s variant loop over ``ctx.config.devices`` devices:
    the vmap variants sharded in this process, then every per-seed variant in the worker pool.
    Returns ``{variant: entry}`` in ``config.variants`` order (entries as with one device);
    ``on_variant(name, entry)`` is called as each variant finishes."""
    config = ctx.config
    paths = {v: runners.variant_path(v, linen_path) for v in config.variants}
    check_devices(config.devices, ctx.runtime.device, "vmap" in paths.values())
    done: dict[str, dict] = {}
    with Progress("epochs", len(config.variants) * config.seeds * config.epochs, enabled=progress) as bar:
        ctx.progress = bar
        for variant in (v for v in config.variants if paths[v] == "vmap"):
            done[variant] = _train_sharded(variant, ctx, steps_per_epoch)
            on_variant(variant, done[variant])
            _log(bar, variant, done[variant], config.devices)
        per_seed = [v for v in config.variants if paths[v] != "vmap"]
        if per_seed:
            for variant, entry in WorkerPool(ctx, per_seed, paths, steps_per_epoch, on_variant).run().items():
                done[variant] = entry
                _log(bar, variant, entry, config.devices)
    return {v: done[v] for v in config.variants}


def _log(bar: Progress, variant: str, entry: dict, devices: int) -> None:
    final = [s["epochs"][-1]["test_acc"] for s in entry["seeds"]]
    bar.log(
        f"{variant:<19} {entry['wall_time_s']:6.1f} s over {devices} devices"
        f"  last-epoch test acc {100 * float(np.mean(final)):.2f}%"
    )


def check_devices(n: int, device: str, sharded: bool) -> None:
    """Refuse (:class:`StudyError`, before any training) ``n`` devices that ``device`` cannot hold,
    or, for the ``sharded`` vmap path on CPU, a jax that already started with fewer than ``n``
    CPU devices (:mod:`parity.replicas`)."""
    try:
        replicas.check_replicas(n, device, "--devices")
        if sharded and device == "cpu":
            replicas.ensure_jax_cpu_devices(n)
    except ValueError as e:  # parity.replicas speaks ValueError; the study's users get one line
        raise StudyError(str(e)) from e


# ------------------------------------------------------------------ sharded vmap over seeds


def padded_seeds(seeds: list[int], n: int) -> list[int]:
    """``seeds`` with the last one repeated until the count is a multiple of ``n``."""
    return seeds + seeds[-1:] * (-len(seeds) % n)


def _train_sharded(variant: str, ctx: Any, steps_per_epoch: int) -> dict:
    """Every seed of a Linen variant at once, the seed axis sharded over ``config.devices``
    devices (``linen_train.fit_seeds`` / ``fit_bug_emulated_seeds`` unchanged: ``jit`` follows
    the arguments' shardings). Same batches and dropout keys as the one-device path."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from flax_impl import linen_train
    from parity.study import models as study_models

    c, n = ctx.config, ctx.config.devices
    seeds = padded_seeds(c.seed_list, n)
    platform = "gpu" if ctx.runtime.device == "cuda" else "cpu"
    sharding = NamedSharding(Mesh(np.array(jax.devices(platform)[:n]), ("seeds",)), P("seeds"))
    fit = linen_train.fit_seeds if variant == "linen" else linen_train.fit_bug_emulated_seeds
    module = study_models.linen_module(c.model_name, config_items(c))
    tx = linen_train.make_optimizer(c.lr, c.momentum)
    states = linen_train.create_seed_states(module, [ctx.linen_init[s] for s in seeds], tx)
    orders = [ctx.orders(s) for s in seeds]
    clock, real = runners.EpochClock(steps_per_epoch), len(c.seed_list)
    ctx.progress.describe(f"{variant}  {c.seeds} seeds sharded over {n} devices")

    def on_epoch(i: int, rec: dict) -> None:
        if i < real:  # a padding copy's epochs are neither timed nor counted
            clock.tick(rec["epoch"])
            ctx.progress.advance(c.epochs - rec["epoch"] if rec["diverged"] else 1)

    t0, cpu0 = time.perf_counter(), time.process_time()
    _, histories = fit(
        jax.device_put(states, sharding),
        (ctx.x_train_cl, ctx.y_train),
        lambda epoch: jax.device_put(np.stack([np.stack(o(epoch)) for o in orders]), sharding),
        (ctx.x_test_cl, ctx.y_test),
        c.epochs,
        jax.device_put(jnp.stack([jax.random.key(s) for s in seeds]), sharding),
        on_epoch=on_epoch,
        eval_every=c.eval_every,
    )
    runs = {s: (histories[i], {}) for i, s in enumerate(c.seed_list)}
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return runners.variant_entry(variant, "vmap", wall, clock, runs, c.seed_list, cpu)


# ---------------------------------------------------------------------- the worker processes


#: the study context's arrays, sent to the workers with their strides (:func:`with_strides`)
ARRAYS = ("x_train", "y_train", "x_test", "y_test", "x_train_cl", "x_test_cl")


def with_strides(a: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
    """``a`` viewed with ``strides``, which may differ from ``a.strides`` only on axes of length
    1 (where no element's address depends on them; ``ValueError`` otherwise).

    Why: a pickled array arrives with standard strides, but MNIST-1D's ``(N, 1, 40)`` arrays are
    ``x[:, None, :]`` views with stride 0 on the channel axis, their batches gather to torch
    tensors that look channels-last as well, and oneDNN picks a different float32 convolution
    kernel for them. Torch's losses then differ in the 8th digit and drift over 30 epochs, so a
    worker restores the parent's strides to train bit for bit like one process."""
    if len(strides) != a.ndim or any(n != 1 and s != t for n, s, t in zip(a.shape, a.strides, strides)):
        raise ValueError(f"strides {strides} do not address an array of shape {a.shape} like {a.strides}")
    return np.lib.stride_tricks.as_strided(a, strides=strides)


def _worker(index: int, ctx: Any, strides: dict, threads: int, tasks, events) -> None:
    """One worker: set its device, take the parent's study context
    ``ctx`` (its runtime re-applied here, its arrays given the parent's ``strides``), train
    tasks until ``None``. Reports ``("start" | "epoch" | "done" | "error", index, ...)`` on
    ``events``."""
    device, precision = ctx.runtime.device, ctx.runtime.precision
    if device == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)  # before torch or jax touches CUDA
    import torch

    torch.set_num_threads(threads)
    task = None
    try:
        runtime = runners.configure_runtime(device, precision, warn=lambda m: None)
        arrays = {name: with_strides(getattr(ctx, name), strides[name]) for name in ARRAYS}
        ctx = replace(ctx, runtime=runtime, **arrays)
        while (task := tasks.get()) is not None:
            events.put(("start", index, task))
            events.put(("done", index, task, *_train_task(ctx, task, index, events)))
    except BaseException as e:  # reported, then the worker exits non-zero
        last = traceback.format_exception_only(e)[-1].strip()
        events.put(("error", index, task, last))
        raise SystemExit(1) from None


def _train_task(ctx: Any, task: tuple[str, str, int], index: int, events) -> tuple:
    """Train one ``(variant, path, seed)``; ``(history, extra, per-epoch seconds, CPU seconds)``."""
    variant, path, seed = task
    seconds: list[tuple[int, float]] = []
    last, cpu = time.perf_counter(), time.process_time()

    def on_epoch(rec: dict) -> None:
        nonlocal last
        now = time.perf_counter()
        seconds.append((int(rec["epoch"]), now - last))
        last = now
        events.put(("epoch", index, task, int(rec["epoch"]), bool(rec["diverged"])))

    history, extra = runners.SEED_TRAINERS[path](variant, seed, ctx, on_epoch)
    return history, extra, seconds, time.process_time() - cpu


class WorkerPool:
    """``config.devices`` worker processes over the ``(variant, seed)`` tasks of ``variants``."""

    def __init__(
        self,
        ctx: Any,
        variants: list[str],
        paths: dict[str, str],
        steps_per_epoch: int,
        on_variant: Callable[[str, dict], None] = lambda variant, entry: None,
    ) -> None:
        self.ctx, self.config, self.steps, self.on_variant = ctx, ctx.config, steps_per_epoch, on_variant
        order = sorted(variants, key=lambda v: PATH_ORDER.index(paths[v]))
        self.tasks = [(v, paths[v], s) for v in order for s in self.config.seed_list]
        self.paths = paths
        self.runs: dict[str, dict[int, tuple]] = {v: {} for v in variants}
        self.clocks = {v: runners.EpochClock(steps_per_epoch) for v in variants}
        self.walls = dict.fromkeys(variants, 0.0)
        self.cpu = dict.fromkeys(variants, 0.0)
        self.current: dict[int, tuple | None] = {}

    def run(self) -> dict[str, dict]:
        """Start the workers, collect every task, stop them; ``{variant: entry}``."""
        import torch

        n = min(self.config.devices, len(self.tasks))
        ctx = mp.get_context("forkserver")
        flax = any(path != "torch" for _, path, _ in self.tasks)
        ctx.set_forkserver_preload([*PRELOAD, *(PRELOAD_FLAX if flax else ())])
        tasks, events = ctx.Queue(), ctx.Queue()
        for task in self.tasks + [None] * n:
            tasks.put(task)
        # the parent's progress bar and clock stay here; workers report on ``events``
        shared = replace(self.ctx, progress=Progress("epochs", 0, enabled=False), clock=runners.EpochClock(0))
        strides = {name: getattr(shared, name).strides for name in ARRAYS}
        args = (shared, strides, torch.get_num_threads(), tasks, events)
        procs = [ctx.Process(target=_worker, args=(i, *args), daemon=True) for i in range(n)]
        try:
            for p in procs:
                p.start()
            self._collect(procs, events)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join(timeout=5)
        return {v: self._entry(v) for v in self.runs}

    def _collect(self, procs: list, events) -> None:
        pending, heard = len(self.tasks), time.monotonic()
        started = {i: time.perf_counter() for i in range(len(procs))}
        while pending:
            self._check_alive(procs, heard)  # every turn: other workers' events keep the queue busy
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                continue
            heard = time.monotonic()
            kind, index, task = event[:3]
            if kind == "start":
                self.current[index], started[index] = task, time.perf_counter()
                self.ctx.progress.describe(f"{len(procs)} workers: {task[0]} seed {task[2] + 1}")
            elif kind == "epoch":
                self.ctx.progress.advance(self.config.epochs - event[3] if event[4] else 1)
            elif kind == "done":
                self._finish(task, *event[3:], time.perf_counter() - started[index])
                self.current[index], pending = None, pending - 1
            else:
                raise DeviceWorkerError(
                    f"study worker {index} raised while training {_name(task)}: {event[3]}"
                )

    def _check_alive(self, procs: list, heard: float) -> None:
        for i, p in enumerate(procs):
            if not p.is_alive() and p.exitcode != 0:
                raise DeviceWorkerError(
                    f"study worker {i} of {len(procs)} died (exit code {p.exitcode}) "
                    f"while training {_name(self.current.get(i))}"
                )
        if time.monotonic() - heard > STALL_S:
            raise DeviceWorkerError(f"no study worker reported for {STALL_S:.0f} s; stopped them all")

    def _finish(
        self, task: tuple, history: list, extra: dict, seconds: list, cpu: float, wall: float
    ) -> None:
        variant, _, seed = task
        self.runs[variant][seed] = (history, extra)
        self.walls[variant] += wall
        self.cpu[variant] += cpu
        clock = self.clocks[variant]
        for epoch, s in seconds:
            clock.seconds[epoch] = clock.seconds.get(epoch, 0.0) + s
            clock.steps[epoch] = clock.steps.get(epoch, 0) + self.steps
        if len(self.runs[variant]) == len(self.config.seed_list):
            self.on_variant(variant, self._entry(variant))

    def _entry(self, variant: str) -> dict:
        seeds = self.config.seed_list
        return runners.variant_entry(
            variant,
            self.paths[variant],
            self.walls[variant],
            self.clocks[variant],
            self.runs[variant],
            seeds,
            self.cpu[variant],
        )


def _name(task: tuple | None) -> str:
    return "nothing yet (starting up)" if task is None else f"{task[0]} seed {task[2]}"
