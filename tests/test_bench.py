"""``parity bench``: the FLOP count, the correctness gate, bad input and a tiny real run.

Speeds are never asserted here (they are measured by the benchmark and kept in BENCHMARKS.md);
these tests check that the benchmark measures the right thing and reports it well-formed.
Models are tiny (``channels=(4, 8), hidden=16``) and batches small, to stay within seconds.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from parity import bench, cli
from parity.device import configure

TINY = {"channels": (4, 8), "hidden": 16}


@pytest.fixture(scope="module")
def workload():
    configure("cpu", "strict")
    return bench.make_workload("digits", 16, 3, "cpu", seeds=2, config=TINY)


@pytest.fixture(scope="module")
def reference(workload):
    return bench.reference_losses(workload)


# ------------------------------------------------------------------------------------ FLOPs


def test_flop_count_matches_a_hand_count_for_a_tiny_conv_and_dense():
    # conv 1->2, 3x3, pad 1 on 4x4: 2*4*4 outputs x 1*9 MACs = 288; dense 32->3: 96 MACs
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(32, 3))
    assert bench.forward_macs(model, (1, 4, 4)) == [("0", 288), ("2", 96)]
    # forward 2F + weight grads 2F + input grads 2(F - first): 6*384 - 2*288
    assert bench.train_flops_per_example(model, (1, 4, 4)) == 1728


def test_flop_count_of_the_project_models_matches_their_architecture():
    from torch_impl.models import build_model

    # digits: conv1 8*8*16*(1*9), conv2 8*8*32*(16*9), fc1 512*64, fc2 64*10
    digits = bench.forward_macs(build_model("digits"), (1, 8, 8))
    assert digits == [("conv1", 9216), ("conv2", 294912), ("fc1", 32768), ("fc2", 640)]
    # signal1d: conv1 40*32*(1*5), conv2 20*64*(32*3), fc1 640*128, fc2 128*10
    sig = bench.forward_macs(build_model("signal1d"), (1, 40))
    assert sig == [("conv1", 6400), ("conv2", 122880), ("fc1", 81920), ("fc2", 1280)]
    assert bench.train_flops_per_example(build_model("digits"), (1, 8, 8)) == 6 * 337536 - 2 * 9216


# ------------------------------------------------------------------------------------ gate


@pytest.mark.slow  # trains every gate workload, 24 s in the 2026-11-30 full run (load ~4); the gate's verdict logic has fast tests
def test_gate_flags_a_wrong_learning_rate(workload, reference):
    # (a correct Flax style passing the gate is checked in the tiny run below)
    assert bench.check_gate("torch_eager", workload, reference).max_rel_err == 0.0
    for style in ("torch_eager", "linen_jit"):
        wrong = bench.check_gate(style, replace(workload, lr=2 * workload.lr), reference)
        assert not wrong.passed, style
        assert wrong.max_rel_err > 10 * bench.GATE_RTOL
        # the first loss is computed before any update, so only the later steps differ
        assert wrong.losses[0] == pytest.approx(reference[0], rel=1e-5)


def test_a_style_on_unconverted_weights_is_reported_failed_and_not_timed(workload, reference):
    from torch_impl.models import build_model

    other = build_model("digits", seed=1, **TINY).state_dict()
    row = bench.measure_style("torch_eager", replace(workload, state_dict=other), reference, repeats=1)
    assert row["status"] == "failed"
    assert "gate" in row["reason"] and row["rate"] is None and row["compile_s"] is None
    assert not row["gate"]["passed"] and row["gate"]["max_rel_err"] > 10 * bench.GATE_RTOL


def test_unavailable_styles_are_skipped_with_a_reason(workload, reference):
    row = bench.measure_style("torch_cudagraph", workload, reference, repeats=1)
    assert row["status"] == "skipped" and "CUDA" in row["reason"]
    # too slow for the CPU budget: skipped by default, run when named in --styles
    assert bench.skip_reason("linen_vmap_scan", "cpu", quick=True)
    assert bench.skip_reason("linen_scan", "cpu", quick=True)
    assert bench.skip_reason("linen_vmap_scan", "cpu", quick=False, batch_size=1024)
    assert bench.skip_reason("linen_vmap_scan", "cpu", quick=False, batch_size=128) is None
    assert bench.skip_reason("linen_vmap_scan", "cpu", quick=True, explicit=True) is None
    assert bench.skip_reason("linen_vmap_scan", "cuda", quick=True, batch_size=8192) is None
    # cannot run: skipped even when named
    assert "CUDA" in bench.skip_reason("torch_cudagraph", "cpu", quick=False, explicit=True)


# --------------------------------------------------------------------------------- CLI input


@pytest.mark.parametrize(
    "field, value, choices",
    [
        ("styles", ["linen_jit", "jax_magic"], bench.STYLES),
        ("models", ["resnet"], bench.MODELS),
    ],
)
def test_unknown_style_or_model_exits_2_listing_the_choices(capsys, field, value, choices):
    assert cli.main(["bench", f"--{field}", ",".join(value)]) == 2
    err = capsys.readouterr().err
    assert repr(value[-1]) in err
    assert all(c in err for c in choices)


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert cli.main(["bench", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "cuda" in err and "no CUDA GPU" in err
    assert "Traceback" not in err


def test_cli_parses_lists_and_rejects_bad_numbers(capsys):
    from parity.cli import build_parser

    args = build_parser(["bench"]).parse_args(
        ["bench", "--models", "digits", "--batch-sizes", "16,32", "--styles", "torch_eager,linen_scan"]
    )
    assert args.batch_sizes == [16, 32] and args.styles == ["torch_eager", "linen_scan"]
    assert cli.main(["bench", "--batch-sizes", "1"]) == 2
    assert "batch sizes" in capsys.readouterr().err


# --------------------------------------------------------------------------------- tiny run


@pytest.mark.slow  # an end-to-end bench run that compiles every style, 45 s in the 2026-11-30 full run (load ~4)
def test_a_tiny_run_writes_well_formed_json_and_a_plot(tmp_path):
    from torch_impl.models import build_model

    cfg = bench.BenchConfig(
        models=["digits"],
        batch_sizes=[16],
        device="cpu",
        repeats=2,
        steps=3,
        seeds=2,
        styles=["torch_eager", "linen_jit", "torch_cudagraph"],
        config=TINY,
        peak_n=128,
    )
    report = bench.benchmark(cfg)
    json_path, png_path = tmp_path / "bench.json", tmp_path / "bench.png"
    bench.write_outputs(report, str(json_path), str(png_path))

    def no_nan(name):
        raise ValueError(f"non-standard JSON constant {name}")

    data = json.loads(json_path.read_text(), parse_constant=no_nan)
    assert data["device"] == "cpu" and data["precision"] == "strict"
    assert {"torch", "jax", "flax"} <= set(data["versions"])
    assert data["machine"]["cores"] >= 1 and data["peak"]["tflops"] > 0
    rows = {r["style"]: r for r in data["results"]}
    assert rows["torch_cudagraph"]["status"] == "skipped"
    flops = bench.train_flops_per_example(build_model("digits", **TINY), (1, 8, 8))
    for style in ("torch_eager", "linen_jit"):
        r = rows[style]
        assert r["status"] == "ok" and r["fastest"], r
        assert len(r["rate"]["runs"]) == 2
        assert r["rate"]["min"] <= r["rate"]["median"] <= r["rate"]["max"]
        assert r["compile_s"] >= 0 and r["tflops"] > 0
        assert r["flops_per_step"] == 16 * flops
    # a Flax style on converted weights passes the gate, at float32 rounding level
    gate = rows["linen_jit"]["gate"]
    assert gate["passed"] and gate["max_rel_err"] < 1e-5 and len(gate["losses"]) == bench.GATE_STEPS
    (summary,) = data["summary"]
    assert summary["torch_over_linen"] == pytest.approx(
        rows["torch_eager"]["rate"]["median"] / rows["linen_jit"]["rate"]["median"]
    )
    assert summary["vmap_over_scan"] is None  # neither was run
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = bench.format_report(report)
    assert "| digits | 16 | linen_jit * |" in text and "SKIPPED" in text


@pytest.mark.slow  # gates every style of both models, 15 s in the 2026-11-30 full run (load ~4)
def test_quick_gates_each_style_once_per_model(monkeypatch):
    from parity.bench import measure

    calls = []
    real = bench.check_gate
    monkeypatch.setattr(
        measure, "check_gate", lambda style, wl, ref: calls.append(wl.batch_size) or real(style, wl, ref)
    )
    cfg = bench.BenchConfig(
        models=["digits"],
        batch_sizes=[16, 32],
        device="cpu",
        repeats=1,
        steps=3,
        styles=["torch_eager"],
        config=TINY,
        peak_n=64,
        quick=True,
    )
    rows = bench.benchmark(cfg)["results"]
    assert calls == [16]
    assert [r["gate"]["batch_size"] for r in rows] == [16, 16]
    calls.clear()
    rows = bench.benchmark(replace(cfg, quick=False))["results"]  # a full run gates every batch size
    assert calls == [16, 32] and [r["gate"]["batch_size"] for r in rows] == [16, 32]


def test_time_runner_reports_median_min_max_and_compile_time():
    class Fake:
        prepare_s = 0.5

        def __init__(self):
            self.calls = 0

        def run(self):
            self.calls += 1

    fake = Fake()
    t = bench.time_runner(fake, repeats=3, units=10)
    assert fake.calls == 4  # one warm-up, three timed
    assert len(t["runs"]) == 3 and t["min"] <= t["median"] <= t["max"]
    assert t["compile_s"] >= 0.5
    assert np.allclose(t["runs"], [10 / s for s in t["seconds"]])


@pytest.mark.gpu
def test_a_short_cuda_run_gates_and_times_every_style():
    # --quick leaves torch.compile out (its cold Inductor compile took ~45 s per model on CPU)
    cfg = bench.BenchConfig(
        models=["digits"], batch_sizes=[128], device="cuda", repeats=2, steps=10, quick=True, peak_n=2048
    )
    report = bench.benchmark(cfg)
    statuses = {r["style"]: r["status"] for r in report["results"]}
    expected = dict.fromkeys(bench.STYLES, "ok") | {"torch_compile": "skipped"}
    assert statuses == expected, [(r["style"], r["reason"]) for r in report["results"]]
    assert all(r["gate"]["max_rel_err"] <= bench.GATE_RTOL for r in report["results"] if r["gate"])
    assert {t["target"] for t in report["targets"]} == set(bench.GPU_TARGETS)
