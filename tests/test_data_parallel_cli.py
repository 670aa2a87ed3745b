"""``parity check --data-parallel N`` (issue 14): refusals before any work, the row verdicts,
and one end-to-end run (slow).

The refusals run in this process and must not start a gloo worker or a jax child: both entry
points are replaced by functions that fail the test. The end-to-end run is a fresh ``parity``
process on the small ``--batch-size 8``, ``--trajectory 2`` digits set-up, N = 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity import replicas
from parity.cli import main
from parity.harness import data_parallel as dp
from parity.harness.data_parallel_suite import TOL, DataParallelConfig, DataParallelRow
from torch_impl import data_parallel as torch_dp

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if a gloo worker or the Flax child process is started."""

    def started(*a, **k):
        raise AssertionError("work started before the input was refused")

    monkeypatch.setattr(torch_dp.mp, "start_processes", started)
    monkeypatch.setattr(dp.subprocess, "run", started)


def _refused(capsys, argv: list[str]) -> str:
    assert main(["check", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--batch-size", "30", "--data-parallel", "4"],
            "global batch 30 is not divisible by --data-parallel 4 (remainder 2)",
        ),
        (
            ["--batch-size", "4", "--data-parallel", "4"],
            "leaves 1 row(s) per replica; BatchNorm needs at least 2",
        ),
        (["--trajectory", "20", "--data-parallel", "2"], "20 steps of 128 need 2560 rows; digits has 1437"),
        (["--models", "nope", "--data-parallel", "2"], "unknown model 'nope'"),
        (["--localize", "--data-parallel", "2"], "--localize does not apply to --data-parallel"),
        (["--data-parallel", "-1"], "--data-parallel must be at least 1, got -1"),
    ],
)
def test_bad_input_is_refused_before_any_work(capsys, nothing_starts, argv, message):
    assert message in _refused(capsys, ["--device", "cpu", *argv])


def test_more_replicas_than_the_cpu_holds_is_refused(capsys, nothing_starts, monkeypatch):
    monkeypatch.setattr(replicas, "cpu_cores", lambda: 2)
    line = _refused(capsys, ["--device", "cpu", "--data-parallel", "16"])
    assert (
        "--data-parallel 16 is more than the 8 CPU worker processes available (4 per core on 2 cores)" in line
    )


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_one_gpu_and_more_than_one_replica_is_a_clear_error(capsys, nothing_starts, monkeypatch, device):
    monkeypatch.setattr(replicas, "gpu_count", lambda: 1)
    line = _refused(capsys, ["--device", device, "--data-parallel", "2"])
    assert "--data-parallel 2 needs 2 GPUs, one per replica; torch sees 1" in line


def test_cuda_without_a_gpu_is_refused(capsys, nothing_starts, monkeypatch):
    monkeypatch.setattr(replicas, "gpu_count", lambda: 0)
    line = _refused(capsys, ["--device", "cuda", "--data-parallel", "1"])
    assert line.endswith("--data-parallel 1 on --device cuda, but torch sees no CUDA GPU; use --device cpu")


def test_on_several_gpus_the_check_runs_nccl_ranks_and_the_gpu_child(capsys, monkeypatch):
    """The wiring without GPUs: two GPUs counted by a stand-in, ``--device cuda`` reaches torch
    DDP with the cuda device (nccl, :data:`torch_impl.data_parallel.BACKENDS`) and one replica
    per GPU; a worker failure there ends the command with one line and exit 1. The real path
    runs in ``tests/test_gpu.py`` and ``scripts/gpu_check.sh`` where GPUs exist."""
    monkeypatch.setattr(replicas, "gpu_count", lambda: 2)
    seen = {}

    def ddp(spec, variants, x, y, n, timeout_s, available, device):
        seen.update(n=n, available=available, device=device)
        raise torch_dp.WorkerError("rank 1 of 2 died (signal SIGKILL)")

    monkeypatch.setattr(torch_dp, "run_ddp", ddp)
    assert main(["check", "--device", "cuda", "--data-parallel", "2", "--models", "digits"]) == 1
    err = capsys.readouterr().err
    assert seen == {"n": 2, "available": 2, "device": "cuda"}
    assert "torch DDP over 2 nccl ranks" in err
    assert err.strip().splitlines()[-1] == "parity check: rank 1 of 2 died (signal SIGKILL)"
    assert torch_dp.BACKENDS == {"cpu": "gloo", "cuda": "nccl"}


