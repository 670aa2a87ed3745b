"""The MIGRATION.md example end to end from the command line: a model none of the project's
code defines (docs/examples/tiny_transformer_torch.py: nn.Sequential stem, a list of pre-LN
blocks with LayerNorm, nn.MultiheadAttention and dropout) and its Linen and NNX ports
(docs/examples/tiny_transformer_flax.py) pair with nothing unmatched and pass every level of
``parity check``."""

import json

import pytest

from parity.cli import main

TORCH = "docs/examples/tiny_transformer_torch.py:make"
FLAX = "docs/examples/tiny_transformer_flax.py:make_{}"


# NNX builds its weights eagerly, one small XLA compilation per initializer: ~16 s under load
@pytest.mark.parametrize("framework", ["linen", pytest.param("nnx", marks=pytest.mark.slow)])
def test_map_pairs_everything(framework, tmp_path, capsys):
    out = tmp_path / "map.json"
    argv = ["map", "--torch", TORCH, "--flax", FLAX.format(framework), "--input-shape", "4,3,16,16"]
    assert main([*argv, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["ok"] and doc["unmatched_torch"] == [] and doc["unmatched_flax"] == [] and not doc["problems"]
    flax = {r["torch"]: r["flax"] for r in doc["pairs"]}
    prefix = {"linen": "params/blocks_1/", "nnx": "params/blocks/1/"}[framework]
    assert flax["blocks.1.attn.in_proj_weight"].startswith(prefix + "attn/")
    assert "all paired" in capsys.readouterr().out


@pytest.mark.slow  # about a minute of CPU per framework: every level, float64 and float32 trajectories
@pytest.mark.parametrize("framework", ["linen", "nnx"])
def test_check_passes_every_level(framework, tmp_path, capsys):
    out = tmp_path / "check.json"
    argv = ["check", "--device", "cpu", "--torch", TORCH, "--flax", FLAX.format(framework)]
    argv += ["--input-shape", "4,3,16,16", "--localize", "--trajectory", "2", "--json", str(out)]
    assert main(argv) == 0, capsys.readouterr()
    doc = json.loads(out.read_text())
    names = {c["check"] for c in doc["checks"]}
    assert {"forward_train_rel_l2", "bn_running_var_corrected_rel_l2", "gradient_max_rel_l2"} <= names
    assert "trajectory_sgd_2_float64_worst_over_bound" in names and "roundtrip_max_abs" in names
    rows = {r["name"]: r for r in doc["layers"] if r["report"] == "layers_train" and r["kind"] == "output"}
    # dropout on tokens (N, L, D) with shared masks, compared in the same layout on both sides
    assert rows["blocks.0.drop"]["shape"] == [4, 64, 16] and rows["blocks.0.drop"]["passed"]
    # (4, 16, 16, 16): C equals H and W, the module type says channels-first
    assert rows["stem.1"]["shape"] == [4, 16, 16, 16]
