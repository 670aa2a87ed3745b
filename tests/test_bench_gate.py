"""The checks of the timed run itself: finite losses, BatchNorm statistics that move and dropout
masks that change between steps. Each test breaks one style in one of these ways and expects
the row ``failed`` with the reason; a sound style passes all three."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity import bench
from parity.bench import flax_runners, torch_runners
from parity.device import configure

TINY = {"channels": (4, 8), "hidden": 16}


@pytest.fixture(scope="module")
def workload():
    configure("cpu", "strict")
    return bench.make_workload("digits", 16, 3, "cpu", seeds=2, config=TINY)


@pytest.fixture(scope="module")
def reference(workload):
    return bench.reference_losses(workload)


@pytest.mark.slow  # a timed run plus the dropout probe on every style, 40 s in the 2026-11-30 full run (load ~4)
def test_a_sound_style_passes_the_timed_run_checks_and_the_dropout_probe(workload, reference):
    row = bench.measure_style("linen_jit", workload, reference, repeats=1)
    assert row["status"] == "ok", row["reason"]
    checks = row["checks"]
    assert checks["losses_finite"] and checks["bn_moved"] and checks["problems"] == []
    probe = row["gate"]["dropout"]
    assert probe["changes"] and probe["rel_spread"] > 100 * bench.spec.DROPOUT_SPREAD_MIN


@pytest.mark.slow  # the dropout probe on every style, 29 s in the 2026-11-30 full run (load ~4)
def test_the_dropout_probe_sees_no_change_without_dropout(monkeypatch, workload):
    # the control: with dropout 0 the probe's steps (same batch, lr 0) give identical losses
    real = bench.workload.make_runner
    monkeypatch.setattr(bench.gate, "make_runner", lambda *a, **k: real(*a, **(k | {"dropout": 0.0})))
    for style in ("torch_eager", "nnx_split"):
        probe = bench.probe_dropout(style, workload)
        assert not probe["changes"] and probe["rel_spread"] <= bench.spec.DROPOUT_SPREAD_MIN, style


def test_frozen_batchnorm_in_the_timed_run_is_failed(monkeypatch, workload, reference):
    real_init = torch_runners.TorchLoopRunner.__init__

    def init_bn_eval(self, wl, idx, dropout, compiled):
        real_init(self, wl, idx, dropout, compiled)
        if dropout is None:  # the timed run (and the probe), not the gate
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    monkeypatch.setattr(torch_runners.TorchLoopRunner, "__init__", init_bn_eval)
    row = bench.measure_style("torch_eager", workload, reference, repeats=1)
    assert row["status"] == "failed" and row["rate"] is None
    assert "BatchNorm running statistics did not move" in row["reason"]
    assert not row["checks"]["bn_moved"] and "bn1.running_mean" in row["checks"]["bn_frozen"]


def test_a_non_finite_loss_in_the_timed_run_is_failed(monkeypatch, workload, reference):
    gate = bench.measure_style("torch_eager", workload, reference, repeats=1)["gate"]
    real_run = torch_runners.TorchLoopRunner.run
    monkeypatch.setattr(torch_runners.TorchLoopRunner, "run", lambda self: real_run(self) * np.nan)
    row = bench.measure_style("torch_eager", workload, reference, repeats=1, gate=gate)
    assert row["status"] == "failed" and "a loss is not finite" in row["reason"]
    assert row["checks"]["losses_finite"] is False


@pytest.mark.slow  # a timed Linen run with a reused dropout key, 14 s in the 2026-11-30 full run (load ~4)
def test_linen_dropout_keys_reused_every_step_are_failed(monkeypatch, workload, reference):
    real_init = flax_runners.LinenJitRunner.__init__

    def init_one_key(self, wl, idx, dropout):
        real_init(self, wl, idx, dropout)
        self.keys = [self.keys[0]] * len(self.keys)  # the bug: one mask for every step

    monkeypatch.setattr(flax_runners.LinenJitRunner, "__init__", init_one_key)
    row = bench.measure_style("linen_jit", workload, reference, repeats=1)
    assert row["status"] == "failed" and "dropout masks do not change" in row["reason"]
    assert row["gate"]["passed"]  # the dropout-0 comparison itself still passes


def test_torch_rng_reset_every_step_is_failed(monkeypatch, workload, reference):
    real_step = torch_runners.train_step

    def reseeded_step(model, opt, x, y):
        torch.manual_seed(0)  # the bug: the same dropout mask at every step
        return real_step(model, opt, x, y)

    monkeypatch.setattr(torch_runners, "train_step", reseeded_step)
    row = bench.measure_style("torch_eager", workload, reference, repeats=1)
    assert row["status"] == "failed" and "dropout masks do not change" in row["reason"]
