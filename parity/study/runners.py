"""The study's trainers: one adapter per execution path over the framework folders' loops.

Six variants of one training recipe (same architecture, same SGD, same data, same batch order);
the table of variants is :data:`parity.study.config.VARIANTS`. For each seed the PyTorch model
is built once and its initial weights are converted to Linen and NNX, so every variant of a
seed starts from the same weights and sees the same batches (:func:`parity.data.batch_order`);
only dropout randomness is framework-specific. The mode audit is measured on every epoch
(:class:`torch_impl.audit.ModeAudit`, the ``train_mode`` output of the Flax loops).
Torch and jax are imported only when a trainer runs.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parity import data
from parity.progress import Progress
from parity.study import models as study_models
from parity.study.config import VARIANTS, StudyConfig, StudyError, config_items

PATH_DESCRIPTIONS = {
    "torch": "eager PyTorch, one seed at a time",
    "loop": "jitted train_step in a Python loop, one seed at a time",
    "vmap": "one lax.scan epoch vmap-ed over all seeds at once (train_epoch_scan_seeds)",
    "nnx": "nnx.jit train_step in a Python loop, one seed at a time",
}


# ---------------------------------------------------------------------------- study setup


class EpochClock:
    """Wall time and steps of each epoch, summed over the seeds that ran it (one seed after the
    other, or all at once on the vmap path): the study's steady-state speed."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.seconds: dict[int, float] = {}
        self.steps: dict[int, int] = {}
        self.restart()

    def restart(self) -> None:
        """A new seed (or set of seeds) starts now; its set-up counts towards its first epoch."""
        self.last = time.perf_counter()

    def tick(self, epoch: int) -> None:
        """One seed finished ``epoch`` now (the loops sync with the device before reporting)."""
        now = time.perf_counter()
        self.seconds[epoch] = self.seconds.get(epoch, 0.0) + now - self.last
        self.steps[epoch] = self.steps.get(epoch, 0) + self.steps_per_epoch
        self.last = now

    def timing(self) -> dict:
        """``epoch_s`` (per epoch, all seeds), ``first_epoch_s`` (includes compiling the step),
        ``steady_epoch_s`` and ``steady_steps_per_s``: medians over epochs 2..E, so a step
        compiled later (the eval-mode step of a seed-bug variant, in epoch 2) does not count."""
        epochs = sorted(self.seconds)
        epoch_s = [self.seconds[e] for e in epochs]
        rates = [self.steps[e] / self.seconds[e] for e in epochs[1:] if self.seconds[e] > 0]
        return {
            "epoch_s": epoch_s,
            "first_epoch_s": epoch_s[0] if epoch_s else None,
            "steady_epoch_s": float(np.median(epoch_s[1:])) if len(epoch_s) > 1 else None,
            "steady_steps_per_s": float(np.median(rates)) if rates else None,
        }


@dataclass
class StudyContext:
    """Everything the variant runners share: data in both layouts and each seed's initial weights."""

    config: StudyConfig
    runtime: Any  # parity.device.Runtime
    x_train: np.ndarray  # (N, 1, ...) channels-first, torch
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_train_cl: np.ndarray  # (N, ..., 1) channels-last, Flax
    x_test_cl: np.ndarray
    torch_init: dict[int, Any]  # seed -> torch model with its initial weights (CPU)
    linen_init: dict[int, dict]  # seed -> {'params', 'batch_stats'} numpy, converted
    progress: Progress = field(default_factory=lambda: Progress("epochs", 0, enabled=False))
    clock: EpochClock = field(default_factory=lambda: EpochClock(0))

    def orders(self, seed: int) -> Callable[[int], list[np.ndarray]]:
        """``orders(epoch)``: seed ``seed``'s batch index arrays (:func:`parity.data.batch_order`)."""
        n, batch = len(self.y_train), self.config.batch_size
        return lambda epoch: data.batch_order(n, batch, seed, epoch)

    def flax_batches(self, seed: int) -> Callable[[int], Any]:
        c = self.config
        return lambda epoch: data.iterate_batches(self.x_train_cl, self.y_train, c.batch_size, seed, epoch)


