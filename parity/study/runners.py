"""The misplacement study: every mode-handling variant, trained over seeds, audited, compared.

Six variants of one training recipe (same architecture, same SGD, same data, same batch order):

=====================  ========  =============================================================
variant                framework how the mode is handled
=====================  ========  =============================================================
``torch_correct``      PyTorch   ``model.train()`` at the start of every epoch
``torch_seed_bug``     PyTorch   the blog's loop: ``model.train()`` once, ``test()`` leaves eval
``linen``              Linen     ``train=True`` passed to every training step
``linen_bug_emulated`` Linen     the seed's schedule written out: ``train=False`` after epoch 1
``nnx_seed_bug``       NNX       the blog's loop with NNX's ``.train()`` / ``.eval()``
``nnx_view``           NNX       ``nnx.view`` train and eval views; no mode is ever switched
=====================  ========  =============================================================

For each seed the PyTorch model is built once (``torch_impl.models.build_model(..., seed=seed)``)
and its initial weights are converted to Linen and NNX (:mod:`parity.convert`), so every variant
of a seed starts from the same weights and sees the same batches
(:func:`parity.data.batch_order`); only dropout randomness is framework-specific (torch:
``torch.manual_seed(seed)``; Linen: ``jax.random.key(seed)``; NNX: ``nnx.Rngs(seed)``).
Differences against ``torch_correct`` are therefore paired per seed.

Every epoch records the train loss, the test loss and accuracy, and the measured share of
BatchNorm / Dropout calls that ran in training mode during training steps (the mode audit:
:class:`torch_impl.audit.ModeAudit` for torch, the ``train_mode`` output of the Flax loops).

Library use::

    from parity.study.runners import StudyConfig, run_study
    from parity.study.outputs import write_outputs
    results = run_study(StudyConfig(dataset="digits", seeds=3, epochs=10))
    write_outputs(results, "study-out")

Torch and jax are imported only when a study runs, so ``parity study --help`` is instant.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from parity import data
from parity.progress import Progress
from parity.registry import DATASET_MODEL, STUDY_MODEL_DATASET
from parity.study import models as study_models

#: variant -> (framework, correct?, one-line description)
VARIANTS: dict[str, tuple[str, bool, str]] = {
    "torch_correct": ("torch", True, "model.train() at the start of every epoch; evaluate() sets eval"),
    "torch_seed_bug": (
        "torch",
        False,
        "the blog's loop: model.train() once before the epoch loop; test() sets eval and never restores",
    ),
    "linen": ("linen", True, "train=True passed to every training step; eval is another function"),
    "linen_bug_emulated": (
        "linen",
        False,
        "the seed's schedule written explicitly: train=False in training steps after epoch 1",
    ),
    "nnx_seed_bug": ("nnx", False, "the blog's loop in NNX: model.train() once; evaluate() leaves eval()"),
    "nnx_view": ("nnx", True, "nnx.view train and eval views of the same weights; nothing switched"),
}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)

#: dataset -> architecture name in torch_impl.models / flax_impl.*_models
STUDY_DATASETS: tuple[str, ...] = tuple(DATASET_MODEL)
#: every architecture ``--model`` trains (the default for a dataset first; see parity.study.models)
STUDY_MODELS: tuple[str, ...] = tuple(STUDY_MODEL_DATASET)
#: ``--eval-every`` words: after every epoch (the default, as the blog), or only at the end
EVAL_SCHEDULES: tuple[str, ...] = ("epoch", "end")

#: ``--quick``: a first look in well under a minute on a 2-core CPU (see docs/STUDY.md)
QUICK = {"seeds": 3, "epochs": 10}

#: Linen execution paths: a Python loop of jitted steps (one seed at a time), or one
#: ``lax.scan`` epoch ``vmap``-ed over all seeds at once. ``auto``: loop on CPU, vmap on GPU.
LINEN_PATHS = ("auto", "loop", "vmap")

#: smallest batch the study trains with, in every framework: BatchNorm's batch statistics need
#: two examples (torch raises "Expected more than 1 value per channel" for one)
MIN_BATCH_SIZE = 2

#: torch intra-op threads on CPU unless configured: these models are too small for intra-op
#: parallelism to pay, and OpenMP threads waiting at barriers collapse when the cores are shared
#: (measured on the loaded 2-core dev box: 0.31 s/epoch with 1 thread, 1.7-11.5 s with 2; numbers
#: in docs/STUDY.md).
CPU_TORCH_THREADS = 1

PATH_DESCRIPTIONS = {
    "torch": "eager PyTorch, one seed at a time",
    "loop": "jitted train_step in a Python loop, one seed at a time",
    "vmap": "one lax.scan epoch vmap-ed over all seeds at once (train_epoch_scan_seeds)",
    "nnx": "nnx.jit train_step in a Python loop, one seed at a time",
}


@dataclass(frozen=True)
class StudyConfig:
    """What to train. Defaults are the full study (``parity study``); see :data:`QUICK`.

    ``model`` is one of :data:`STUDY_MODELS` trained on ``dataset`` (``None``: the dataset's own,
    ``signal1d`` / ``digits``). ``eval_every``: when the loops evaluate inside training,
    ``"epoch"``, ``"end"`` or a step count (``torch_impl.train.EvalSchedule``).
    ``model_config`` is passed to every framework's model builder (``channels``, ``hidden``,
    ``dropout``); empty means the architecture's defaults. ``train_subset`` keeps only the first
    N training examples (smoke tests). Seeds are ``0 .. seeds-1``. ``torch_threads``: torch's
    intra-op threads during the study (restored after); ``None`` = 1 on CPU (see
    :data:`CPU_TORCH_THREADS`), torch's own setting on a GPU. ``devices``: how many devices
    (GPUs, or CPU worker processes / simulated jax devices) the seeds are spread over
    (:mod:`parity.study.devices`); the numbers are those of ``devices=1``.
    """

    dataset: str = "mnist1d"
    seeds: int = 8
    epochs: int = 30
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 128
    variants: tuple[str, ...] = VARIANT_NAMES
    device: str = "auto"
    precision: str = "strict"
    linen_path: str = "auto"
    model_config: dict = field(default_factory=dict)
    train_subset: int | None = None
    torch_threads: int | None = None
    model: str | None = None
    eval_every: int | str = "epoch"
    devices: int = 1

    @property
    def model_name(self) -> str:
        """``model``, or the dataset's own: ``signal1d`` for mnist1d, ``digits`` for digits."""
        return self.model or DATASET_MODEL[self.dataset]

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the valid choices for any bad field."""
        from parity.device import DEVICES, PRECISIONS

        def choose(what: str, value: Any, choices: Sequence[str]) -> None:
            if value not in choices:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")

        choose("dataset", self.dataset, STUDY_DATASETS)
        self._validate_model_and_schedule()
        for v in self.variants:
            choose("variant", v, VARIANT_NAMES)
        if not self.variants:
            raise ValueError(f"no variant chosen; choose from {', '.join(VARIANT_NAMES)}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat: {', '.join(self.variants)}")
        choose("device", self.device, DEVICES)
        choose("precision", self.precision, PRECISIONS)
        choose("Linen path", self.linen_path, LINEN_PATHS)
        for name in ("seeds", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < MIN_BATCH_SIZE:
            raise ValueError(
                f"batch size must be >= {MIN_BATCH_SIZE}, got {self.batch_size}: BatchNorm in "
                "training mode needs more than one example per batch (torch refuses batch 1, "
                "Flax would silently zero the dense layer's normalised activations)"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.devices < 1:
            raise ValueError(f"devices must be >= 1, got {self.devices}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise ValueError(
                f"train_subset {self.train_subset} is smaller than one batch ({self.batch_size})"
            )

    def _validate_model_and_schedule(self) -> None:
        if self.model is not None:
            if self.model not in STUDY_MODELS:
                raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(STUDY_MODELS)}")
            if STUDY_MODEL_DATASET[self.model] != self.dataset:
                raise ValueError(
                    f"model {self.model} trains on {STUDY_MODEL_DATASET[self.model]}, not {self.dataset}"
                )
        every = self.eval_every
        if not (
            every in EVAL_SCHEDULES or (isinstance(every, int) and not isinstance(every, bool) and every >= 1)
        ):
            raise ValueError(
                f"eval_every must be a step count >= 1 or one of {', '.join(EVAL_SCHEDULES)}, got {every!r}"
            )

    def to_dict(self) -> dict:
        """JSON-ready configuration (tuples become lists)."""
        d = asdict(self)
        d["variants"] = list(self.variants)
        d["model_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_config.items()}
        d["model"] = self.model_name
        d["seed_list"] = self.seed_list
        return d


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
class _Context:
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


def config_items(config: StudyConfig) -> tuple:
    """``config.model_config`` as a hashable key (sorted items, lists as tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.model_config.items()))


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
TrainSeeds = Callable[[str, _Context, OnSeedEpoch], dict[int, tuple[list[dict], dict]]]
TrainSeed = Callable[[str, int, _Context, Callable[[dict], None]], tuple[list[dict], dict]]


