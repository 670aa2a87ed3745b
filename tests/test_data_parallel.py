"""Data-parallel BatchNorm parity (issue 14): torch DDP over gloo, Flax ``jit`` + ``NamedSharding``
and ``shard_map``, N = 2 ranks / simulated CPU devices, K = 3 steps of 32 digits rows, lr 0.05.

Tolerance. Every check compares relative L2 differences (``||a - b|| / ||b||``, largest over
steps, ranks and tensors) with ``TOL = 1e-5``, the project's float32 parity tolerance
(parity.harness.compare.TOLERANCES). Measured by these tests on the 2-core CPU dev box (AMD
EPYC, 2026-11-30), as (logits, gradients, running mean, running var): splitting the batch only
changes the reduction order, and its effect is float32 rounding itself:

* DDP + sync BN vs one process: 7.0e-7, 2.1e-6, 2.0e-7, 2.8e-8; one float32 process vs float64:
  6.2e-7, 2.3e-6, 2.0e-7, 1.1e-7; DDP vs one process in float64: <= 7.6e-15.
* Linen jit + sharded batch vs one device: 1.4e-6, 4.2e-6, 1.7e-7, 4.8e-8; Linen float32 vs
  float64: 1.5e-6, 4.0e-6, 2.1e-7, 9.2e-8; in float64: <= 7.2e-15. NNX: the same numbers.
* shard_map + axis_name vs jit: 0 (bit-identical). DDP vs Linen jit (check 4): 8.1e-7, 1.3e-6,
  1.9e-7, 9.7e-8. N = 4: all <= 5.0e-6.

``TOL`` is 2.4x the worst (4.2e-6, a float32 gradient after 3 steps); every mismatch below is
more than 100x ``TOL`` away, so the checks can fail. The float64 tests re-measure this.

Wall time (2-core CPU dev box, 2026-11-30, load average 17-19 from other sessions): the 15
tests without N = 4 / float64 took 351 s wall for 71 s of CPU (user + sys, children included).
The first DDP launch starts the forkserver, which imports torch and torch._dynamo once (DDP's
constructor needs it): 59 s wall there. The Flax runs happen in one child process with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (pytest's jax has one device) that
compiles six step functions: 220 s wall, so every test that uses it is marked ``slow``. N = 4
(4 gloo ranks oversubscribing 2 cores, one more jax child) and Flax float64 (one more jax child):
223 s and 220 s wall in the full run (686 s for all 16 tests, 171 s CPU); with the NNX
``shard_map`` runs added to the N = 4 child, that test took 287 s wall, 91 s CPU.
The unsynchronised-twins check had the thinnest float32 margin, 6.7e-6 (a gradient) against
``TOL``: it is judged in float64 now, where no CPU's rounding comes near its bound.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from flax_impl import BN_MOMENTUM
from flax_impl import data_parallel as flax_dp
from parity.defaults import FLOAT64_REL_TOL
from parity.harness import data_parallel as dp
from torch_impl import data_parallel as torch_dp

# every test here starts worker processes or a jax child with several devices: the whole file
# takes about 3 minutes on the idle 2-core box, so it runs with `python -m pytest -m slow` (and CI)
pytestmark = pytest.mark.slow

TOL = 1e-5
N, K, B = 2, 3, 32
SPEC = torch_dp.RunSpec()
VARIANTS = (
    torch_dp.Variant("sync"),
    torch_dp.Variant("plain", sync_bn=False),
    torch_dp.Variant("broadcast", sync_bn=False, broadcast_buffers=True),
    torch_dp.Variant("eval_on_rank0", sync_bn=False, eval_rank=0, eval_after=0),
)


@pytest.fixture(scope="module")
def batches():
    return dp.digits_batches(K, B)


@pytest.fixture(scope="module")
def single(batches):
    x, y, _ = batches
    return torch_dp.run_single(SPEC, x, y)


@pytest.fixture(scope="module")
def ranks(batches):
    x, y, _ = batches
    return torch_dp.run_ddp(SPEC, VARIANTS, x, y, N, timeout_s=300, available=N)


SPEC64 = torch_dp.RunSpec(dtype="float64")


@pytest.fixture(scope="module")
def ranks64(batches):
    """DDP in float64, with and without sync BN: where rounding cannot decide a comparison."""
    x, y, _ = batches
    return torch_dp.run_ddp(SPEC64, VARIANTS[:2], x, y, N, timeout_s=300, available=N)


@pytest.fixture(scope="module")
def flax_out64(batches):
    """The Flax runs in float64 (one more jax child, with jax_enable_x64)."""
    return dp.run_flax(SPEC, *batches, N, dtype="float64", timeout_s=600)


#: Tests that use ``flax_out`` are marked slow: its jax child compiles six step functions (measured
#: 189 s wall at load average 15 on the 2-core box, 2026-11-30; most of it waiting for a core).
SLOW_JAX_CHILD = pytest.mark.slow


@pytest.fixture(scope="module")
def flax_out(batches):
    return dp.run_flax(SPEC, *batches, N, timeout_s=600)


def _report(label: str, gaps: dict) -> None:
    print(f"\n{label}: " + ", ".join(f"{k} {v:.2e}" for k, v in gaps.items()))


# ----------------------------------------------------------------------------- the four checks


def test_check1_ddp_sync_bn_equals_single_process(ranks, single):
    gaps = dp.compare_records(ranks, "sync", single, "single")
    _report("DDP+sync BN vs single", gaps)
    assert max(gaps.values()) < TOL, gaps
    # the comparison can fail: without sync BN every kind is far outside the tolerance
    assert min(dp.compare_records(ranks, "plain", single, "single").values()) > 100 * TOL


@SLOW_JAX_CHILD
@pytest.mark.parametrize("run", ["jit", "nnx_jit"])
def test_check2_jit_sharded_batch_equals_single_device(flax_out, run):
    gaps = dp.compare_flax(flax_out, run, "single")
    _report(f"{run} vs Linen single", gaps)
    assert max(gaps.values()) < TOL, gaps


@SLOW_JAX_CHILD
def test_check3_shard_map_with_axis_name_equals_jit(flax_out):
    gaps = dp.compare_records(
        dp.replica_views(flax_out, "shard_map_axis"), "shard_map_axis", flax_out, "jit", False
    )
    _report("shard_map+axis_name vs jit", gaps)
    assert max(gaps.values()) < TOL, gaps
    spread = dp.replica_spread(dp.replica_views(flax_out, "shard_map_axis"), "shard_map_axis")
    assert max(spread.values()) < TOL, spread


@SLOW_JAX_CHILD
def test_check4_ddp_sync_bn_equals_linen_jit_through_the_converter(ranks, flax_out, batches):
    gaps = dp.compare_torch_flax(ranks, "sync", flax_out, "jit", SPEC, batches[0][0])
    _report("DDP+sync BN vs Linen jit", gaps)
    assert max(gaps.values()) < TOL, gaps


# -------------------------------------------------------------------------------- mismatches


def test_ddp_without_sync_bn_drifts_from_single_process(ranks, single):
    """MODE_BUGS row 10: per-replica batch statistics."""
    gaps = dp.compare_records(ranks, "plain", single, "single")
    spread = dp.replica_spread(ranks, "plain")
    _report("DDP without sync BN vs single", gaps)
    _report("DDP without sync BN, rank 1 vs rank 0 running stats", spread)
    assert min(gaps.values()) > 100 * TOL
    assert min(spread.values()) > 100 * TOL


def test_broadcast_buffers_overwrites_every_rank_with_rank0(ranks):
    """MODE_BUGS row 11: with ``broadcast_buffers=True`` rank 0's running statistics are exactly
    rank 0's own (its shard alone); rank 1 starts every step from rank 0's, so after step k
    ``rank1_bcast - rank1_plain = (1 - m) (rank0_{k-1} - rank1_plain_{k-1})`` exactly (training is
    identical: train-mode BN never reads the buffers)."""
    r0, r1 = ranks
    m, gap = 1 - BN_MOMENTUM, 0.0
    for key in (k for k in r0 if k.startswith("plain/") and ("/stat/" in k or "/grad/" in k)):
        bkey = key.replace("plain/", "broadcast/", 1)
        assert np.array_equal(r0[bkey], r0[key])  # rank 0 is never overwritten
        if "/grad/" in key:
            assert np.array_equal(r1[bkey], r1[key])
            continue
        step = int(key.split("/")[1])
        if step == 0:
            continue
        prev = key.replace(f"plain/{step}/", f"plain/{step - 1}/", 1)
        predicted = (1 - m) * (r0[prev] - r1[prev])
        np.testing.assert_allclose(r1[bkey] - r1[key], predicted, rtol=0, atol=1e-6)
        gap = max(gap, float(np.abs(predicted).max()))
    print(f"\nbroadcast_buffers: rank 1's running stats moved by up to {gap:.3e} toward rank 0's")
    assert gap > 100 * TOL  # the overwrite is visible, not rounding


@SLOW_JAX_CHILD
def test_shard_map_without_axis_name_keeps_per_replica_statistics(flax_out):
    """MODE_BUGS row 12: the Flax twin of row 10."""
    views = dp.replica_views(flax_out, "shard_map_no_axis")
    gaps = dp.compare_records(views, "shard_map_no_axis", flax_out, "jit", False)
    spread = dp.replica_spread(views, "shard_map_no_axis")
    _report("shard_map without axis_name vs jit", gaps)
    _report("shard_map without axis_name, replica 1 vs 0 running stats", spread)
    assert min(gaps.values()) > 100 * TOL
    assert min(spread.values()) > 100 * TOL


@SLOW_JAX_CHILD
def test_the_unsynchronised_twins_match_through_the_converter(ranks, flax_out, ranks64, flax_out64, batches):
    """Rows 10 and 12 are one behaviour: DDP without sync BN (no buffer broadcast) == Linen
    ``shard_map`` without ``axis_name``, rank r's statistics == replica r's (counted per shard).

    Judged in float64: in float32 the gap (6.7e-6 on the AVX2 dev box, a gradient) is only 1.5x
    inside ``TOL``, and another CPU's kernels round differently. In float64 the two sides agree
    to 4.6e-14 (a gradient; AVX2 dev box, 2026-12-07) whatever the CPU (``FLOAT64_REL_TOL`` =
    1e-9 leaves four orders); a wrong port is
    as far off in float64 as in float32 (the ``> 100 * TOL`` checks above). The float32 gap is
    printed."""
    x0 = batches[0][0]
    gaps64 = dp.compare_torch_flax(
        ranks64, "plain", flax_out64, "shard_map_no_axis", SPEC, x0, per_replica=True
    )
    gaps32 = dp.compare_torch_flax(ranks, "plain", flax_out, "shard_map_no_axis", SPEC, x0, per_replica=True)
    _report("DDP without sync BN vs shard_map without axis_name, float64", gaps64)
    _report("the same in float32 (not judged: CPU-dependent rounding)", gaps32)
    assert max(gaps64.values()) < FLOAT64_REL_TOL, gaps64
    assert max(gaps32.values()) < 100 * TOL, gaps32  # rounding, not a behaviour (those are > 100 TOL)


@SLOW_JAX_CHILD
def test_unsynced_running_statistics_give_per_replica_eval_outputs(flax_out):
    """MODE_BUGS row 13: eval with each replica's statistics differs until they are pmean-ed."""
    unsynced, synced = flax_out["eval/unsynced"], flax_out["eval/synced"]
    before = dp.rel_l2(unsynced[1], unsynced[0])
    flips = float((unsynced[1].argmax(-1) != unsynced[0].argmax(-1)).mean())
    print(
        f"\neval logits, replica 1 vs 0 unsynced: rel L2 {before:.3e}, "
        f"max |diff| {np.abs(unsynced[1] - unsynced[0]).max():.3e}, predictions differ on {flips:.1%}"
    )
    assert before > 100 * TOL
    assert np.array_equal(synced[1], synced[0])  # after sync_batch_stats: one model again


