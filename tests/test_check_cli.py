"""``parity check``: the foundation JSON contract, the harness sections, exit codes, and (on a
GPU) both precision policies side by side."""

import json

import pytest
import torch

from flax_impl import linen_models
from parity.cli import main

CONTRACT_KEYS = {"model", "framework", "check", "value", "tolerance", "passed"}


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


# the whole CLI contract, every level on both models and frameworks: 68 s in the 2026-11-30 full
# run (load ~4); the other check CLI tests run by default
@pytest.mark.slow
def test_contract_and_harness_sections(tmp_path, capsys):
    """NNX end to end: foundation rows, layers, gradients, a float64 and a float32 trajectory
    with Adam (optax state over nnx.State), JSON and plot."""
    out, png = tmp_path / "check.json", tmp_path / "check.png"
    rc = main(
        [
            "check",
            "--device",
            "cpu",
            "--models",
            "digits",
            "--frameworks",
            "nnx",
            "--batch-size",
            "32",
            "--localize",
            "--trajectory",
            "2",
            "--optimizer",
            "adam",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "model" in printed and "tolerance" in printed and "forward_eval_rel_l2" in printed
    doc = read(out)
    assert doc["passed"] is True and doc["device"] == "cpu" and doc["precisions"] == ["strict"]
    # the precision probe per policy: on the CPU the strict policy gives float32 in both frameworks
    probe = doc["precision_probe"]["strict"]
    assert probe["as_expected"] is True
    assert {probe[f][op]["result"] for f in ("torch", "jax") for op in ("matmul", "conv")} == {"float32"}
    checks = doc["checks"]
    names = {c["check"] for c in checks}
    assert {
        "forward_eval_rel_l2",
        "forward_train_rel_l2",
        "bn_running_mean_rel_l2",
        "bn_running_var_corrected_rel_l2",
        "gradient_max_rel_l2",
        "roundtrip_max_abs",
        "layers_eval_max_rel_l2",
        "layers_train_max_rel_l2",
        "gradients_train_max_rel_l2",
    } <= names
    for c in checks:
        assert set(c) >= CONTRACT_KEYS
        assert c["model"] == "digits" and c["framework"] == "nnx"
        assert isinstance(c["value"], float) and isinstance(c["tolerance"], float) and c["passed"] is True
    # per-layer section: every layer of both modes and every parameter gradient
    layers = doc["layers"]
    assert {r["report"] for r in layers} == {"layers_eval", "layers_train", "gradients_train"}
    assert [r["name"] for r in layers if r["report"] == "layers_eval"][:2] == ["conv1", "bn1"]
    assert {"max_abs", "rel_l2", "cosine", "outside", "passed"} <= set(layers[0])
    # per-step section
    assert "trajectory_adam_2_float64_worst_over_bound" in names
    steps = doc["trajectory"]
    assert [(s["dtype"], s["step"]) for s in steps] == [
        ("float64", 0),
        ("float64", 1),
        ("float32", 0),
        ("float32", 1),
    ]
    assert {"loss_torch", "loss_flax", "param_rel", "bn_rel", "opt_rel", "envelope", "f64_param_rel"} <= set(
        steps[0]
    )
    assert all(s["param_rel"] < 1e-12 for s in steps if s["dtype"] == "float64")
    # Adam moments of the NNX side (optax over nnx.State) were compared, in torch names
    assert all(s["opt_rel"] > 0 and s["opt_worst"].endswith(("exp_avg", "exp_avg_sq")) for s in steps)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # a whole check run (13.6 s of the idle default run, 2026-11-30); the fault's
# detection has unit tests (tests/test_faults.py::test_bn_eps), this keeps the exit code's contract
def test_a_failing_check_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(linen_models, "BN_EPSILON", 1e-3)  # a port with the wrong BN eps
    out = tmp_path / "check.json"
    rc = main(
        ["check", "--device", "cpu", "--models", "signal1d", "--frameworks", "linen", "--batch-size", "32"]
        + ["--json", str(out)]
    )
    assert rc == 1
    doc = read(out)
    assert doc["passed"] is False
    failed = {c["check"] for c in doc["checks"] if not c["passed"]}
    assert "forward_eval_rel_l2" in failed and "roundtrip_max_abs" not in failed
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--models", "resnet"], "unknown model"),
        (["--frameworks", "haiku"], "unknown framework"),
        (["--trajectory", "-1"], "STEPS"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    assert main(["check", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # 3.3 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_cuda_without_gpu_is_a_clear_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "check.json"
    assert main(["check", "--device", "cuda", "--precision", "default", "--json", str(out)]) == 2
    assert "cuda" in capsys.readouterr().err and not out.exists()


@pytest.mark.gpu
def test_gpu_both_precision_policies(tmp_path, capsys):
    """On a GPU: strict meets the CPU tolerances; default (TF32) is reported beside it with the
    policy's own tolerances. The numbers are printed for the closing note."""
    from parity.data import load
    from parity.device import configure
    from parity.harness.compare import zoo_pair
    from parity.harness.localize import GradientOptions, localize_gradients

    ds = load("digits")
    x, y = ds.x_test[:128], ds.y_test[:128]
    first_conv = {}
    for precision in ("strict", "default"):
        rt = configure("cuda", precision)
        pair = zoo_pair("digits", "linen", 0, dropout=0.0)
        pair.torch.to(rt.torch_device)
        rep = localize_gradients(pair, x, y, GradientOptions(tol=1e-5))
        first_conv[precision] = rep.row("conv1.weight").rel_l2
    print(f"first-conv gradient rel L2 on {torch.cuda.get_device_name(0)}: {first_conv}")
    assert first_conv["strict"] < 1e-5
    out = tmp_path / "gpu.json"
    rc = main(
        [
            "check",
            "--device",
            "cuda",
            "--precision",
            "both",
            "--models",
            "digits",
            "--localize",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    doc = read(out)
    assert (
        doc["precisions"] == ["strict", "default"]
        and "strict value" in printed
        and "default value" in printed
    )
    assert all(c["passed"] for c in doc["checks"] if c["precision"] == "strict"), printed
    assert rc == (0 if doc["passed"] else 1)


# ---------------------------------------------------------------- output targets, batch size


@pytest.mark.parametrize(
    "option,target,message",
    [
        ("--json", "outdir", "is a directory"),
        ("--json", "check.txt", "unknown extension"),
        ("--plot", "outdir", "is a directory"),
        ("--plot", "check.jpg", "unknown extension"),
        ("--plot", "check", "unknown extension"),
    ],
)
def test_output_targets_are_refused_before_the_work(option, target, message, tmp_path, capsys, monkeypatch):
    """A directory or a wrong extension: one line on stderr, exit 2, no check run, nothing written."""
    import parity.harness.suite as suite

    (tmp_path / "outdir").mkdir()
    monkeypatch.setattr(suite, "run_suite", lambda *a: pytest.fail("the work started"))
    assert main(["check", "--device", "cpu", option, str(tmp_path / target)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir"]


def test_batch_size_above_the_test_split_is_refused(capsys):
    assert main(["check", "--device", "cpu", "--models", "digits", "--batch-size", "361"]) == 2
    err = capsys.readouterr().err
    assert "larger than digits's test split (360" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("batch_size", [288, 300, 360])
def test_bn_passes_are_full_batches_at_any_legal_batch_size(batch_size):
    """Five passes over digits' 1,437 training samples: HEAD cut them at the end of the split
    (a short fifth pass from 288 on, an empty one at 360: ZeroDivisionError in jax's reshape)."""
    import numpy as np

    from parity.data import load
    from parity.harness.compare import bn_pass_batches

    x = load("digits").x_train
    passes = bn_pass_batches(x, batch_size, 5)
    assert [len(p) for p in passes] == [batch_size] * 5
    np.testing.assert_array_equal(np.concatenate(passes)[: len(x)], x[: 5 * batch_size])


# three end-to-end check runs of settings that failed once on the AVX2 dev box (their causes have
# fast unit tests): 21 s in all on the idle box (2026-11-30); .ci/run runs it with -m slow. Whether
# they reach the float64 re-judgement depends on the CPU's float32 kernels (on an AVX-512 CPU they
# pass without it); test_check_rejudges_a_float32_decision_flip_on_every_cpu reaches it everywhere.
@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["--seed=-1", "--frameworks", "nnx"],
        ["--batch-size", "2", "--frameworks", "linen"],
        ["--batch-size", "288", "--frameworks", "linen"],
    ],
)
def test_settings_that_failed_at_head_pass(argv, capsys):
    """The issue's failing settings (bn1.bias gradient ~5e-3 in float32; the short BN pass)."""
    rc = main(["check", "--device", "cpu", "--models", "digits", *argv])
    printed = capsys.readouterr().out
    assert rc == 0, printed


FLIP_SPECS = """
import numpy as np, torch, torch.nn.functional as F
from torch import nn
import flax.linen as fnn, jax.numpy as jnp

# A max-pool window p1 = (A1, B1) (both channels, first position), p2 = (A2, 0): exactly,
# A1 + B1 < A2 by ~1e-7 relative. Each side scales the window by 3.75, then a 1x1 conv with unit
# taps sums the two channels (two exact products: the same rounding for every kernel). Torch
# scales in two steps (x 3, then x 1.25), Flax in one: in float32 that reverses torch's order
# (p1 > p2) and keeps Flax's, on any IEEE float32 CPU. Found by a search over random float32
# triples; the test checks the three inequalities with numpy.
A1, B1, A2 = np.float32(1.9711058), np.float32(0.7511695), np.float32(2.7222755)
WINDOW = np.zeros((1, 2, 2, 2), np.float32)  # N, C, H, W
WINDOW[0, 0, 0, 0], WINDOW[0, 1, 0, 0], WINDOW[0, 0, 0, 1] = A1, B1, A2

class TorchFlip(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 1, bias=False)
        self.fc = nn.Linear(1, 2)
        self.register_buffer("window", torch.from_numpy(WINDOW), persistent=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)

    def forward(self, x):  # x (N, 2, 2, 2) only sets the batch size: 0 * x adds nothing
        h = (self.window + 0.0 * x) * 3.0 * 1.25
        return self.fc(torch.flatten(F.max_pool2d(self.conv(h), 2), 1))

class LinenFlip(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        h = (jnp.transpose(jnp.asarray(WINDOW), (0, 2, 3, 1)) + 0.0 * x) * 3.75  # NHWC
        h = fnn.max_pool(fnn.Conv(1, (1, 1), use_bias=False, name="conv")(h), (2, 2), (2, 2))
        return fnn.Dense(2, name="fc")(h.reshape(h.shape[0], -1))

def torch_flip():
    torch.manual_seed(0)
    return TorchFlip()

def linen_flip():
    return LinenFlip()
"""


def _rejudged_rows(doc) -> list[dict]:
    """Every row of the JSON document that carries a float64 verdict."""
    if isinstance(doc, dict):
        here = [doc] if doc.get("port_float64_rel_l2") is not None else []
        return here + [r for v in doc.values() for r in _rejudged_rows(v)]
    if isinstance(doc, list):
        return [r for v in doc for r in _rejudged_rows(v)]
    return []


@pytest.mark.slow  # 2.1 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_check_rejudges_a_float32_decision_flip_on_every_cpu(tmp_path, capsys):
    """The float64 re-judgement, end to end through ``parity check``: the torch side routes a
    max-pool gradient to the other element in float32 on any IEEE float32 CPU (the window of
    tests/test_faults.py, held by the models), the check passes, and the JSON shows that it was
    the float64 verdict that passed the conv gradient."""
    import numpy as np

    a1, b1, a2 = np.float32(1.9711058), np.float32(0.7511695), np.float32(2.7222755)
    assert all(str(v) in FLIP_SPECS for v in (a1, b1, a2))  # the values the models hold
    assert np.float64(a1) + np.float64(b1) < np.float64(a2)  # the true order
    assert a1 * np.float32(3.75) + b1 * np.float32(3.75) < a2 * np.float32(3.75)  # Flax keeps it
    torch_order = (a1 * np.float32(3) * np.float32(1.25)) + (b1 * np.float32(3) * np.float32(1.25))
    assert torch_order > a2 * np.float32(3) * np.float32(1.25)  # torch reverses it
    (tmp_path / "flip_specs.py").write_text(FLIP_SPECS)
    spec, out = tmp_path / "flip_specs.py", tmp_path / "check.json"
    argv = ["check", "--device", "cpu", "--torch", f"{spec}:torch_flip", "--flax", f"{spec}:linen_flip"]
    rc = main([*argv, "--input-shape", "2,2,2,2", "--flatten", "fc=1,1,1", "--localize", "--json", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    rows = _rejudged_rows(read(out))
    assert rows and all(r["name"] == "conv.weight" for r in rows), rows
    assert all(r["rel_l2"] > 0.1 and r["port_float64_rel_l2"] < 1e-12 and r["passed"] for r in rows), rows