def _record(rec: dict) -> dict:
    """A loop's per-epoch record in the study's schema (floats; ``step_losses`` dropped; ``evals``:
    the loop's own evaluations in the epoch, each after ``step`` training steps of the run)."""
    return {
        "epoch": int(rec["epoch"]),
        "train_loss": float(rec["train_loss"]),
        "test_loss": float(rec["test_loss"]),
        "test_acc": float(rec["test_acc"]),
        "train_mode": float(rec["train_mode"]),
        "diverged": bool(rec["diverged"]),
        "evals": [
            {"step": int(e["step"]), "test_loss": float(e["test_loss"]), "test_acc": float(e["test_acc"])}
            for e in rec.get("evals", [])
        ],
    }


def _seed_result(seed: int, history: list[dict], extra: dict) -> dict:
    epochs = [_record(r) for r in history]
    diverged_at = next((r["epoch"] for r in epochs if r["diverged"]), None)
    return {
        "seed": seed,
        "diverged": diverged_at is not None,
        "diverged_epoch": diverged_at,
        "epochs": epochs,
    } | extra


# -------------------------------------------------------------------------- variant runners
#
# One adapter shape. A per-seed adapter trains one seed of a variant with its framework's loop:
# ``train_seed(variant, seed, ctx, on_epoch) -> (history, extra per-seed fields)``, calling
# ``on_epoch(record)`` after every epoch; :func:`_each_seed` runs it seed after seed. The Linen
# vmap path trains every seed at once and has the :data:`TrainSeeds` shape directly.

#: ``on_epoch(seed, record)``: the driver's per-epoch callback (progress, timing)
OnSeedEpoch = Callable[[int, dict], None]
#: ``train(variant, ctx, on_epoch) -> {seed: (history, extra per-seed fields)}``
TrainSeeds = Callable[[str, StudyContext, OnSeedEpoch], dict[int, tuple[list[dict], dict]]]
TrainSeed = Callable[[str, int, StudyContext, Callable[[dict], None]], tuple[list[dict], dict]]


def _each_seed(train_seed: TrainSeed) -> TrainSeeds:
    """A :data:`TrainSeeds` that runs ``train_seed`` for seed 0, 1, ... in turn."""

    def train(variant: str, ctx: StudyContext, on_epoch: OnSeedEpoch) -> dict[int, tuple[list[dict], dict]]:
        out = {}
        for seed in ctx.config.seed_list:
            ctx.progress.describe(f"{variant}  seed {seed + 1}/{ctx.config.seeds}")
            ctx.clock.restart()
            out[seed] = train_seed(variant, seed, ctx, functools.partial(on_epoch, seed))
        return out

    return train


def _torch_seed(variant: str, seed: int, ctx: StudyContext, on_epoch: Callable[[dict], None]) -> tuple:
    """One seed of a torch variant, under the mode audit and the recording runtime guard. On a
    GPU the training and test sets live on the device and batches are gathered there
    (``torch_impl.train.device_batches``)."""
    import torch

    from torch_impl import train as torch_train
    from torch_impl.audit import ModeAudit
    from torch_impl.guard import ModeError, training_guard

    c, device = ctx.config, ctx.runtime.torch_device
    loop = torch_train.fit if variant == "torch_correct" else torch_train.fit_seed_bug
    model = copy.deepcopy(ctx.torch_init[seed]).to(device)
    guard: dict = {}  # the first step the runtime guard objects to
    epochs_done: list[int] = []

    def on_violation(err: ModeError) -> None:
        guard.setdefault("epoch", len(epochs_done))
        guard.setdefault("modules", err.in_eval)

    def audited(rec: dict) -> None:
        rec["train_mode"] = audit.fraction()  # measured on this epoch's training passes
        audit.reset()
        epochs_done.append(rec["epoch"])
        on_epoch(rec)

    rng_devices = [device.index or 0] if device.type == "cuda" else []
    test_set = tuple(torch.from_numpy(a).to(device) for a in (ctx.x_test, ctx.y_test))
    with (
        torch.random.fork_rng(devices=rng_devices),
        ModeAudit(model) as audit,
        training_guard(model, on_violation=on_violation),
    ):
        torch.manual_seed(seed)  # dropout masks; caller's RNG state restored after
        batches = torch_train.device_batches(ctx.x_train, ctx.y_train, ctx.orders(seed), device)
        optimizer = torch_train.make_optimizer(model, c.lr, c.momentum)
        history = loop(
            model, optimizer, batches, test_set, c.epochs, device, audited, eval_every=c.eval_every
        )
    return history, {"guard_epoch": guard.get("epoch"), "guard_modules": guard.get("modules", [])}