def test_eval_left_on_by_one_rank_inside_the_loop(ranks, single):
    """MODE_BUGS row 14: rank 0 evaluates after step 0 (``test()`` sets ``model.eval()``) and
    the loop never calls ``model.train()`` again: the seed's bug, now on one rank only."""
    r0, r1 = ranks
    modes = [[float(r[f"eval_on_rank0/{k}/training"]) for k in range(K)] for r in ranks]
    assert modes == [[1.0] + [0.0] * (K - 1), [1.0] * K]
    for key in (k for k in r0 if k.startswith(f"eval_on_rank0/{K - 1}/stat/")):
        assert np.array_equal(r0[key], r0[key.replace(f"/{K - 1}/", "/0/", 1)])  # frozen on rank 0
    per_rank = [dp.compare_records([r], "eval_on_rank0", r, "plain") for r in ranks]
    gaps = {k: max(g[k] for g in per_rank) for k in dp.KINDS}
    _report("eval() left on rank 0 vs DDP without it", gaps)
    assert min(gaps[k] for k in ("logits", "grad", "running_mean")) > 100 * TOL


def test_reduction_order_effect_is_float32_rounding(batches, ranks, single, ranks64):
    """The tolerance's justification, re-measured: DDP vs one process is as far apart as one
    float32 process is from float64, and nothing at all in float64."""
    x, y, _ = batches
    single64 = torch_dp.run_single(SPEC64, x, y)
    f32 = dp.compare_records([single], "single", single64, "single")
    ddp32 = dp.compare_records(ranks, "sync", single, "single")
    ddp64 = dp.compare_records(ranks64, "sync", single64, "single")
    for label, gaps in (
        ("float32 vs float64", f32),
        ("DDP vs single f32", ddp32),
        ("DDP vs single f64", ddp64),
    ):
        _report(label, gaps)
    assert max(ddp64.values()) < 1e-12
    assert all(ddp32[k] <= 10 * f32[k] + 1e-7 for k in dp.KINDS), (ddp32, f32)


