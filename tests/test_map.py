"""``parity map`` and ``parity convert --torch SPEC --flax SPEC`` on user code from the command line."""

import json

import numpy as np
import pytest
import torch
from convert_user_models import make_torch

from parity.cli import main

MODELS = "tests/convert_user_models.py"
TORCH, NNX, LINEN = f"{MODELS}:make_torch", f"{MODELS}:make_nnx", f"{MODELS}:make_linen"


def test_map_nnx_prints_the_pairing_and_exits_0(tmp_path, capsys):
    out_json = tmp_path / "map.json"
    assert main(["map", "--torch", TORCH, "--flax", NNX, "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "stem.0.weight" in out and "params/stem/layers/0/kernel" in out
    assert "transpose + flatten permutation (C=8, spatial=(16,))" in out
    assert "split q/k/v + head split (in, 2, 4)" in out and "all paired" in out
    report = json.loads(out_json.read_text())
    assert report["ok"] and report["unmatched_torch"] == [] and report["unmatched_flax"] == []
    row = next(r for r in report["pairs"] if r["torch"] == "fc_main.weight")
    assert row["torch_shape"] == [5, 128] and row["flax_shape"] == [128, 5]


def test_map_linen_needs_an_input_shape(capsys):
    assert main(["map", "--torch", TORCH, "--flax", LINEN, "--input-shape", "2,3,4,4"]) == 0
    assert "params/blocks_1/conv/kernel" in capsys.readouterr().out
    assert main(["map", "--torch", TORCH, "--flax", LINEN]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --input-shape" in err


def test_map_lists_unmatched_keys_and_exits_1(tmp_path, capsys):
    args = ["map", "--torch", f"{MODELS}:make_small_torch", "--flax", f"{MODELS}:make_linen_renamed"]
    args += ["--input-shape", "2,3,4,4"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "unmatched torch keys (2): fc_attn.bias, fc_attn.weight" in out
    assert "unmatched Flax leaves (2): params/head/bias, params/head/kernel" in out
    rules = tmp_path / "rules.txt"
    rules.write_text("fc_attn -> head\n")
    assert main([*args, "--map", str(rules)]) == 0


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("no_such_package.models:make", r"cannot import no_such_package\.models: ModuleNotFoundError"),
        (f"{MODELS}:missing", r"has no callable 'missing'"),
        (f"{MODELS}:INPUT_SHAPE", r"has no callable 'INPUT_SHAPE'"),
        (f"{MODELS}:make_nnx", r"returned NNXUserNet, not a torch\.nn\.Module"),
        ("nocolon", r"expected package\.module:factory"),
        ("missing/file.py:make", r"no such file"),
    ],
)
@pytest.mark.slow  # 4.7 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_bad_specs_are_one_line_exit_1(capsys, spec, expected):
    assert main(["map", "--torch", spec, "--flax", NNX]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("parity map: ")
    assert __import__("re").search(expected, err), err


def test_map_usage_errors_exit_2():
    for argv in (["map", "--torch", TORCH], ["map", "--torch", TORCH, "--flax", NNX, "--input-shape", "2,x"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


@pytest.mark.parametrize(
    "flax, extra", [(NNX, []), (LINEN, ["--input-shape", "2,3,4,4"])], ids=["nnx", "linen"]
)
def test_convert_by_spec_round_trips_bit_exactly_through_every_format(tmp_path, capsys, flax, extra):
    sd = make_torch().state_dict()
    torch.save({"state_dict": sd}, tmp_path / "m.pth")
    spec = ["--torch", TORCH, "--flax", flax, *extra]
    assert main(["convert", *spec, str(tmp_path / "m.pth"), str(tmp_path / "m.msgpack")]) == 0
    said = capsys.readouterr().out
    assert "torch -> flax; flatten torch.fx (channels from modules): fc_main=(8, 16), fc_side=(4, 16)" in said
    assert main(["convert", *spec, str(tmp_path / "m.msgpack"), str(tmp_path / "back.safetensors")]) == 0
    assert main(["convert", *spec, str(tmp_path / "back.safetensors"), str(tmp_path / "again.msgpack")]) == 0
    assert (tmp_path / "m.msgpack").read_bytes() == (tmp_path / "again.msgpack").read_bytes()
    from safetensors.torch import load_file

    back = load_file(tmp_path / "back.safetensors")
    assert all(torch.equal(back[k], v) for k, v in sd.items() if "num_batches" not in k)


def test_convert_by_spec_names_a_mismatched_flax_file(tmp_path, capsys):
    from flax import serialization

    bad = {"params": {"fc_main": {"kernel": np.zeros((3, 3), np.float32)}}}
    (tmp_path / "bad.msgpack").write_bytes(serialization.msgpack_serialize(bad))
    code = main(
        ["convert", "--torch", TORCH, "--flax", NNX, str(tmp_path / "bad.msgpack"), str(tmp_path / "o.pt")]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "missing key(s)" in err
    assert not (tmp_path / "o.pt").exists()


def test_convert_needs_model_or_both_specs(tmp_path):
    for argv in (["convert", "a.pt", "b.msgpack"], ["convert", "--torch", TORCH, "a.pt", "b.msgpack"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