def _each_seed(train_seed: TrainSeed) -> TrainSeeds:
    """A :data:`TrainSeeds` that runs ``train_seed`` for seed 0, 1, ... in turn."""

    def train(variant: str, ctx: _Context, on_epoch: OnSeedEpoch) -> dict[int, tuple[list[dict], dict]]:
        out = {}
        for seed in ctx.config.seed_list:
            ctx.progress.describe(f"{variant}  seed {seed + 1}/{ctx.config.seeds}")
            ctx.clock.restart()
            out[seed] = train_seed(variant, seed, ctx, functools.partial(on_epoch, seed))
        return out

    return train


def _torch_seed(variant: str, seed: int, ctx: _Context, on_epoch: Callable[[dict], None]) -> tuple:
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


def _linen_seed(variant: str, seed: int, ctx: _Context, on_epoch: Callable[[dict], None]) -> tuple:
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


def _linen_seeds_vmap(variant: str, ctx: _Context, on_epoch: OnSeedEpoch) -> dict:
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


def _nnx_seed(variant: str, seed: int, ctx: _Context, on_epoch: Callable[[dict], None]) -> tuple:
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


# ------------------------------------------------------------------------------- the study


def _train_variant(variant: str, ctx: _Context, linen_path: str, steps_per_epoch: int) -> dict:
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


