"""Trajectory parity of the mirrored training loops (issue: the misplacement study).

From the same converted initial weights, the same batch order and dropout off (``dropout=0.0``):

* ``torch_impl.train.fit`` (``torch_correct``) and ``flax_impl.linen_train.fit`` (``linen``), and
* ``torch_impl.train.fit_seed_bug`` (``torch_seed_bug``) and ``flax_impl.linen_train.fit_bug_emulated``
  (``linen_bug_emulated``), and the NNX loops next to them:
* ``torch_impl.train.fit`` and ``flax_impl.nnx_train.fit_view`` (``nnx_view``: two fixed-mode
  views, the correct loop), and
* ``torch_impl.train.fit_seed_bug`` and ``flax_impl.nnx_train.fit_seed_bug`` (``nnx_seed_bug``:
  the same misplaced ``model.train()``; NNX stores the mode on the modules, so it reproduces
  the bug itself rather than emulating it)

produce the same per-step training losses within ``RTOL`` relative.

Tolerance. Both sides compute in float32; their conv / matmul kernels round differently
(~1e-7 relative per op), and SGD feeds every rounding difference back into the weights, so the
loss gap grows with the steps. Measured on the 2-core CPU dev box (2026-11-27) for this exact
set-up (8x8 digits, widths (4, 8)/16, batch 32, lr 0.01, 3 epochs = 90 steps), over seeds 0-7
and with torch on 1 or 2 intra-op threads: max relative loss difference 1.4e-5 for the correct
pair (seed 1, 1 thread; <= 7.4e-7 for every other case) and 1.0e-5 for the seed-bug pair (seed 5;
epochs 2-3 train without batch normalisation, which amplifies differences). ``RTOL = 1e-4``; the
buggy and correct trajectories differ by > 0.8 relative, four orders of magnitude above it, so
the test can fail.

Which seeds. Those gaps depend on the CPU: a float32 kernel that rounds differently (AVX2 vs
AVX-512) can move a ReLU or max-pool input across its decision, and a seed whose trajectory
passes near such a decision then jumps. The test therefore runs seeds chosen for being far from
any, measured by moving every initial torch weight one float32 ulp (a change of the size of one
kernel's rounding against another's) and rerunning the same loop: the largest relative loss
change over 90 steps, with torch on 2 or 1 intra-op threads (the suite uses 1; tests/conftest.py),
seeds 0-7 (2-core AMD EPYC dev box, AVX2, 2026-12-07):

====  =================  =================
seed  correct, 2 / 1 th  seed-bug, 2 / 1 th
====  =================  =================
0     3.6e-7 / 3.4e-7    3.6e-6 / 5.1e-6
1     1.3e-5 / 5.1e-7    9.2e-2 / 9.2e-2
2     3.7e-7 / 3.3e-7    1.3e-6 / 1.2e-4
3     4.7e-7 / 3.7e-7    3.1e-6 / 5.6e-6
4     4.2e-7 / 3.4e-7    2.9e-6 / 3.0e-6
5     3.9e-7 / 2.6e-7    7.5e-6 / 4.1e-6
6     4.6e-7 / 4.6e-7    1.3e-6 / 6.7e-6
7     4.8e-7 / 4.3e-7    2.9e-6 / 3.1e-6
====  =================  =================

The seed-bug loop trains in eval mode (no batch normalisation) and is the fragile one. Seed 1,
which an earlier version ran because it had the largest cross-framework gap here, sits on a
decision (9.2e-2); seed 2 does under one thread only: the same rounding change that a thread
count makes, another CPU's kernels can make. Seeds 4 and 7 move by <= 3.1e-6 under both, ~30x
inside RTOL; ``test_the_seeds_are_well_conditioned`` asserts <= RTOL / 10 on the CPU it runs on,
so a CPU on which a seed did become fragile fails there, naming the cause, and not in a parity
test. With lr 0.05 and these tiny widths many seeds' trajectories are chaotic (gaps reach 1e-2
within 60 steps through ReLU and max-pool switches), which is why the test uses lr 0.01: it
checks the loops, not chaos.

One known, documented difference is removed in the seed-bug pair: PyTorch stores the
*unbiased* batch variance (``n / (n - 1)``) in ``running_var``, Flax the biased one
(flax_impl/__init__.py). Epoch 1 (train mode) updates the running statistics; from epoch 2 on
both loops normalise with them, so without a correction the first eval-mode step already
differs by ~1e-2 (``n = 32`` for ``bn3``). After epoch 1 the test rewrites torch's
``running_var`` into the biased convention exactly: with ``d = 0.9^k`` after ``k`` updates from
1.0, ``flax = d + (torch - d) (n - 1) / n`` for each BN layer's ``n`` values per channel.
"""

from __future__ import annotations

import copy

import jax
import numpy as np
import pytest
import torch