def test_the_flax_child_gets_simulated_cpu_devices_or_the_gpus_in_strict_float32(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    cpu = dp.flax_child_env(4, "cpu")
    assert cpu["JAX_PLATFORMS"] == "cpu"
    assert cpu["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=4"
    gpu = dp.flax_child_env(4, "cuda")
    assert gpu["JAX_PLATFORMS"] == "cuda" and gpu["JAX_DEFAULT_MATMUL_PRECISION"] == "highest"
    assert gpu["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert "device_count" not in gpu["XLA_FLAGS"]


def test_an_unknown_device_is_refused_before_a_rank_starts(nothing_starts):
    x, y = np.zeros((1, 4, 1, 8, 8), np.float32), np.zeros((1, 4), np.int64)
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose from cpu, cuda"):
        torch_dp.start_ddp(torch_dp.RunSpec(), (torch_dp.Variant("sync"),), x, y, 2, device="tpu")


def test_a_check_fails_above_the_tolerance_and_a_mismatch_below_its_threshold():
    assert DataParallelRow("m", "c", {"logits": TOL / 2, "grad": TOL / 3}).passed
    assert not DataParallelRow("m", "c", {"logits": TOL / 2, "grad": 2 * TOL}).passed
    assert DataParallelRow("m", "c", {"grad": 1.0, "logits": 0.5}, "differs").passed
    # a mismatch must show in every kind it measures: one kind at rounding level is not the bug
    assert not DataParallelRow("m", "c", {"grad": 1.0, "logits": 1e-7}, "differs").passed


@pytest.mark.slow  # loads MNIST-1D: 5 s of CPU (92 s wall at load average 20)
def test_config_counts_the_rows_of_each_models_dataset():
    with pytest.raises(ValueError, match="40 steps of 128 need 5120 rows; mnist1d has 4000"):
        DataParallelConfig(2, models=("signal1d",), steps=40).validate()


@pytest.mark.slow  # a fresh parity process: torch/jax imports, 2 gloo ranks and a 2-device jax child
def test_check_data_parallel_end_to_end(tmp_path):
    out = tmp_path / "dp.json"
    cmd = [sys.executable, "-m", "parity", "check", "--data-parallel", "2", "--models", "digits"]
    cmd += ["--batch-size", "8", "--trajectory", "2", "--mismatches", "--device", "cpu", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "all data-parallel checks pass" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["passed"] and doc["world_size"] == 2 and doc["tolerance"] == TOL
    checks = [r for r in doc["rows"] if r["expect"] == "same"]
    mismatches = [r for r in doc["rows"] if r["expect"] == "differs"]
    assert [r["check"][:2] for r in checks] == ["1 ", "2 ", "2 ", "3 ", "4 ", "13"]
    assert [r["check"][:2] for r in mismatches] == ["10", "11", "12", "13", "14"]
    assert all(max(r["gaps"].values()) < TOL for r in checks)
    assert all(min(r["gaps"].values()) > 100 * TOL for r in mismatches)


def _smallest_max_pool_gap(monkeypatch, seed: int, batch: int, steps: int = 3) -> float:
    """The smallest relative gap between the two largest values of any digits max-pool window
    (after bn2 and ReLU; exact ties left out) over the ``steps`` steps of the check's one-process
    run, computed in float64 (no CPU's float32 kernels involved)."""
    import torch.nn.functional as F

    gaps: list[float] = []
    build = torch_dp.build

    def hooked(spec, device="cpu"):
        model = build(spec, device)

        def record(module, args, out):
            a = F.relu(out.detach()).numpy()  # (B, C, 8, 8) -> (B, C, 4, 4, 4): 2x2 windows
            b, c, h, w = a.shape
            win = np.sort(
                a.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, -1, 4)
            )
            top, second = win[..., -1], win[..., -2]
            real = (top > 0) & (top > second)
            gaps.append(float(((top - second)[real] / top[real]).min()))

        model.bn2.register_forward_hook(record)
        return model

    monkeypatch.setattr(torch_dp, "build", hooked)
    spec = torch_dp.RunSpec(model="digits", config={"dropout": 0.0}, seed=seed, dtype="float64")
    x, y, _ = dp.model_batches("digits", steps, batch)
    torch_dp.run_single(spec, x, y)
    return min(gaps)


def test_why_seed_0_batch_96_can_fail_check_1_on_some_cpus(monkeypatch):
    """``check --data-parallel 3 --batch-size 96`` failed check 1 with 1.08e-02 on an AVX-512 CPU,
    deterministically; on the AVX2 dev box it passes (grad 1.5e-6, 2026-12-07), as do ``--seed 1``
    and N = 2 there. Not a DDP or SyncBN difference: 96 rows split evenly (32 per rank), the first
    3 x 96 training rows are used and nothing is dropped. The cause this test shows: at seed 0,
    batch 96, a max-pool window's two largest values differ by 3.5e-7 relative in float64 (step 2;
    5.5e-7 at step 0), 3-5 float32 ulps, within the rounding of conv2's 144-term float32 sums. A CPU
    whose kernels round the 32-row shards differently from the 96-row batch can route that window's
    gradient to the other element, and the cancelling BN-bias gradients amplify such a flip to
    ~1e-2 (8e-3 for digits seed 4 in MIGRATION.md). The settings that pass have no window closer
    than 4.9e-6 (seed 1) and 9.9e-6 (batch 128). The data-parallel checks are judged in float32
    only, so this is a false alarm of the check, not a port or DDP bug."""
    assert _smallest_max_pool_gap(monkeypatch, 0, 96) < 1e-6
    assert _smallest_max_pool_gap(monkeypatch, 1, 96) > 1e-6
    assert _smallest_max_pool_gap(monkeypatch, 0, 128) > 1e-6


def _fake_runs(monkeypatch, float64_gap: float) -> list[tuple[str, str]]:
    """Stand-ins for the worker processes: check 1 is 1e-2 apart in float32 and ``float64_gap``
    apart in float64; the calls (which run, which dtype) are recorded in order."""
    from parity.harness import data_parallel as dp
    from parity.harness import data_parallel_suite as suite
    from torch_impl import data_parallel as torch_dp

    calls: list[tuple[str, str]] = []

    def ddp(spec, variants, x, y, n, *args):
        calls.append(("ddp", spec.dtype))
        return [{"dtype": spec.dtype}] * n

    def single(spec, x, y, device="cpu"):
        calls.append(("single", spec.dtype))
        return {"dtype": spec.dtype}

    first = lambda model, ranks, single, out, spec, x0: [
        suite.DataParallelRow(model, "1 DDP", dp.compare_records(ranks, "sync", single, "single"))
    ]
    monkeypatch.setattr(
        dp, "model_batches", lambda m, k, b: (np.zeros((k, b, 1, 8, 8)), np.zeros((k, b)), None)
    )
    monkeypatch.setattr(dp, "run_flax", lambda *a, **k: {})
    monkeypatch.setattr(torch_dp, "run_ddp", ddp)
    monkeypatch.setattr(torch_dp, "run_single", single)
    monkeypatch.setattr(suite, "_check_rows", first)
    monkeypatch.setattr(
        dp,
        "compare_records",
        lambda r, n, ref, rn, *a: {"grad": float64_gap if ref["dtype"] == "float64" else 1e-2},
    )
    return calls


@pytest.mark.parametrize("float64_gap, passed", [(1e-15, True), (1e-3, False)])
def test_check_1_over_tolerance_in_float32_is_judged_again_in_float64(monkeypatch, float64_gap, passed):
    """Issue 21 item 9: a float32 decision flip (the test above) failed check 1 on some CPUs; the
    check now reruns DDP + SyncBN and the one process in float64 before it calls a FAIL, and a
    difference that float64 keeps (1e-3 here) still fails."""
    from parity.harness import data_parallel_suite as suite

    calls = _fake_runs(monkeypatch, float64_gap)
    log: list[str] = []
    config = suite.DataParallelConfig(world_size=3, models=("digits",), batch_size=96)
    rows = suite.run_model(config, "digits", log.append)
    assert calls == [("ddp", "float32"), ("single", "float32"), ("ddp", "float64"), ("single", "float64")]
    assert rows[0].gaps == {"grad": 1e-2} and rows[0].float64_gaps == {"grad": float64_gap}
    assert rows[0].passed is passed and rows[0].as_dict()["float64_gaps"] == {"grad": float64_gap}
    assert any("judged again in float64" in line for line in log)
    assert ("float64" in suite.format_rows(rows)) and (
        ("ok" if passed else "FAIL") in suite.format_rows(rows)
    )


def test_check_1_within_tolerance_in_float32_runs_nothing_more(monkeypatch):
    from parity.harness import data_parallel_suite as suite

    calls = _fake_runs(monkeypatch, 0.0)
    monkeypatch.setattr(suite.dp, "compare_records", lambda *a: {"grad": 1e-7})
    rows = suite.run_model(
        suite.DataParallelConfig(world_size=2, models=("digits",)), "digits", lambda m: None
    )
    assert (
        calls == [("ddp", "float32"), ("single", "float32")]
        and rows[0].float64_gaps is None
        and rows[0].passed
    )
