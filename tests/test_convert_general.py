"""The general converter on a user's model: name conventions (Linen list / Sequential, NNX
List / Sequential), flatten detection (two flattens, traced), user maps, and the errors naming
module and key. Tolerance: relative L2 <= 1e-5 (float32 reordering only; see
tests/test_convert_layers.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from convert_user_models import INPUT_SHAPE, linen_input, make_linen, make_nnx, make_torch
from torch import nn

from parity import layout
from parity.convert import ConversionError, flax_to_torch, map_models, torch_to_flax
from parity.harness.compare import rel_l2

TOL = 1e-5


def _x():
    return np.random.default_rng(0).standard_normal(INPUT_SHAPE, dtype=np.float32)


def _assert_same_state(back, sd):
    assert list(back) == list(sd)
    for k in sd:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(back[k], sd[k]), k


@pytest.mark.slow  # 7.5 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_user_model_linen_forward_parity_and_bit_exact_round_trip():
    tm, fm = make_torch(), make_linen()
    v = torch_to_flax(tm.state_dict(), tm, fm.init(jax.random.key(0), linen_input()))
    x = _x()
    ref = tm(torch.from_numpy(x)).detach().numpy()
    assert rel_l2(np.asarray(fm.apply(v, jnp.asarray(layout.to_channels_last(x)))), ref) <= TOL
    _assert_same_state(flax_to_torch(v, tm), tm.state_dict())


def test_user_model_nnx_forward_parity_and_bit_exact_round_trip():
    tm, nm = make_torch(), make_nnx()
    assert torch_to_flax(tm.state_dict(), tm, nm) is nm
    nm.eval()
    x = _x()
    ref = tm(torch.from_numpy(x)).detach().numpy()
    assert rel_l2(np.asarray(nm(jnp.asarray(layout.to_channels_last(x)))), ref) <= TOL
    _assert_same_state(flax_to_torch(nm, tm), tm.state_dict())


def test_pairing_follows_the_target_conventions_and_detects_both_flattens():
    tm = make_torch()
    pairing, rows = map_models(tm, make_linen().init(jax.random.key(0), linen_input()))
    pairs = {r["torch"]: r["flax"] for r in rows}
    assert pairing.ok and not pairing.unmatched_torch and not pairing.unmatched_flax
    assert pairs["stem.0.weight"] == "params/stem/layers_0/kernel"
    assert pairs["stem.1.running_var"] == "batch_stats/stem/layers_1/var"
    assert pairs["blocks.1.conv.weight"] == "params/blocks_1/conv/kernel"
    assert pairing.flatten.shapes == {"fc_main": (8, 16), "fc_side": (4, 16)}
    assert "torch.fx" in pairing.flatten.method
    nnx_pairs = {r["torch"]: r["flax"] for r in map_models(tm, make_nnx())[1]}
    assert nnx_pairs["stem.0.weight"] == "params/stem/layers/0/kernel"
    assert nnx_pairs["blocks.1.bn.running_mean"] == "batch_stats/blocks/1/bn/mean"
    assert nnx_pairs["attn.in_proj_weight"] == "params/attn/query/kernel"


class _ScaledMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.conv(x) * 2.0, 1))  # '*' hides the channel count


def test_a_dry_run_on_the_input_shape_finds_what_channel_tracing_cannot():
    tm = _ScaledMap()
    v = {"params": {"conv": {"kernel": np.zeros((1, 1, 2, 3), np.float32), "bias": np.zeros(3, np.float32)}}}
    v["params"]["fc"] = {"kernel": np.zeros((12, 4), np.float32), "bias": np.zeros(4, np.float32)}
    with pytest.raises(ConversionError, match=r"fc: a flattened map feeds this Linear.*--input-shape"):
        torch_to_flax(tm.state_dict(), tm, v)
    pairing, _ = map_models(tm, v, input_shape=(1, 2, 2, 2))
    assert pairing.ok and pairing.flatten.shapes == {"fc": (3, 2, 2)}
    assert pairing.flatten.method == "torch.fx + ShapeProp"


def _linen_vars():
    return make_linen().init(jax.random.key(0), linen_input())


def test_unmatched_key_is_named_and_a_user_map_fixes_it(tmp_path):
    tm = make_torch()
    v = jax.tree.map(np.asarray, _linen_vars())
    v["params"]["head"] = v["params"].pop("fc_attn")
    with pytest.raises(
        ConversionError, match=r"fc_attn\.weight \(fc_attn Linear\): no Flax module at fc_attn"
    ):
        torch_to_flax(tm.state_dict(), tm, v)
    rules = tmp_path / "map.txt"
    rules.write_text("# torch -> flax\nfc_(attn) -> head  # renamed\n")
    out = torch_to_flax(tm.state_dict(), tm, v, user_map=str(rules))
    np.testing.assert_array_equal(out["params"]["head"]["kernel"], tm.fc_attn.weight.detach().numpy().T)
    out = torch_to_flax(tm.state_dict(), tm, v, user_map=lambda n: "head" if n == "fc_attn" else None)
    _assert_same_state(flax_to_torch(out, tm, user_map=str(rules)), tm.state_dict())


def test_extra_flax_leaf_is_named():
    tm = make_torch()
    v = jax.tree.map(np.asarray, _linen_vars())
    v["params"]["extra"] = {"kernel": np.zeros((2, 2), np.float32)}
    with pytest.raises(ConversionError, match=r"params/extra/kernel: no torch tensor maps to this Flax leaf"):
        torch_to_flax(tm.state_dict(), tm, v)


def test_shape_and_dtype_mismatch_name_module_and_key():
    tm = make_torch()
    v = jax.tree.map(np.asarray, _linen_vars())
    v["params"]["fc_main"]["kernel"] = np.zeros((128, 6), np.float32)
    with pytest.raises(
        ConversionError, match=r"fc_main \(Linear\): params/fc_main/kernel: expected shape \(128, 6\)"
    ):
        torch_to_flax(tm.state_dict(), tm, v)
    v = jax.tree.map(np.asarray, _linen_vars())
    v["params"]["side"]["bias"] = v["params"]["side"]["bias"].astype(np.float16)
    with pytest.raises(ConversionError, match=r"side \(Conv2d\): params/side/bias: expected dtype float16"):
        torch_to_flax(tm.state_dict(), tm, v)
    sd = tm.state_dict()
    sd["fc_side.bias"] = sd["fc_side.bias"].double()
    with pytest.raises(ConversionError, match=r"fc_side\.bias: expected dtype float32, got float64"):
        torch_to_flax(sd, tm, _linen_vars())


def test_layer_without_rule_is_named():
    tm = make_torch()
    tm.stem[2] = nn.PReLU(8)
    with pytest.raises(ConversionError, match=r"stem\.2 \(PReLU\): no layer rule \(holds stem\.2\.weight\)"):
        torch_to_flax(tm.state_dict(), tm, _linen_vars())


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(3 * 2 * 2, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            x = -x
        return self.fc(torch.flatten(self.conv(x), 1))


def test_untraceable_model_needs_an_explicit_flatten():
    tm = _Untraceable()
    v = {
        "params": {
            "conv": {"kernel": np.zeros((1, 1, 2, 3), np.float32), "bias": np.zeros(3, np.float32)},
            "fc": {"kernel": np.zeros((12, 4), np.float32), "bias": np.zeros(4, np.float32)},
        }
    }
    with pytest.raises(ConversionError, match=r"cannot trace.*--flatten LAYER=C,H,W"):
        torch_to_flax(tm.state_dict(), tm, v)
    out = torch_to_flax(tm.state_dict(), tm, v, flatten_shapes={"fc": (3, 2, 2)})
    w = tm.fc.weight.detach().numpy()
    np.testing.assert_array_equal(out["params"]["fc"]["kernel"], layout.dense_kernel_to_flax(w, (3, 2, 2)))
    _assert_same_state(flax_to_torch(out, tm, flatten_shapes={"fc": (3, 2, 2)}), tm.state_dict())


def test_never_pairs_by_position():
    """Same layers in the same order under other names: nothing pairs, everything is listed."""
    tm = make_torch()
    v = jax.tree.map(np.asarray, _linen_vars())
    v["params"] = {f"renamed_{k}": val for k, val in v["params"].items()}
    pairing, rows = map_models(tm, v)
    assert not pairing.ok
    # only the BN statistics, whose names were left alone, pair; nothing pairs to a renamed leaf
    assert all(not r["flax"] or r["flax"].startswith("batch_stats/") for r in rows)
    assert (
        "fc_main.weight" in pairing.unmatched_torch
        and "params/renamed_fc_main/kernel" in pairing.unmatched_flax
    )


class _Gain(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return x * self.gain


class _WithToken(nn.Module):
    """A container owning a parameter directly (like a ViT class token) and a custom layer."""

    def __init__(self):
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 4))
        self.fc = nn.Linear(4, 4)
        self.gain = _Gain(4)

    def forward(self, x):
        return self.gain(self.fc(x + self.token))


def test_a_user_registered_rule_and_a_container_parameter():
    from parity.convert import Transfer, register_rule, rules

    tm = _WithToken()
    v = {
        "params": {
            "token": np.zeros((1, 1, 4), np.float32),
            "fc": {"kernel": np.zeros((4, 4), np.float32), "bias": np.zeros(4, np.float32)},
            "gain": {"scale": np.zeros(4, np.float32)},
        }
    }
    with pytest.raises(ConversionError, match=r"gain \(_Gain\): no layer rule \(holds gain\.gain\)"):
        torch_to_flax(tm.state_dict(), tm, v)
    register_rule(_Gain)(lambda module, ctx: [Transfer(("gain",), ("params/scale",), "copy")])
    try:
        out = torch_to_flax(tm.state_dict(), tm, v)
        np.testing.assert_array_equal(out["params"]["gain"]["scale"], tm.gain.gain.detach().numpy())
        np.testing.assert_array_equal(out["params"]["token"], tm.token.detach().numpy())
        _assert_same_state(flax_to_torch(out, tm), tm.state_dict())
        rows = map_models(tm, v)[1]
        assert {r["torch"]: r["rule"] for r in rows}["token"] == "copy (parameter)"
    finally:
        rules._RULES.pop(_Gain)


def test_a_tensor_the_rule_does_not_know_is_refused_by_name():
    tm = nn.Sequential(nn.Linear(2, 2))
    tm[0].register_buffer("scale_hint", torch.ones(2))
    v = {"params": {"layers_0": {"kernel": np.zeros((2, 2), np.float32), "bias": np.zeros(2, np.float32)}}}
    with pytest.raises(
        ConversionError, match=r"0\.scale_hint \(0 Linear\): the Linear rule does not convert it"
    ):
        torch_to_flax(tm.state_dict(), tm, v)