def _train_variants(ctx: _Context, linen_path: str, progress: bool, steps_per_epoch: int) -> dict[str, dict]:
    """Run every variant of ``ctx.config`` in order under one progress bar; name -> result."""
    config = ctx.config
    variants: dict[str, dict] = {}
    with Progress("epochs", len(config.variants) * config.seeds * config.epochs, enabled=progress) as bar:
        ctx.progress = bar
        for variant in config.variants:
            result = variants[variant] = _train_variant(variant, ctx, linen_path, steps_per_epoch)
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


def _context(config: StudyConfig, runtime: Any) -> tuple[_Context, data.Dataset]:
    """Load the data (the first ``train_subset`` training examples) and build each seed's
    initial weights: the torch model, converted to Linen's variables."""
    ds = data.load(config.dataset)
    n = len(ds.x_train) if config.train_subset is None else min(config.train_subset, len(ds.x_train))
    if config.batch_size > n:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {n} training examples")
    x_train_cl, x_test_cl = ds.channels_last()
    torch_init, linen_init = {}, {}
    for seed in config.seed_list:
        torch_init[seed] = study_models.build_torch(config.model_name, seed, config.model_config)
        linen_init[seed] = study_models.linen_variables(
            config.model_name, torch_init[seed], config_items(config), x_train_cl
        )
    ctx = _Context(
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


def study_context(config: StudyConfig, runtime: Any) -> _Context:
    """What every variant runner shares (data in both layouts, each seed's initial weights), for
    tools that retrace one run of the study (:mod:`parity.study.bn_split`)."""
    return _context(config, runtime)[0]


def run_study(config: StudyConfig, progress: bool = True, runtime: Any = None) -> dict:
    """Train every variant of ``config`` over its seeds and return the results (JSON-ready).

    ``runtime`` is a :class:`parity.device.Runtime` from :func:`configure_runtime`; if omitted
    it is configured here from ``config.device`` / ``config.precision`` (raising
    :class:`parity.device.DeviceError` for cuda without a GPU). ``progress`` shows the progress
    bar (:class:`parity.progress.Progress`) on stderr. Returns::

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
    steady state (:class:`EpochClock`). Non-finite floats stay ``nan`` here;
    :mod:`parity.study.report` writes them as ``null``.
    """
    config.validate()
    runtime = runtime or configure_runtime(config.device, config.precision)
    import torch

    started = time.perf_counter()
    ctx, ds = _context(config, runtime)
    n = len(ctx.y_train)
    linen_path = resolve_linen_path(config.linen_path, runtime.device, config.eval_every)
    threads = config.torch_threads or (
        CPU_TORCH_THREADS if runtime.device == "cpu" else torch.get_num_threads()
    )
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        train = _train_variants
        if config.devices > 1:
            from parity.study.devices import train_variants as train
        variants = train(ctx, linen_path, progress, n // config.batch_size)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "schema": 1,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "config": config.to_dict(),
        "environment": _environment(runtime, linen_path, threads),
        "model": {
            "name": config.model_name,
            "params": int(sum(p.numel() for p in ctx.torch_init[0].parameters())),
            "num_classes": int(ds.num_classes),
            "train_examples": int(n),
            "test_examples": len(ds.x_test),
            "steps_per_epoch": n // config.batch_size,
        },
        "total_wall_time_s": time.perf_counter() - started,
        "variants": variants,
    }
