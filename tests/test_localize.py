"""Layer-by-layer localisation, gradient localisation, shared dropout masks, assert_parity,
and the MIGRATION.md guide (its code blocks are executed here, so the guide cannot rot)."""

import re
from pathlib import Path

import flax.linen as fnn
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from parity import layout
from parity.data import load
from parity.harness.compare import zoo_pair
from parity.harness.localize import (
    FlaxSide,
    GradientOptions,
    LocalizeOptions,
    ModelPair,
    SharedDropout,
    activation_to_flax,
    compare_tensor,
    flax_dropout_hook,
    localize,
    localize_gradients,
    mask_scale,
    rejudge_in_float64,
    torch_shared_dropout,
)
from parity.testing import assert_parity

SMALL = {"channels": (4, 8), "hidden": 16}
ORDER = ["conv1", "bn1", "conv2", "bn2", "fc1", "bn3", "dropout", "fc2"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    ds = load("digits")
    return ds.x_test[:48], ds.y_test[:48]


@pytest.mark.parametrize("framework", ["linen", "nnx"])
@pytest.mark.slow  # 11.2 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_matching_models_pass_in_both_modes(digits, framework):
    x, y = digits
    pair = zoo_pair("digits", framework, 0, **SMALL)  # dropout 0.3: on in train mode
    running_mean = pair.torch.bn1.running_mean.clone()
    ev = localize(pair, x, LocalizeOptions(mode="eval", float64_reference=True))
    tr = localize(pair, x, LocalizeOptions(mode="train"))
    assert ev.passed and tr.passed, ev.format() + "\n" + tr.format()
    assert [r.name for r in ev.rows] == ORDER  # torch execution order, NCHW outputs aligned to NHWC
    assert ev.row("conv1").shape == (48, 8, 8, 4)
    # cross-framework differences are float32 rounding: same order as torch32 vs torch64
    for r in ev.rows:
        assert r.rel_l2 < 1e-5 and r.float64_rel_l2 < 1e-5 and r.cosine > 0.999999
    # train mode also compares the updated BN running statistics, variance corrected
    assert [r.kind for r in tr.rows if r.name == "bn3"] == ["output", "running_mean", "running_var"]
    # and the dropout layer really dropped (shared masks), identically on both sides
    assert tr.row("dropout").passed
    # the models were not touched: torch stats, NNX stats, NNX classes
    assert torch.equal(pair.torch.bn1.running_mean, running_mean)
    if framework == "nnx":
        assert np.array_equal(np.asarray(pair.flax.bn1.mean[...]), running_mean.numpy())
        assert not hasattr(nnx.Conv.__call__, "_parity_wrapped")
    grads = localize_gradients(pair, x, y)
    assert grads.passed, grads.format()
    names = [r.name for r in grads.rows]
    assert names[0] == "fc2.bias" and names[-1] == "conv1.weight"  # backward order


def test_reinject_isolates_the_faulty_layer(digits):
    """A wrong conv2 kernel: without reinjection every later layer differs too; with it, only
    conv2 does, because each Flax layer gets the torch layer's input."""
    x, _ = digits
    pair = zoo_pair("digits", "linen", 0, **SMALL)
    variables = {"params": dict(pair.variables["params"]), "batch_stats": pair.variables["batch_stats"]}
    k = pair.variables["params"]["conv2"]["kernel"].copy()
    k[..., 0] *= 1.5  # one output channel scaled
    variables["params"]["conv2"] = {"kernel": k}
    chained = localize(pair.replace(variables=variables), x)
    isolated = localize(pair.replace(variables=variables), x, LocalizeOptions(reinject=True))
    assert chained.first_divergent.name == isolated.first_divergent.name == "conv2"
    assert [r.name for r in chained.rows if not r.passed] == ["conv2", "bn2", "fc1", "bn3", "dropout", "fc2"]
    assert [r.name for r in isolated.rows if not r.passed] == ["conv2"]
    # one channel of eight is wrong: the share of elements outside tolerance says so
    assert isolated.row("conv2").outside == pytest.approx(1 / 8, abs=0.02)


def test_shared_masks_are_identical_in_both_layouts():
    """A 4-D dropout input: torch (NCHW), Linen and NNX (NHWC) keep exactly the same elements."""
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype(np.float32)

    class TorchDrop(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.4)

        def forward(self, x):
            return self.drop(x)

    class LinenDrop(fnn.Module):
        @fnn.compact
        def __call__(self, x, *, train):
            return fnn.Dropout(0.4, deterministic=not train, name="drop")(x)

    class NnxDrop(nnx.Module):
        def __init__(self):
            self.drop = nnx.Dropout(0.4, rngs=nnx.Rngs(0))

        def __call__(self, x):
            return self.drop(x)

    tm = TorchDrop().train()
    with torch_shared_dropout(tm, SharedDropout(7), step=3) as rec:
        out_t = tm(torch.from_numpy(x)).numpy()
    u = rec["drop"][0]
    assert np.array_equal(u, SharedDropout(7).uniform(3, "drop", 0, x.shape))  # reproducible from the seed
    assert 0.3 < np.mean(out_t == 0) < 0.5
    assert np.array_equal(out_t, x * mask_scale(u, 0.4))
    for side in (FlaxSide(LinenDrop(), {"params": {}}), FlaxSide(NnxDrop())):
        hook = flax_dropout_hook({"drop": [jnp.asarray(activation_to_flax(u))]})  # one hook per forward pass
        out_f, _, _ = side.apply(
            side.params,
            side.batch_stats,
            side.rest,
            jnp.asarray(layout.to_channels_last(x)),
            train=True,
            hook=hook,
        )
        assert np.array_equal(np.asarray(out_f), layout.to_channels_last(out_t)), side.kind


def test_user_model_with_different_names_and_stateless_layers():
    """nn.Sequential names ('0', '2') against Linen auto names (Dense_0, Dense_1): layer_map;
    nn.ReLU has no Flax module and no state, so it is listed, not compared."""
    torch.manual_seed(0)
    tm = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    class Mlp(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = fnn.relu(fnn.Dense(8)(x))  # Dense_0
            return fnn.Dense(3)(x)  # Dense_1

    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    variables = {
        "params": {
            "Dense_0": {"kernel": sd["0.weight"].T, "bias": sd["0.bias"]},
            "Dense_1": {"kernel": sd["2.weight"].T, "bias": sd["2.bias"]},
        }
    }
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    rep = localize(ModelPair(tm, Mlp(), variables, layer_map={"0": "Dense_0", "2": "Dense_1"}), x)
    assert rep.passed, rep.format()
    assert [r.flax_name for r in rep.rows] == ["Dense_0", "Dense_1"]
    assert rep.meta["unmatched_stateless_torch_layers"] == ["1"]
    # without the map, the layers with parameters are reported as missing on the Flax side
    bad = localize(ModelPair(tm, Mlp(), variables), x)
    assert bad.first_divergent.name == "0" and "missing on the Flax side" in bad.first_divergent.note
    # gradients of a model outside the converter's rules: param_map
    y = np.array([0, 1, 2, 0, 1], np.int32)
    param_map = lambda t: {  # noqa: E731
        "0.weight": t["Dense_0"]["kernel"].T,
        "0.bias": t["Dense_0"]["bias"],
        "2.weight": t["Dense_1"]["kernel"].T,
        "2.bias": t["Dense_1"]["bias"],
    }
    g = localize_gradients(
        ModelPair(tm, Mlp(), variables, param_map=param_map), x, y, GradientOptions(mode="eval")
    )
    assert g.passed and [r.name for r in g.rows] == ["2.bias", "2.weight", "0.bias", "0.weight"]


def test_assert_parity_passes_and_fails_with_the_report(digits):
    x, y = digits
    pair = zoo_pair("digits", "linen", 0, **SMALL)
    reports = assert_parity(pair, x, LocalizeOptions(mode="train"), y=y)
    assert [r.passed for r in reports] == [True, True]
    # a converter that forgot the flatten permutation (plain transpose of fc1)
    params = dict(pair.variables["params"])
    params["fc1"] = {"kernel": layout.dense_kernel_to_flax(pair.torch.fc1.weight.detach().numpy())}
    with pytest.raises(AssertionError) as err:
        assert_parity(pair.replace(variables={**pair.variables, "params": params}), x)
    msg = str(err.value)
    first = msg.splitlines()[0]
    assert "first divergent: fc1 (output" in first and "> tol 1.0e-05" in first
    value = float(re.search(r"rel_l2 ([0-9.e+-]+) >", first).group(1))
    assert value > 0.1  # a layout bug is an order-1 difference
    assert "conv1" in msg and "fc2" in msg  # the whole table follows


def test_bad_inputs(digits):
    x, _ = digits
    pair = zoo_pair("digits", "linen", 0, **SMALL)
    with pytest.raises(ValueError, match="variables"):
        localize(pair.replace(variables=None), x)
    with pytest.raises(ValueError, match="mode"):
        localize(pair, x, LocalizeOptions(mode="training"))
    with pytest.raises(TypeError, match="flax"):
        localize(pair.replace(flax=object()), x)


# runs MIGRATION.md's code end to end: 11 s on the idle box (2026-11-30); .ci/run runs it with -m slow
@pytest.mark.slow
def test_migration_guide_code_runs(capsys):
    """Execute every ```python block of MIGRATION.md's "How to parity-test your own model"."""
    text = (ROOT / "MIGRATION.md").read_text(encoding="utf-8")
    section = text[text.index("## How to parity-test your own model") :]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 5
    namespace = {"__name__": "migration_guide"}
    for block in blocks:
        exec(compile(block, "MIGRATION.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "first divergent: bn1 (running_mean" in out
    assert "within tolerance at every step" in out


def test_a_gradient_that_is_zero_in_float64_is_judged_on_the_largest_gradients_scale():
    # a conv bias right before a train-mode BatchNorm: the true gradient is exactly zero, each
    # side computes rounding noise, and their relative difference is ~1 even in float64
    rng = np.random.default_rng(0)
    torch64 = rng.standard_normal(8) * 1e-17
    noise = rng.standard_normal(8) * 1e-17
    row = compare_tensor("b", "grad", "b", np.ones(8), np.zeros(8), 1e-5)
    scale = 1.0  # the largest parameter gradient's float64 norm
    assert rejudge_in_float64(row, torch64 * 1e8, torch64, noise).passed is False  # relative: noise/noise
    ok = rejudge_in_float64(row, torch64 * 1e8, torch64, noise, scale)
    assert ok.passed and ok.port_float64_rel_l2 < 1e-15 and "true gradient is zero" in ok.note
    # a port that gives the parameter a real gradient still fails on that scale
    assert not rejudge_in_float64(row, torch64 * 1e8, torch64, noise + 1e-6, scale).passed
    # a non-zero true gradient is still judged relative to itself
    g = rng.standard_normal(8) * 1e-3
    assert not rejudge_in_float64(row, g, g, g * (1 + 1e-8), scale).passed
    assert rejudge_in_float64(row, g, g, g * (1 + 1e-12), scale).passed