def _linen_seed(variant: str, seed: int, ctx: StudyContext, on_epoch: Callable[[dict], None]) -> tuple:
    """One seed of a Linen variant: a Python loop of jitted steps (``fit`` / ``fit_bug_emulated``)."""
    import jax

    from flax_impl import linen_train as linen_train

    c = ctx.config
    fit = linen_train.fit if variant == "linen" else linen_train.fit_bug_emulated
    module = study_models.linen_module(c.model_name, config_items(c))
    tx = linen_train.make_optimizer(c.lr, c.momentum)
    state = linen_train.create_train_state(module, jax.device_put(ctx.linen_init[seed]), tx)
    test_set = (ctx.x_test_cl, ctx.y_test)
    rng = jax.random.key(seed)
    _, history = fit(state, ctx.flax_batches(seed), test_set, c.epochs, rng, on_epoch, c.eval_every)
    return history, {}


def _linen_seeds_vmap(variant: str, ctx: StudyContext, on_epoch: OnSeedEpoch) -> dict:
    """Every seed of a Linen variant at once: ``fit_seeds`` / ``fit_bug_emulated_seeds`` (one
    ``lax.scan`` epoch ``vmap``-ed over the seeds). Same batches and dropout keys as the loop."""
    import jax
    import jax.numpy as jnp

    from flax_impl import linen_train as linen_train

    c, seeds = ctx.config, ctx.config.seed_list
    fit = linen_train.fit_seeds if variant == "linen" else linen_train.fit_bug_emulated_seeds
    module = study_models.linen_module(c.model_name, config_items(c))
    tx = linen_train.make_optimizer(c.lr, c.momentum)
    states = linen_train.create_seed_states(module, [ctx.linen_init[s] for s in seeds], tx)
    orders = [ctx.orders(s) for s in seeds]
    ctx.progress.describe(f"{variant}  {c.seeds} seeds (vmap)")
    _, histories = fit(
        states,
        (ctx.x_train_cl, ctx.y_train),
        lambda epoch: np.stack([np.stack(order(epoch)) for order in orders]),
        (ctx.x_test_cl, ctx.y_test),
        c.epochs,
        jnp.stack([jax.random.key(s) for s in seeds]),
        on_epoch=lambda i, rec: on_epoch(seeds[i], rec),
        eval_every=c.eval_every,
    )
    return {s: (h, {}) for s, h in zip(seeds, histories, strict=True)}


def _nnx_seed(variant: str, seed: int, ctx: StudyContext, on_epoch: Callable[[dict], None]) -> tuple:
    """One seed of an NNX variant (``fit_seed_bug`` / ``fit_view``); dropout from ``Rngs(seed)``."""
    from flax_impl import nnx_train

    c = ctx.config
    fit = nnx_train.fit_seed_bug if variant == "nnx_seed_bug" else nnx_train.fit_view
    model = study_models.build_nnx(c.model_name, seed, c.model_config)
    study_models.load_nnx(c.model_name, ctx.torch_init[seed], model)
    optimizer = nnx_train.make_optimizer(model, c.lr, c.momentum)
    test_set = (ctx.x_test_cl, ctx.y_test)
    history = fit(model, optimizer, ctx.flax_batches(seed), test_set, c.epochs, on_epoch, c.eval_every)
    return history, {}


#: per-seed execution path -> its one-seed trainer (:mod:`parity.study.devices` runs these in
#: worker processes)
SEED_TRAINERS: dict[str, TrainSeed] = {"torch": _torch_seed, "loop": _linen_seed, "nnx": _nnx_seed}