# ------------------------------------------------------------------------------------ faults


def test_batch_not_divisible_is_refused_before_any_worker_starts(monkeypatch, batches):
    x, y, xe = batches

    def no_start(*a, **k):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(torch_dp.mp, "start_processes", no_start)
    with pytest.raises(ValueError, match=r"global batch 30 is not divisible by world size 4 \(remainder 2\)"):
        torch_dp.start_ddp(SPEC, VARIANTS, x[:, :30], y[:, :30], 4, available=8)
    with pytest.raises(ValueError, match=r"global batch 30 is not divisible by world size 4"):
        dp.run_flax(SPEC, x[:, :30], y[:, :30], xe, 4)  # refused before the child starts


def test_world_size_above_available_is_refused(monkeypatch, batches):
    x, y, _ = batches
    monkeypatch.setattr(torch_dp.mp, "start_processes", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(ValueError, match="world size 3 is larger than the 2 workers available"):
        torch_dp.start_ddp(SPEC, VARIANTS, x, y, 3, available=2)
    n = flax_dp.available_workers()  # pytest's jax: one CPU device
    with pytest.raises(ValueError, match=f"world size {n + 1} is larger than the {n} devices available"):
        flax_dp.make_mesh(n + 1)


def test_a_worker_that_dies_is_named_within_bounded_time(batches):
    x, y, _ = batches
    start = time.monotonic()
    launch = torch_dp.start_ddp(SPEC, VARIANTS, x, y, N, timeout_s=120, available=N)
    launch.context.processes[1].kill()
    with pytest.raises(torch_dp.WorkerError, match="rank 1 of 2 died"):
        torch_dp.join_ddp(launch)
    assert all(not p.is_alive() for p in launch.context.processes)
    assert time.monotonic() - start < 120


# ------------------------------------------------------------------------- slower variants


@pytest.mark.slow  # 4 gloo ranks on 2 cores (oversubscribed on purpose) and one more jax child
def test_checks_1_to_4_with_four_ranks(batches, single):
    """N = 4, plus NNX under ``shard_map`` (check 3 for NNX; row 12 for NNX equals Linen's)."""
    x, y, xe = batches
    ranks4 = torch_dp.run_ddp(SPEC, VARIANTS[:1], x, y, 4, timeout_s=300, available=4)
    out4 = dp.run_flax(SPEC, x, y, xe, 4, timeout_s=1200, nnx_shard_map=True)
    results = {
        "1 DDP+sync BN vs single": dp.compare_records(ranks4, "sync", single, "single"),
        "2 jit vs single": dp.compare_flax(out4, "jit"),
        "2 nnx jit vs single": dp.compare_flax(out4, "nnx_jit"),
        "3 shard_map+axis vs jit": dp.compare_records(
            dp.replica_views(out4, "shard_map_axis"), "shard_map_axis", out4, "jit", False
        ),
        "4 DDP+sync BN vs Linen jit": dp.compare_torch_flax(ranks4, "sync", out4, "jit", SPEC, x[0]),
        "3 NNX shard_map+axis vs jit": dp.compare_records(
            dp.replica_views(out4, "nnx_shard_map_axis"), "nnx_shard_map_axis", out4, "jit", False
        ),
        # both keep (N, C) per-replica statistics: compared stack to stack
        "12 NNX vs Linen shard_map without axis": dp.compare_records(
            [out4], "nnx_shard_map_no_axis", out4, "shard_map_no_axis", False
        ),
    }
    for label, gaps in results.items():
        _report(f"N=4 check {label}", gaps)
        assert max(gaps.values()) < TOL, (label, gaps)
    assert min(dp.compare_flax(out4, "shard_map_no_axis", "jit").values()) > 100 * TOL


@pytest.mark.slow  # one more jax child, with jax_enable_x64
def test_flax_reduction_order_effect_in_float64(batches, flax_out, flax_out64):
    out64 = flax_out64
    f32 = dp.compare_records([flax_out], "single", out64, "single", False)
    jit64 = dp.compare_flax(out64, "jit")
    jit32 = dp.compare_flax(flax_out, "jit")
    for label, gaps in (
        ("Linen f32 vs f64", f32),
        ("jit vs single f64", jit64),
        ("jit vs single f32", jit32),
    ):
        _report(label, gaps)
    assert max(jit64.values()) < 1e-12
    assert all(jit32[k] <= 10 * f32[k] + 1e-7 for k in dp.KINDS), (jit32, f32)