from flax_impl import BN_MOMENTUM, linen_models, nnx_models, nnx_train
from flax_impl import linen_train as linen_train
from parity import data
from parity.convert import load_nnx_variables, torch_to_linen
from parity.harness.compare import values_per_channel
from parity.layout import to_channels_last
from torch_impl import train as torch_train
from torch_impl.models import build_model

RTOL = 1e-4
CONFIG = {"channels": (4, 8), "hidden": 16, "dropout": 0.0}
N_TRAIN, BATCH, LR, EPOCHS = 960, 32, 0.01, 3  # 30 steps per epoch, 90 steps
# Well-conditioned seeds (test_the_seeds_are_well_conditioned): a rounding-sized change of the
# start moves their loss trajectories ~1e-6, so any CPU's float32 kernels stay far inside RTOL.
SEEDS = (4, 7)


@pytest.fixture(scope="module")
def digits():
    ds = data.load("digits")
    x, y = ds.x_train[:N_TRAIN], ds.y_train[:N_TRAIN]
    return {
        "x": x,
        "y": y,
        "x_cl": to_channels_last(x),
        "test": (ds.x_test, ds.y_test),
        "test_cl": (to_channels_last(ds.x_test), ds.y_test),
    }


@pytest.fixture(scope="module")
def linen_module():
    return linen_models.build_model("digits", **CONFIG)


@pytest.fixture(scope="module")
def sgd():
    return linen_train.make_optimizer(LR)  # one transformation: jit compiles once per module


