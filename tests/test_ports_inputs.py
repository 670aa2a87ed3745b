"""What a user gives the converter beyond the two models: map files (dotted results that strip a
prefix, rules that match nothing, non-UTF-8 bytes), ``--flatten`` entries, a one-line
``rename_rule``, bfloat16 checkpoints, and a model torch.fx cannot trace that never flattens
into a Linear."""

import jax
import numpy as np
import pytest
import torch
from convert_user_models import make_linen, make_torch
from torch import nn

from parity.cli import main
from parity.convert import (
    ConversionError,
    Transfer,
    flax_to_torch,
    map_models,
    read_checkpoint,
    register_rule,
    rename_rule,
    rules,
    torch_to_flax,
    write_checkpoint,
)
from parity.convert.naming import load_user_map

PORTS = "tests/port_models.py"


def _init(module, *args):
    """Variables of the right shapes (zeros), without compiling an init."""
    shapes = jax.eval_shape(module.init, *args)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _linen_vars():
    return jax.tree.map(
        np.asarray, _init(make_linen(), jax.random.key(0), np.zeros((2, 4, 4, 3), np.float32))
    )


class _Wrapped(nn.Module):
    """The user model under a ``transformer`` attribute the port does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.transformer = make_torch()

    def forward(self, x):
        return self.transformer(x)


def test_a_dotted_map_result_strips_a_prefix(tmp_path):
    tm, v = _Wrapped().eval(), _linen_vars()
    assert not map_models(tm, v)[0].ok
    rules_file = tmp_path / "strip.map"
    rules_file.write_text(r"transformer\.(.*) -> \1" + "\n")
    pairing, rows = map_models(tm, v, user_map=str(rules_file))
    assert pairing.ok, pairing.problems
    pairs = {r["torch"]: r["flax"] for r in rows}
    assert pairs["transformer.stem.0.weight"] == "params/stem/layers_0/kernel"
    assert pairs["transformer.blocks.1.bn.running_mean"] == "batch_stats/blocks_1/bn/mean"
    out = torch_to_flax(tm.state_dict(), tm, v, user_map=str(rules_file))
    back = flax_to_torch(out, tm, user_map=str(rules_file))
    assert all(torch.equal(back[k], t) for k, t in tm.state_dict().items() if "num_batches" not in k)


def test_a_map_rule_that_matches_nothing_is_named(tmp_path, capsys):
    rules_file = tmp_path / "extra.map"
    rules_file.write_text("fc_attn -> fc_attn\nno_such_layer -> head  # a typo\n")
    tm = make_torch()
    with pytest.raises(
        ConversionError, match=r"extra\.map:2: map rule 'no_such_layer -> head' matches no torch"
    ):
        torch_to_flax(tm.state_dict(), tm, _linen_vars(), user_map=str(rules_file))
    args = ["map", "--torch", "tests/convert_user_models.py:make_torch", "--flax"]
    args += ["tests/convert_user_models.py:make_linen", "--input-shape", "2,3,4,4", "--map", str(rules_file)]
    assert main(args) == 1
    assert "problem: " + str(rules_file) + ":2: map rule 'no_such_layer -> head'" in capsys.readouterr().out


def test_a_flatten_entry_that_matches_no_linear_is_named():
    tm = make_torch()
    given = {"fc_main": (8, 4, 4), "fc_sied": (4, 4, 4)}
    with pytest.raises(
        ConversionError, match=r"--flatten fc_sied=4,4,4: the torch model has no nn\.Linear named"
    ):
        torch_to_flax(tm.state_dict(), tm, _linen_vars(), flatten_shapes=given)


def test_a_map_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.map"
    bad.write_bytes("fc_attn -> t\xeate\n".encode("latin-1"))
    with pytest.raises(
        ConversionError, match=r"latin1\.map: the map file is not UTF-8 text \(byte 0xea at offset 12\)"
    ):
        load_user_map(str(bad))
    args = ["map", "--torch", "tests/convert_user_models.py:make_torch", "--flax"]
    linen = ["tests/convert_user_models.py:make_linen", "--input-shape", "2,3,4,4"]
    assert main([*args, *linen, "--map", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not UTF-8 text" in err and "Traceback" not in err


class _Gain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x):
        return x * self.gain


def test_rename_rule_is_one_line():
    tm = nn.Sequential(nn.Linear(4, 4), _Gain())
    v = {
        "params": {
            "layers_0": {"kernel": np.zeros((4, 4), np.float32), "bias": np.zeros(4, np.float32)},
            "layers_1": {"scale": np.zeros(4, np.float32)},
        }
    }
    with pytest.raises(ConversionError, match=r"1 \(_Gain\): no layer rule \(holds 1\.gain\)"):
        torch_to_flax(tm.state_dict(), tm, v)
    register_rule(_Gain)(rename_rule(gain="scale"))
    try:
        out = torch_to_flax(tm.state_dict(), tm, v)
        np.testing.assert_array_equal(out["params"]["layers_1"]["scale"], tm[1].gain.detach().numpy())
        assert {r["torch"]: r["rule"] for r in map_models(tm, v)[1]}["1.gain"] == "copy (gain -> scale)"
    finally:
        rules._RULES.pop(_Gain)
    assert Transfer  # the long form stays available


class _UntraceableViT(nn.Module):
    """A patch convolution, then Linear layers over the ``C`` features of each token: no flatten
    into a Linear, and a data-dependent branch torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 4, 2, 2)
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(12, 2)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        if tokens.abs().sum() > 0:
            tokens = tokens * 1.0
        return self.head(self.qkv(tokens).mean(1))


