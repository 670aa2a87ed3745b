"""The study's per-step host cost work keeps the numbers: the NNX loops' split/merge step computes
what ``nnx.jit``'s step computes, bit for bit, with the audit; the study's torch variant gives
the plain numpy-batched loop's numbers; the Linen vmap loop lives in ``flax_impl``.

8x8 digits, widths (4, 8)/16, batch 32, the first 256 training examples, 2 epochs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flax_impl import linen_train, nnx_models, nnx_train
from parity import data
from parity.study.config import StudyConfig
from parity.study.driver import run_study
from torch_impl import models as torch_models
from torch_impl import train as torch_train

CONFIG = {"channels": (4, 8), "hidden": 16}
N, BATCH, EPOCHS, SEED = 256, 32, 2, 1


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _nnx_jit_epoch(model, optimizer, batches, schedule, evaluate_inside):
    """The loops' epoch before the split/merge step: ``nnx.jit``'s ``train_step`` per batch."""
    metrics = []
    for x, y in batches:
        metrics.append(nnx_train.train_step(model, optimizer, x, y))
        if schedule.due_after_step():
            evaluate_inside()
    return [float(m["loss"]) for m in metrics], float(np.mean([float(m["train_mode"]) for m in metrics]))


@pytest.mark.parametrize("fit", ["fit_seed_bug", "fit_view"])
@pytest.mark.slow  # 2.3 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_nnx_loops_step_with_split_merge_and_match_the_nnx_jit_step_exactly(fit, digits, monkeypatch):
    x_cl, test_cl = digits.channels_last()
    batches = lambda e: data.iterate_batches(x_cl[:N], digits.y_train[:N], BATCH, SEED, e)

    def history():
        model = nnx_models.build_model("digits", seed=SEED, **CONFIG)
        return getattr(nnx_train, fit)(
            model, nnx_train.make_optimizer(model), batches, (test_cl, digits.y_test), EPOCHS
        )

    def jit_step_called(*a, **k):
        raise AssertionError("the loop called nnx.jit's train_step")

    with monkeypatch.context() as m:
        m.setattr(nnx_train, "train_step", jit_step_called)
        split = history()
    with monkeypatch.context() as m:
        m.setattr(nnx_train, "_run_epoch", _nnx_jit_epoch)
        jitted = history()
    assert [h["step_losses"] for h in split] == [h["step_losses"] for h in jitted]
    assert [(h["test_acc"], h["train_mode"]) for h in split] == [
        (h["test_acc"], h["train_mode"]) for h in jitted
    ]
    assert [h["train_mode"] for h in split] == ([1.0, 0.0] if fit == "fit_seed_bug" else [1.0, 1.0])


def test_the_study_torch_variant_gives_the_numpy_batched_loops_numbers(digits):
    cfg = StudyConfig(
        dataset="digits", seeds=2, epochs=EPOCHS, batch_size=BATCH, train_subset=N, device="cpu",
        variants=("torch_correct",), model_config=CONFIG,
    )  # fmt: skip
    study = run_study(cfg, progress=False)["variants"]["torch_correct"]["seeds"][SEED]["epochs"]
    model = torch_models.build_model("digits", seed=SEED, **CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        plain = torch_train.fit(
            model,
            torch_train.make_optimizer(model),
            lambda e: data.iterate_batches(digits.x_train[:N], digits.y_train[:N], BATCH, SEED, e),
            (digits.x_test, digits.y_test),
            EPOCHS,
        )
    assert [(e["train_loss"], e["test_acc"]) for e in study] == [
        (h["train_loss"], h["test_acc"]) for h in plain
    ]


def test_device_batches_on_the_cpu_are_the_numpy_batches(digits):
    order = lambda e: data.batch_order(N, BATCH, SEED, e)
    got = list(torch_train.device_batches(digits.x_train[:N], digits.y_train[:N], order, "cpu")(1))
    want = list(data.iterate_batches(digits.x_train[:N], digits.y_train[:N], BATCH, SEED, 1))
    assert len(got) == len(want) == N // BATCH
    for (x, y), (xw, yw) in zip(got, want, strict=True):
        assert np.array_equal(np.asarray(x), xw) and np.array_equal(np.asarray(y), yw)


def test_the_linen_vmap_over_seeds_loop_is_in_flax_impl():
    import inspect

    from parity.study import runners

    assert callable(linen_train.fit_seeds) and callable(linen_train.fit_bug_emulated_seeds)
    assert "train_epoch_scan_seeds(" not in inspect.getsource(runners)  # no epoch loop there
    assert nnx_train.loss_fn is linen_train.loss_fn and nnx_train._epoch_end is linen_train._epoch_end
    from parity.schedule import EvalSchedule
    from torch_impl import train as torch_train

    # one schedule, imported by every loop (it was copied word for word into two packages)
    assert nnx_train.EvalSchedule is linen_train.EvalSchedule is torch_train.EvalSchedule is EvalSchedule