def _running_var_as_flax(model: torch.nn.Module, sizes: dict[str, int]) -> None:
    """Rewrite torch's unbiased running_var into Flax's biased convention (see module doc)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if name in sizes:
                n, d = sizes[name], BN_MOMENTUM ** int(m.num_batches_tracked)
                m.running_var.copy_(d + (m.running_var - d) * (n - 1) / n)


def _torch_losses(
    loop, seed: int, digits, match_flax_running_var: bool = False, perturb: bool = False
) -> np.ndarray:
    model = build_model("digits", seed=seed, **CONFIG)
    if perturb:  # every initial weight one float32 ulp up: a rounding-sized change, nothing more
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.nextafter(p, torch.full_like(p, np.inf)))
    sizes = values_per_channel(model, digits["x"][:BATCH])  # n per BN layer for a training batch

    def on_epoch(rec):
        if rec["epoch"] == 0 and match_flax_running_var:
            _running_var_as_flax(model, sizes)

    history = loop(
        model,
        torch_train.make_optimizer(model, LR),
        lambda e: data.iterate_batches(digits["x"], digits["y"], BATCH, seed, e),
        digits["test"],
        EPOCHS,
        on_epoch=on_epoch,
    )
    losses = np.concatenate([r["step_losses"] for r in history])
    assert losses.shape == (EPOCHS * (N_TRAIN // BATCH),)
    return losses


def _linen_losses(fit, seed: int, digits, module, sgd) -> np.ndarray:
    template = build_model("digits", seed=seed, **CONFIG)
    state = linen_train.create_train_state(module, torch_to_linen(template.state_dict(), template), sgd)
    _, history = fit(
        state,
        lambda e: data.iterate_batches(digits["x_cl"], digits["y"], BATCH, seed, e),
        digits["test_cl"],
        EPOCHS,
        jax.random.key(seed),
    )
    losses = np.concatenate([r["step_losses"] for r in history])
    assert losses.shape == (EPOCHS * (N_TRAIN // BATCH),)
    return losses


def _nnx_losses(fit, seed: int, digits) -> np.ndarray:
    template = build_model("digits", seed=seed, **CONFIG)
    model = load_nnx_variables(
        nnx_models.build_model("digits", **CONFIG), torch_to_linen(template.state_dict(), template)
    )
    history = fit(
        model,
        nnx_train.make_optimizer(model, LR),
        lambda e: data.iterate_batches(digits["x_cl"], digits["y"], BATCH, seed, e),
        digits["test_cl"],
        EPOCHS,
    )
    losses = np.concatenate([r["step_losses"] for r in history])
    assert losses.shape == (EPOCHS * (N_TRAIN // BATCH),)
    return losses


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b) / np.abs(a)))


@pytest.mark.parametrize("seed", SEEDS)
def test_the_seeds_are_well_conditioned(seed, digits):
    """Every initial weight one float32 ulp up moves neither torch loop's losses by RTOL / 10:
    the trajectories pass no ReLU / max-pool decision within rounding distance (module doc)."""
    for loop in (torch_train.fit, torch_train.fit_seed_bug):
        moved = _max_rel(_torch_losses(loop, seed, digits), _torch_losses(loop, seed, digits, perturb=True))
        assert 0 < moved < RTOL / 10, (loop.__name__, moved)


@pytest.mark.parametrize("seed", SEEDS)
def test_torch_correct_and_linen_follow_the_same_loss_trajectory(seed, digits, linen_module, sgd):
    torch_correct = _torch_losses(torch_train.fit, seed, digits)
    linen = _linen_losses(linen_train.fit, seed, digits, linen_module, sgd)
    assert _max_rel(torch_correct, linen) < RTOL
    # the comparison can fail: the seed's bug moves the trajectory far beyond the tolerance
    torch_bug = _torch_losses(torch_train.fit_seed_bug, seed, digits)
    assert _max_rel(torch_correct, torch_bug) > 1000 * RTOL


@pytest.mark.parametrize("seed", SEEDS)
def test_torch_seed_bug_and_linen_bug_emulated_follow_the_same_loss_trajectory(
    seed, digits, linen_module, sgd
):
    torch_bug = _torch_losses(torch_train.fit_seed_bug, seed, digits, match_flax_running_var=True)
    linen_bug = _linen_losses(linen_train.fit_bug_emulated, seed, digits, linen_module, sgd)
    assert _max_rel(torch_bug, linen_bug) < RTOL
    linen = _linen_losses(linen_train.fit, seed, digits, linen_module, sgd)
    assert _max_rel(linen, linen_bug) > 1000 * RTOL
    # Epoch 1 is train mode in both, so it matches even without the running-variance
    # correction; the first eval-mode step (epoch 2) shows the unbiased/biased difference.
    raw = _torch_losses(torch_train.fit_seed_bug, seed, digits)
    steps = N_TRAIN // BATCH
    assert _max_rel(raw[:steps], linen_bug[:steps]) < RTOL
    assert abs(raw[steps] - linen_bug[steps]) / raw[steps] > 10 * RTOL


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.slow  # 3.3 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_torch_correct_and_nnx_view_follow_the_same_loss_trajectory(seed, digits):
    torch_correct = _torch_losses(torch_train.fit, seed, digits)
    nnx_view = _nnx_losses(nnx_train.fit_view, seed, digits)
    assert _max_rel(torch_correct, nnx_view) < RTOL
    # the comparison can fail: NNX's own seed-bug loop leaves the trajectory far behind
    nnx_bug = _nnx_losses(nnx_train.fit_seed_bug, seed, digits)
    assert _max_rel(nnx_view, nnx_bug) > 1000 * RTOL


@pytest.mark.parametrize("seed", SEEDS)
def test_torch_seed_bug_and_nnx_seed_bug_follow_the_same_loss_trajectory(seed, digits):
    torch_bug = _torch_losses(torch_train.fit_seed_bug, seed, digits, match_flax_running_var=True)
    nnx_bug = _nnx_losses(nnx_train.fit_seed_bug, seed, digits)
    assert _max_rel(torch_bug, nnx_bug) < RTOL
    # without the running-variance correction the first eval-mode step (epoch 2) differs
    raw = _torch_losses(torch_train.fit_seed_bug, seed, digits)
    steps = N_TRAIN // BATCH
    assert _max_rel(raw[:steps], nnx_bug[:steps]) < RTOL
    assert abs(raw[steps] - nnx_bug[steps]) / raw[steps] > 10 * RTOL


@pytest.mark.gpu
def test_trajectory_parity_on_gpu_with_strict_precision(digits, linen_module, sgd):
    """Same pairs on CUDA with TF32 off in both frameworks. The CPU tolerance is kept: strict
    float32 on the GPU rounds like float32 on the CPU (different kernels, same precision)."""
    from parity.device import configure

    configure("cuda", "strict")
    try:
        seed = SEEDS[0]
        for tloop, lfit, fix in (
            (torch_train.fit, linen_train.fit, False),
            (torch_train.fit_seed_bug, linen_train.fit_bug_emulated, True),
        ):
            model = build_model("digits", seed=seed, **CONFIG)
            state = linen_train.create_train_state(
                linen_module, torch_to_linen(model.state_dict(), model), sgd
            )
            sizes = values_per_channel(model, digits["x"][:BATCH])
            model = copy.deepcopy(model).cuda()
            hist = tloop(
                model,
                torch_train.make_optimizer(model, LR),
                lambda e: data.iterate_batches(digits["x"], digits["y"], BATCH, seed, e),
                digits["test"],
                EPOCHS,
                device="cuda",
                on_epoch=lambda r: fix and r["epoch"] == 0 and _running_var_as_flax(model, sizes),
            )
            _, lhist = lfit(
                state,
                lambda e: data.iterate_batches(digits["x_cl"], digits["y"], BATCH, seed, e),
                digits["test_cl"],
                EPOCHS,
                jax.random.key(seed),
            )
            assert jax.devices()[0].platform == "gpu"
            t = np.concatenate([r["step_losses"] for r in hist])
            f = np.concatenate([r["step_losses"] for r in lhist])
            assert _max_rel(t, f) < RTOL
    finally:
        configure("cpu", "strict")
