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
    from parity.study.report import write_outputs
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
from parity.registry import DATASET_MODEL

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

#: ``--quick``: a first look in well under a minute on a 2-core CPU (see docs/STUDY.md)
QUICK = {"seeds": 3, "epochs": 10}

#: Linen execution paths: a Python loop of jitted steps (one seed at a time), or one
#: ``lax.scan`` epoch ``vmap``-ed over all seeds at once. ``auto``: loop on CPU, vmap on GPU.
LINEN_PATHS = ("auto", "loop", "vmap")

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

    ``model_config`` is passed to every framework's ``build_model`` (``channels``, ``hidden``,
    ``dropout``); empty means the architecture's defaults. ``train_subset`` keeps only the first
    N training examples (smoke tests). Seeds are ``0 .. seeds-1``. ``torch_threads``: torch's
    intra-op threads during the study (restored after); ``None`` = 1 on CPU (see
    :data:`CPU_TORCH_THREADS`), torch's own setting on a GPU.
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

    @property
    def model_name(self) -> str:
        """``signal1d`` for mnist1d, ``digits`` for digits."""
        return DATASET_MODEL[self.dataset]

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
        for v in self.variants:
            choose("variant", v, VARIANT_NAMES)
        if not self.variants:
            raise ValueError(f"no variant chosen; choose from {', '.join(VARIANT_NAMES)}")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants repeat: {', '.join(self.variants)}")
        choose("device", self.device, DEVICES)
        choose("precision", self.precision, PRECISIONS)
        choose("Linen path", self.linen_path, LINEN_PATHS)
        for name in ("seeds", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise ValueError(
                f"train_subset {self.train_subset} is smaller than one batch ({self.batch_size})"
            )

    def to_dict(self) -> dict:
        """JSON-ready configuration (tuples become lists)."""
        d = asdict(self)
        d["variants"] = list(self.variants)
        d["model_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_config.items()}
        d["model"] = self.model_name
        d["seed_list"] = self.seed_list
        return d


# ------------------------------------------------------------------------------- progress


class _Progress:
    """One rich progress bar over variant x seed x epoch, on stderr; silent when disabled."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]{task.description:<34}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("epochs"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task("starting", total=total)

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)

    def describe(self, text: str) -> None:
        if self.enabled:
            self.bar.update(self.task, description=text)

    def advance(self, n: int = 1) -> None:
        if self.enabled:
            self.bar.advance(self.task, n)

    def log(self, text: str) -> None:
        if self.enabled:
            self.bar.console.print(text, highlight=False)


# ---------------------------------------------------------------------------- study setup


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
    progress: _Progress

    def torch_batches(self, seed: int) -> Callable[[int], Any]:
        c = self.config
        return lambda epoch: data.iterate_batches(self.x_train, self.y_train, c.batch_size, seed, epoch)

    def flax_batches(self, seed: int) -> Callable[[int], Any]:
        c = self.config
        return lambda epoch: data.iterate_batches(self.x_train_cl, self.y_train, c.batch_size, seed, epoch)


@functools.cache
def _linen_module(name: str, config_items: tuple) -> Any:
    """One Linen module per architecture config. ``TrainState.apply_fn`` is static under jit and
    bound methods compare by identity, so reusing one module lets jit reuse its compilation."""
    from flax_impl import linen_models

    return linen_models.build_model(name, **dict(config_items))


def _config_items(config: StudyConfig) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.model_config.items()))


def _record(rec: dict) -> dict:
    """A loop's per-epoch record in the study's schema (floats; ``step_losses`` dropped)."""
    return {
        "epoch": int(rec["epoch"]),
        "train_loss": float(rec["train_loss"]),
        "test_loss": float(rec["test_loss"]),
        "test_acc": float(rec["test_acc"]),
        "train_mode": float(rec["train_mode"]),
        "diverged": bool(rec["diverged"]),
    }


def _seed_result(seed: int, history: list[dict]) -> dict:
    epochs = [_record(r) for r in history]
    diverged_at = next((r["epoch"] for r in epochs if r["diverged"]), None)
    return {
        "seed": seed,
        "diverged": diverged_at is not None,
        "diverged_epoch": diverged_at,
        "epochs": epochs,
    }


# -------------------------------------------------------------------------- variant runners


def _run_torch(variant: str, ctx: _Context) -> tuple[list[dict], str]:
    import torch

    from torch_impl import train as torch_train
    from torch_impl.audit import ModeAudit
    from torch_impl.guard import ModeError, training_guard

    c = ctx.config
    loop = torch_train.fit if variant == "torch_correct" else torch_train.fit_seed_bug
    device = ctx.runtime.torch_device
    out = []
    for seed in c.seed_list:
        ctx.progress.describe(f"{variant}  seed {seed + 1}/{c.seeds}")
        model = copy.deepcopy(ctx.torch_init[seed]).to(device)
        optimizer = torch_train.make_optimizer(model, c.lr, c.momentum)
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        guard: dict = {}  # the first step the runtime guard objects to
        epochs_done = []

        def on_violation(err: ModeError) -> None:
            guard.setdefault("epoch", len(epochs_done))
            guard.setdefault("modules", err.in_eval)

        with (
            torch.random.fork_rng(devices=rng_devices),
            ModeAudit(model) as audit,
            training_guard(model, on_violation=on_violation),
        ):
            torch.manual_seed(seed)  # dropout masks; caller's RNG state restored after

            def on_epoch(rec: dict) -> None:
                rec["train_mode"] = audit.fraction()  # measured on this epoch's training passes
                audit.reset()
                epochs_done.append(rec["epoch"])
                ctx.progress.advance()

            history = loop(
                model,
                optimizer,
                ctx.torch_batches(seed),
                (ctx.x_test, ctx.y_test),
                c.epochs,
                device=device,
                on_epoch=on_epoch,
            )
        ctx.progress.advance(c.epochs - len(history))  # stopped early: diverged
        out.append(
            _seed_result(seed, history)
            | {"guard_epoch": guard.get("epoch"), "guard_modules": guard.get("modules", [])}
        )
    return out, "torch"


def _run_linen_loop(variant: str, ctx: _Context) -> tuple[list[dict], str]:
    import jax

    from flax_impl import linen_train as linen_train

    c = ctx.config
    fit = linen_train.fit if variant == "linen" else linen_train.fit_bug_emulated
    module = _linen_module(c.model_name, _config_items(c))
    out = []
    for seed in c.seed_list:
        ctx.progress.describe(f"{variant}  seed {seed + 1}/{c.seeds}")
        tx = linen_train.make_optimizer(c.lr, c.momentum)
        state = linen_train.create_train_state(module, jax.device_put(ctx.linen_init[seed]), tx)
        _, history = fit(
            state,
            ctx.flax_batches(seed),
            (ctx.x_test_cl, ctx.y_test),
            c.epochs,
            jax.random.key(seed),
            on_epoch=lambda rec: ctx.progress.advance(),
        )
        ctx.progress.advance(c.epochs - len(history))
        out.append(_seed_result(seed, history))
    return out, "loop"


@functools.cache
def _eval_seeds() -> Callable:
    """``flax_impl.linen_train.eval_step`` vmap-ed over the seed axis of the states (data shared)."""
    import jax

    from flax_impl import linen_train as linen_train

    return jax.jit(jax.vmap(linen_train.eval_step, in_axes=(0, None)))


def _run_linen_vmap(variant: str, ctx: _Context) -> tuple[list[dict], str]:
    """All seeds at once: ``train_epoch_scan_seeds`` (one ``lax.scan`` epoch, ``vmap`` over seeds).

    Step ``i`` of epoch ``e`` of seed ``s`` uses dropout key ``fold_in(fold_in(key(s), e), i)``
    and the batches of ``batch_order(n, batch_size, s, e)``: the same as the loop path. A seed
    whose epoch loss is not finite is marked diverged and its later epochs are not recorded,
    as the loops do (the other seeds go on).
    """
    import jax
    import jax.numpy as jnp

    from flax_impl import linen_train as linen_train

    c = ctx.config
    seeds = c.seed_list
    module = _linen_module(c.model_name, _config_items(c))
    tx = linen_train.make_optimizer(c.lr, c.momentum)
    states = linen_train.create_seed_states(module, [ctx.linen_init[s] for s in seeds], tx)
    x, y = jax.device_put(ctx.x_train_cl), jax.device_put(ctx.y_train)
    test = (jax.device_put(ctx.x_test_cl), jax.device_put(ctx.y_test))
    keys = [jax.random.key(s) for s in seeds]
    histories: dict[int, list[dict]] = {s: [] for s in seeds}
    active = set(seeds)
    ctx.progress.describe(f"{variant}  {c.seeds} seeds (vmap)")
    for epoch in range(c.epochs):
        idx = np.stack(
            [np.stack(data.batch_order(len(ctx.x_train_cl), c.batch_size, s, epoch)) for s in seeds]
        )
        rngs = jnp.stack([jax.random.fold_in(k, epoch) for k in keys])
        train = variant == "linen" or epoch == 0  # linen_bug_emulated: train=False after epoch 1
        states, metrics = linen_train.train_epoch_scan_seeds(
            states, x, y, jnp.asarray(idx), rngs, train=train
        )
        test_loss, test_acc = _eval_seeds()(states, test)
        metrics, test_loss, test_acc = jax.device_get((metrics, test_loss, test_acc))
        for i, s in enumerate(seeds):
            if s not in active:
                continue
            mean = float(np.mean(metrics["loss"][i]))
            histories[s].append(
                {
                    "epoch": epoch,
                    "train_loss": mean,
                    "test_loss": float(test_loss[i]),
                    "test_acc": float(test_acc[i]),
                    "train_mode": float(np.mean(metrics["train_mode"][i])),
                    "diverged": not math.isfinite(mean),
                }
            )
            ctx.progress.advance()
            if histories[s][-1]["diverged"]:
                active.discard(s)
                ctx.progress.advance(c.epochs - epoch - 1)
        if not active:
            break
    return [_seed_result(s, histories[s]) for s in seeds], "vmap"


def _run_nnx(variant: str, ctx: _Context) -> tuple[list[dict], str]:
    from flax_impl import nnx_models, nnx_train
    from parity.convert import torch_to_nnx

    c = ctx.config
    fit = nnx_train.fit_seed_bug if variant == "nnx_seed_bug" else nnx_train.fit_view
    out = []
    for seed in c.seed_list:
        ctx.progress.describe(f"{variant}  seed {seed + 1}/{c.seeds}")
        template = ctx.torch_init[seed]
        model = nnx_models.build_model(c.model_name, seed=seed, **c.model_config)  # dropout rngs: Rngs(seed)
        torch_to_nnx(template.state_dict(), template, model)
        optimizer = nnx_train.make_optimizer(model, c.lr, c.momentum)
        history = fit(
            model,
            optimizer,
            ctx.flax_batches(seed),
            (ctx.x_test_cl, ctx.y_test),
            c.epochs,
            on_epoch=lambda rec: ctx.progress.advance(),
        )
        ctx.progress.advance(c.epochs - len(history))
        out.append(_seed_result(seed, history))
    return out, "nnx"


def resolve_linen_path(linen_path: str, device: str) -> str:
    """``auto`` -> ``vmap`` on a GPU, ``loop`` on CPU (where scan is ~18x slower for these convs
    and vmap-over-seeds slower still; measured numbers in docs/STUDY.md)."""
    if linen_path == "auto":
        return "vmap" if device == "cuda" else "loop"
    return linen_path


def _runner(variant: str, linen_path: str) -> Callable[[str, _Context], tuple[list[dict], str]]:
    framework = VARIANTS[variant][0]
    if framework == "torch":
        return _run_torch
    if framework == "nnx":
        return _run_nnx
    return _run_linen_vmap if linen_path == "vmap" else _run_linen_loop


# ------------------------------------------------------------------------------- the study


def _environment(runtime: Any, linen_path: str) -> dict:
    from importlib import metadata

    from parity.device import library_versions

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
        "linen_path": linen_path,
    }


def _train_variants(ctx: _Context, linen_path: str, progress: bool) -> dict[str, dict]:
    """Run every variant of ``ctx.config`` in order under one progress bar; name -> result."""
    config = ctx.config
    variants: dict[str, dict] = {}
    with _Progress(progress, len(config.variants) * config.seeds * config.epochs) as bar:
        ctx.progress = bar
        for variant in config.variants:
            t0 = time.perf_counter()
            seeds, path = _runner(variant, linen_path)(variant, ctx)
            wall = time.perf_counter() - t0
            framework, correct, description = VARIANTS[variant]
            variants[variant] = {
                "framework": framework,
                "correct": correct,
                "description": description,
                "path": path,
                "path_description": PATH_DESCRIPTIONS[path],
                "wall_time_s": wall,
                "seeds": seeds,
            }
            final = [s["epochs"][-1]["test_acc"] for s in seeds]
            diverged = sum(s["diverged"] for s in seeds)
            bar.log(
                f"{variant:<19} {wall:6.1f} s  last-epoch test acc {100 * float(np.mean(final)):.2f}%"
                + (f"  ({diverged} diverged)" if diverged else "")
            )
    return variants


def run_study(config: StudyConfig, progress: bool = True, runtime: Any = None) -> dict:
    """Train every variant of ``config`` over its seeds and return the results (JSON-ready).

    ``runtime`` is a :class:`parity.device.Runtime` from :func:`parity.device.configure`; if
    omitted it is configured here from ``config.device`` / ``config.precision`` (raising
    :class:`parity.device.DeviceError` for cuda without a GPU). ``progress`` shows a rich
    progress bar on stderr. Returns::

        {"config": ..., "environment": ..., "model": {"name", "params", ...},
         "total_wall_time_s": ...,
         "variants": {name: {"framework", "correct", "description", "path", "path_description",
                             "wall_time_s", "seeds": [{"seed", "diverged", "diverged_epoch",
                                                        "epochs": [{"epoch", "train_loss",
                                                        "test_loss", "test_acc", "train_mode",
                                                        "diverged"}]}]}}}

    Epochs are 0-based here, as in the loops. A diverged seed's list stops at the epoch whose
    mean train loss was not finite. Non-finite floats stay ``nan`` here; :mod:`parity.study.report`
    writes them as ``null``.
    """
    config.validate()
    if runtime is None:
        from parity.device import configure

        runtime = configure(config.device, config.precision)
    import torch

    from parity.convert import torch_to_linen
    from torch_impl import models as torch_models

    started = time.perf_counter()
    ds = data.load(config.dataset)
    n = len(ds.x_train) if config.train_subset is None else min(config.train_subset, len(ds.x_train))
    if config.batch_size > n:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {n} training examples")
    x_train_cl, x_test_cl = ds.channels_last()
    torch_init, linen_init = {}, {}
    for seed in config.seed_list:
        torch_init[seed] = torch_models.build_model(config.model_name, seed=seed, **config.model_config)
        linen_init[seed] = torch_to_linen(torch_init[seed].state_dict(), torch_init[seed])
    n_params = sum(p.numel() for p in torch_init[0].parameters())
    linen_path = resolve_linen_path(config.linen_path, runtime.device)
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
        _Progress(False, 0),
    )

    threads = config.torch_threads or (
        CPU_TORCH_THREADS if runtime.device == "cpu" else torch.get_num_threads()
    )
    previous_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        variants = _train_variants(ctx, linen_path, progress)
    finally:
        torch.set_num_threads(previous_threads)

    return {
        "schema": 1,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "config": config.to_dict(),
        "environment": _environment(runtime, linen_path) | {"torch_threads": threads},
        "model": {
            "name": config.model_name,
            "params": int(n_params),
            "num_classes": int(ds.num_classes),
            "train_examples": int(n),
            "test_examples": len(ds.x_test),
            "steps_per_epoch": n // config.batch_size,
        },
        "total_wall_time_s": time.perf_counter() - started,
        "variants": variants,
    }