def test_no_spurious_flatten_error_for_a_model_that_never_flattens_into_a_linear():
    """Given the input shape, a dry run with hooks sees tokens, not a flattened map, feed every
    Linear (without it, ``head``'s 12 = 3 x 4 features could be a flatten: detection asks)."""
    tm = _UntraceableViT()
    v = {
        "params": {
            "patch": {"kernel": np.zeros((2, 2, 3, 4), np.float32), "bias": np.zeros(4, np.float32)},
            "qkv": {"kernel": np.zeros((4, 12), np.float32), "bias": np.zeros(12, np.float32)},
            "head": {"kernel": np.zeros((12, 2), np.float32), "bias": np.zeros(2, np.float32)},
        }
    }
    with pytest.raises(ConversionError, match=r"give --input-shape \(a dry run finds it\)"):
        torch_to_flax(tm.state_dict(), tm, v)
    out = torch_to_flax(tm.state_dict(), tm, v, input_shape=(1, 3, 4, 4))
    np.testing.assert_array_equal(out["params"]["qkv"]["kernel"], tm.qkv.weight.detach().numpy().T)
    np.testing.assert_array_equal(out["params"]["head"]["kernel"], tm.head.weight.detach().numpy().T)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_bfloat16_checkpoints_convert_both_ways(tmp_path, capsys, suffix):
    from port_models import make_bf16

    src, mid, back = tmp_path / f"w{suffix}", tmp_path / "w.msgpack", tmp_path / f"back{suffix}"
    sd = make_bf16().state_dict()
    write_checkpoint(str(src), sd)
    args = [
        "convert",
        "--torch",
        f"{PORTS}:make_bf16",
        "--flax",
        f"{PORTS}:make_bf16_linen",
        "--input-shape",
        "2,4",
    ]
    assert main([*args, str(src), str(mid)]) == 0, capsys.readouterr().err
    assert main([*args, str(mid), str(back)]) == 0, capsys.readouterr().err
    again = read_checkpoint(str(back))
    for k, v in sd.items():
        assert again[k].dtype.name == "bfloat16"
        assert torch.equal(torch.from_numpy(again[k].view(np.int16)).view(torch.bfloat16), v), k
    f32 = [
        "convert",
        "--torch",
        f"{PORTS}:make_f32",
        "--flax",
        f"{PORTS}:make_f32_linen",
        "--input-shape",
        "2,4",
    ]
    assert main([*f32, str(src), str(tmp_path / "f32.msgpack")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected dtype float32, got bfloat16" in err


class _SquareProj(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.arange(16.0).reshape(4, 4))
        self.norm = nn.RMSNorm(4)

    def forward(self, x):
        return self.norm(x @ self.proj)


def test_a_square_bare_parameter_is_copied_and_torch_rmsnorm_has_a_rule():
    tm = _SquareProj()
    v = {
        "params": {
            "proj": {"kernel": np.zeros((4, 4), np.float32)},
            "norm": {"scale": np.zeros(4, np.float32)},
        }
    }
    out = torch_to_flax(tm.state_dict(), tm, v)
    np.testing.assert_array_equal(out["params"]["proj"]["kernel"], tm.proj.detach().numpy())  # not transposed
    rows = {r["torch"]: (r["flax"], r["rule"]) for r in map_models(tm, v)[1]}
    assert rows["proj"] == ("params/proj/kernel", "copy (parameter)")
    assert rows["norm.weight"] == ("params/norm/scale", "copy")


def test_tied_tensors_are_written_to_safetensors_once_per_key(tmp_path):
    shared = torch.arange(6.0).reshape(2, 3)
    path = str(tmp_path / "tied.safetensors")
    write_checkpoint(path, {"wte.weight": shared, "lm_head.weight": shared})  # safetensors alone refuses this
    back = read_checkpoint(path)
    np.testing.assert_array_equal(back["lm_head.weight"], back["wte.weight"])


class _UntraceableCNN(_UntraceableViT):
    """The same untraceable branch, with a real flatten into a Linear, and a token Linear
    after a LayerNorm whose input must not be taken for a flattened map."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4 * 2 * 2, 3)
        self.norm = nn.LayerNorm(2)
        self.tok = nn.Linear(8, 3)

    def forward(self, x):
        y = torch.relu(self.patch(x))
        if y.abs().sum() > 0:
            y = y * 1.0
        flat = self.fc(torch.flatten(y, 1))
        tokens = self.norm(y.flatten(2).transpose(1, 2)[..., :2])  # (N, 4, 2)
        return flat + self.tok(tokens.reshape(x.shape[0], -1))


def test_an_input_shape_finds_the_flatten_of_an_untraceable_model():
    from parity.convert.flatten import detect_flattens

    tm = _UntraceableCNN()
    with pytest.raises(ConversionError, match=r"torch\.fx cannot trace it .*--flatten LAYER=C,H,W"):
        detect_flattens(tm)
    found = detect_flattens(tm, input_shape=(2, 3, 4, 4))
    assert found.shapes == {"fc": (4, 2, 2)} and found.method.startswith("forward hooks")
    assert tm.training  # the eval-mode dry run restored the mode