#: execution path -> how its variants are trained (the Linen framework has two paths)
RUNNERS: dict[str, TrainSeeds] = {
    "torch": _each_seed(_torch_seed),
    "loop": _each_seed(_linen_seed),
    "vmap": _linen_seeds_vmap,
    "nnx": _each_seed(_nnx_seed),
}


def variant_path(variant: str, linen_path: str) -> str:
    """The execution path (a key of :data:`RUNNERS`) of ``variant`` given the resolved Linen path."""
    framework = VARIANTS[variant][0]
    return linen_path if framework == "linen" else framework


def resolve_linen_path(linen_path: str, device: str, eval_every: int | str = "epoch") -> str:
    """``auto`` -> ``vmap`` on a GPU, ``loop`` on CPU (where scan is ~18x slower for these convs
    and vmap-over-seeds slower still; measured numbers in docs/STUDY.md), and ``loop`` whenever
    ``eval_every`` is a step count (one scan per epoch cannot evaluate inside an epoch)."""
    if linen_path == "auto":
        return "vmap" if device == "cuda" and not isinstance(eval_every, int) else "loop"
    return linen_path


def configure_runtime(device: str, precision: str, warn: Callable[[str], None] | None = None) -> Any:
    """:func:`parity.device.configure`, except that ``auto`` falls back to the CPU, with a
    warning through ``warn`` (default: a ``RuntimeWarning``), when torch sees a GPU but jax has
    no GPU backend (``auto`` means "the GPU when both frameworks see one"). ``cpu`` and ``cuda``
    are passed through unchanged: ``cuda`` that cannot be honoured raises
    :class:`parity.device.DeviceError`."""
    import warnings

    from parity.device import DeviceError, configure

    try:
        return configure(device, precision)
    except DeviceError as e:
        if device != "auto":
            raise
        message = f"--device auto: {e}; running both frameworks on the CPU"
        if warn is None:
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        else:
            warn(message)
        return configure("cpu", precision)


def variant_entry(
    variant: str, path: str, wall: float, clock: EpochClock, runs: dict, seeds: list[int], cpu: float
) -> dict:
    """The entry of ``results['variants']`` for ``variant`` trained on ``path``: ``runs`` maps
    each seed to ``(history, extra per-seed fields)``; ``wall`` seconds; ``clock`` its epochs;
    ``cpu`` the CPU seconds (user + system, every thread) of the processes that trained it: a
    ``cpu_s`` above ``wall_time_s`` means the variant kept more than one core busy."""
    framework, correct, description = VARIANTS[variant]
    return {
        "framework": framework,
        "correct": correct,
        "description": description,
        "path": path,
        "path_description": PATH_DESCRIPTIONS[path],
        "wall_time_s": wall,
        "cpu_s": cpu,
        "timing": clock.timing(),
        "seeds": [_seed_result(seed, *runs[seed]) for seed in seeds],
    }


def build_context(config: StudyConfig, runtime: Any) -> tuple[StudyContext, data.Dataset]:
    """Load the data (the first ``train_subset`` training examples) and build each seed's
    initial weights: the torch model, converted to Linen's variables."""
    ds = data.load(config.dataset)
    n = len(ds.x_train) if config.train_subset is None else min(config.train_subset, len(ds.x_train))
    if config.batch_size > n:
        raise StudyError(f"batch_size {config.batch_size} is larger than the {n} training examples")
    x_train_cl, x_test_cl = ds.channels_last()
    torch_init, linen_init = {}, {}
    for seed in config.seed_list:
        torch_init[seed] = study_models.build_torch(config.model_name, seed, config.model_config)
        linen_init[seed] = study_models.linen_variables(
            config.model_name, torch_init[seed], config_items(config), x_train_cl
        )
    ctx = StudyContext(
        config,
        runtime,
        ds.x_train[:n],
        ds.y_train[:n],
        ds.x_test,
        ds.y_test,
        x_train_cl[:n],
        x_test_cl,
        torch_init,
        linen_init,
    )
    return ctx, ds


def study_context(config: StudyConfig, runtime: Any) -> StudyContext:
    """What every variant runner shares (data in both layouts, each seed's initial weights), for
    tools that retrace one run of the study (:mod:`parity.study.bn_split`)."""
    return build_context(config, runtime)[0]
