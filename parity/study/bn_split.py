"""Where a run's BatchNorm running statistics and batch statistics part ways, epoch by epoch.

One seed of a torch or NNX variant is retrained with the study's set-up; after every epoch each
BN layer's running mean and variance are compared with the batch statistics of its input on
fixed training examples (:func:`bn_gaps`). A layer *parts ways* at the first epoch whose gap
exceeds :data:`PART_WAYS` (docs/STUDY.md shows a correct run's gaps next to a collapsed one's).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from parity.study.config import CPU_TORCH_THREADS, StudyConfig
from parity.study.runners import configure_runtime, study_context

#: relative L2 gap between running and batch statistics taken as "parted" (see the module doc)
PART_WAYS = 0.5
#: training examples the batch statistics are measured on (the first ones of the training set)
PROBE_EXAMPLES = 1024


def bn_gaps(torch_model: Any, x: np.ndarray) -> dict[str, dict[str, float]]:
    """Per BN layer of ``torch_model``: the gaps between its running statistics and the statistics
    of its input on ``x`` (channels-first, NCW / NCHW): ``var``, the relative L2 difference of the
    variances (:func:`rel_l2`, relative to the batch variance); ``mean``, the L2 distance of the
    means in units of the batch standard deviation (``||m_run - m_batch|| / ||sqrt(v_batch)||``;
    a relative difference of means near zero would be ill-conditioned)."""
    from parity.harness.compare import rel_l2, torch_bn_state
    from parity.harness.sides import run_torch

    model = copy.deepcopy(torch_model).eval()
    run = run_torch(model, x, train=False, masks=None)
    gaps = {}
    for name, running in torch_bn_state(model).items():
        inputs = run.inputs[(name, 0)]  # (N, C, ...) channels-first
        axes = tuple(i for i in range(inputs.ndim) if i != 1)
        batch_mean, batch_var = inputs.mean(axis=axes), inputs.var(axis=axes)
        spread = np.linalg.norm(np.sqrt(batch_var.astype(np.float64)))
        mean_gap = float(np.linalg.norm(running["mean"] - batch_mean.astype(np.float64)) / spread)
        gaps[name] = {"mean": mean_gap, "var": rel_l2(running["var"], batch_var)}
    return gaps


def _snapshot(variant: str, model: Any, template: Any) -> Any:
    """The trained ``model`` (torch, or NNX converted by :func:`parity.convert.nnx_to_torch`) as torch."""
    from parity.convert import nnx_to_torch

    if variant.startswith("torch"):
        return model
    torch_model = copy.deepcopy(template)
    torch_model.load_state_dict(nnx_to_torch(model, template))
    return torch_model


def _train(variant: str, seed: int, ctx: Any, on_epoch) -> None:
    """Train one seed of ``variant`` as the study does, calling ``on_epoch(record, model)``."""
    from flax_impl import nnx_train
    from parity.study import models
    from torch_impl import train as torch_train

    c, template = ctx.config, ctx.torch_init[seed]
    if variant.startswith("torch"):
        model = copy.deepcopy(template)
        fit = torch_train.fit if variant == "torch_correct" else torch_train.fit_seed_bug
        batches = torch_train.device_batches(ctx.x_train, ctx.y_train, ctx.orders(seed), "cpu")
        opt = torch_train.make_optimizer(model, c.lr, c.momentum)
        fit(
            model,
            opt,
            batches,
            (ctx.x_test, ctx.y_test),
            c.epochs,
            "cpu",
            lambda r: on_epoch(r, model),
            c.eval_every,
        )
    elif variant.startswith("nnx"):
        model = models.build_nnx(c.model_name, seed, c.model_config)
        models.load_nnx(c.model_name, template, model)
        fit = nnx_train.fit_seed_bug if variant == "nnx_seed_bug" else nnx_train.fit_view
        opt = nnx_train.make_optimizer(model, c.lr, c.momentum)
        test = (ctx.x_test_cl, ctx.y_test)
        fit(model, opt, ctx.flax_batches(seed), test, c.epochs, lambda r: on_epoch(r, model), c.eval_every)
    else:
        raise ValueError(f"bn_split traces torch and NNX variants, not {variant}")


def bn_split(config: StudyConfig, variant: str, seed: int) -> dict:
    """Train ``seed`` of ``variant`` under ``config`` and return, per epoch, the test accuracy
    and each BN layer's gaps (:func:`bn_gaps`), and per layer the first epoch (1-based) whose gap
    exceeds :data:`PART_WAYS` (``None``: never)."""
    config.validate()
    ctx = study_context(config, configure_runtime("cpu", config.precision))
    x = ctx.x_train[:PROBE_EXAMPLES]
    epochs: list[dict] = []

    def on_epoch(record: dict, model: Any) -> None:
        gaps = bn_gaps(_snapshot(variant, model, ctx.torch_init[seed]), x)
        epochs.append({"epoch": record["epoch"] + 1, "test_acc": record["test_acc"], "gaps": gaps})

    import torch

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(config.torch_threads or CPU_TORCH_THREADS)  # as run_study on CPU
        _train(variant, seed, ctx, on_epoch)
    finally:
        torch.set_num_threads(previous)
    layers = list(epochs[0]["gaps"]) if epochs else []
    parted = {
        name: next((e["epoch"] for e in epochs if max(e["gaps"][name].values()) > PART_WAYS), None)
        for name in layers
    }
    return {"variant": variant, "seed": seed, "model": config.model_name, "epochs": epochs, "parted": parted}
