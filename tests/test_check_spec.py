"""``parity check --torch SPEC --flax SPEC`` on user models: token and id inputs, labels from
the output's last dimension, and the one-line errors (a SPEC that does not import or returns
the wrong type, a layer with no rule, an unmatched key, a shape or dtype mismatch)."""

import json

import pytest

from parity.cli import main

MODELS = "tests/check_spec_models.py"
TOKENS = ["--torch", f"{MODELS}:torch_tokens", "--flax", f"{MODELS}:nnx_tokens"]
IDS = ["--torch", f"{MODELS}:torch_ids", "--flax", f"{MODELS}:linen_ids"]
IDS_INPUT = ["--input-shape", "4,7", "--input-dtype", "int64", "--input-high", "20"]


def check(*argv: str) -> int:
    return main(["check", "--device", "cpu", *argv])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("parity check: "), err
    return err


@pytest.mark.slow  # about 40 s under load (load average 13-20): a full check run of the NNX side
def test_float_tokens_stay_unmoved_and_labels_come_per_token(tmp_path, capsys):
    """(N, L, D) tokens with --no-channels-last, dropout on with shared masks, per-token logits
    (N, L, 5): every foundation row, on an NNX port."""
    out = tmp_path / "check.json"
    rc = check(*TOKENS, "--input-shape", "3,4,6", "--no-channels-last", "--json", str(out))
    assert rc == 0, capsys.readouterr()
    rows = {c["check"]: c for c in json.loads(out.read_text())["checks"]}
    assert set(rows) == {
        "forward_eval_rel_l2",
        "forward_train_rel_l2",
        "gradient_max_rel_l2",
        "roundtrip_max_abs",
    }
    assert all(r["model"] == "TorchTokens" and r["framework"] == "nnx" for r in rows.values())
    assert rows["roundtrip_max_abs"]["value"] == 0.0


def test_tokens_read_as_channels_first_fail(capsys):
    """Without --no-channels-last the (3, 4, 6) tokens reach Flax as (3, 6, 4): the port's
    LayerNorm(6) cannot take them, one line names the input."""
    assert check(*TOKENS, "--input-shape", "3,4,6") == 1
    assert "NNXTokens on input (3, 6, 4) failed" in one_line_error(capsys)


@pytest.mark.slow  # a full check run: 8-25 s under load (load average 18-20)
def test_int64_ids_with_a_linen_port(capsys):
    assert check(*IDS, *IDS_INPUT) == 0, capsys.readouterr()
    assert "PASS: 4/4" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        ([*IDS, "--input-shape", "4,7", "--input-dtype", "int64"], "needs --input-high"),
        ([*IDS, "--input-shape", "4,7", "--input-high", "20"], "applies to integer inputs"),
        ([*IDS, "--input-dtype", "int64", "--input-high", "20"], "need --input-shape"),
        (["--torch", f"{MODELS}:torch_ids", *IDS_INPUT], "give both --torch SPEC and --flax SPEC"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    assert check(*argv) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(
    "torch_spec, flax_spec, message",
    [
        ("no_such_package.models:make", "linen_ids", r"cannot import no_such_package.models"),
        ("torch_ids", "torch_ids", "returned TorchIds, not a Linen Module or an NNX Module"),
        ("linen_ids", "linen_ids", "returned LinenIds, not a torch.nn.Module"),
        ("torch_prelu", "linen_ids", "act (PReLU): no layer rule (holds act.weight)"),
        ("torch_ids", "linen_ids_renamed", "head.weight (head Linear): no Flax module at head"),
    ],
)
def test_models_that_do_not_convert_are_one_line_exit_1(torch_spec, flax_spec, message, capsys):
    spec = lambda s: s if ":" in s else f"{MODELS}:{s}"
    assert check("--torch", spec(torch_spec), "--flax", spec(flax_spec), *IDS_INPUT) == 1
    assert message in one_line_error(capsys)


def test_a_map_rule_pairs_the_renamed_head(tmp_path, capsys):
    rules = tmp_path / "rules.txt"
    rules.write_text("head -> classifier\n")
    argv = ["--torch", f"{MODELS}:torch_ids", "--flax", f"{MODELS}:linen_ids_renamed", *IDS_INPUT]
    assert check(*argv, "--map", str(rules)) == 0, capsys.readouterr()


@pytest.mark.parametrize(
    "torch_spec, flax_spec, message",
    [
        (
            "torch_tokens",
            "nnx_tokens_wrong_width",
            "fc (Linear): params/fc/kernel: expected shape (6, 4), got (6, 5)",
        ),
        (
            "torch_tokens_double",
            "nnx_tokens",
            "norm (LayerNorm): params/norm/scale: expected dtype float32, got float64",
        ),
    ],
)
def test_shape_and_dtype_mismatches_name_module_and_key(torch_spec, flax_spec, message, capsys):
    argv = ["--torch", f"{MODELS}:{torch_spec}", "--flax", f"{MODELS}:{flax_spec}"]
    assert check(*argv, "--input-shape", "3,4,6", "--no-channels-last") == 1
    assert message in one_line_error(capsys)


def test_dropout_masks_off_refuses_a_model_with_dropout(capsys):
    argv = [*TOKENS, "--input-shape", "3,4,6", "--no-channels-last", "--dropout-masks", "off"]
    assert check(*argv) == 1
    assert "TorchTokens has dropout (drop)" in one_line_error(capsys)


def test_the_flax_shape_and_then_the_module_type_decide_an_activation_layout():
    import numpy as np
    from torch import nn

    from parity.layout import layout_hint, torch_to_flax_layout

    tokens = np.zeros((2, 5, 8))  # (N, L, D): the same in both frameworks
    assert torch_to_flax_layout(tokens, (2, 5, 8)).shape == (2, 5, 8)
    fmap = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # (N, C, H, W)
    assert np.array_equal(torch_to_flax_layout(fmap, (2, 4, 5, 3)), np.moveaxis(fmap, 1, -1))
    square = np.arange(2 * 4 * 4 * 4).reshape(2, 4, 4, 4)  # C = H = W: both readings fit
    assert np.array_equal(
        torch_to_flax_layout(square, (2, 4, 4, 4), "channels_first"), np.moveaxis(square, 1, -1)
    )
    assert torch_to_flax_layout(square, (2, 4, 4, 4), "same") is square
    assert layout_hint(nn.Conv2d(1, 1, 1)) == layout_hint(nn.BatchNorm2d(1)) == "channels_first"
    assert layout_hint(nn.Linear(1, 1)) == layout_hint(nn.LayerNorm(1)) == "same"
    assert layout_hint(nn.ReLU()) is None


@pytest.mark.slow  # a full check run with --localize and float64 re-judgement: ~9 s under load
def test_a_port_bug_fails_and_localize_names_the_layer(capsys):
    argv = ["--torch", f"{MODELS}:torch_ids", "--flax", f"{MODELS}:linen_ids_scaled", *IDS_INPUT]
    assert check(*argv, "--localize") == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "forward_eval_rel_l2" in captured.out
    # the scale sits between the embedding and the head: the head's input already differs
    assert "first divergent: head (input, flax head)" in captured.err
    assert "the difference arises between embed (whose output matched) and head" in captured.err
    assert "a real difference: float64 keeps it" in captured.err and "cannot resolve" not in captured.err


@pytest.mark.slow  # a full check run of a 9-layer user model with float64 re-judgement
def test_a_conv_bias_before_batchnorm_passes_its_zero_gradient(tmp_path, capsys):
    """tests/convert_user_models.py's stem is Conv2d(bias=True) -> BatchNorm2d: in train mode the
    batch mean removes the bias, its true gradient is 0, and both sides' float64 values are
    rounding noise. Judged on the largest gradient's scale, the correct NNX port passes."""
    users = "tests/convert_user_models.py"
    out = tmp_path / "check.json"
    argv = ["--torch", f"{users}:make_torch", "--flax", f"{users}:make_nnx", "--input-shape", "2,3,4,4"]
    assert check(*argv, "--json", str(out)) == 0, capsys.readouterr()
    rows = {c["check"]: c for c in json.loads(out.read_text())["checks"]}
    assert rows["gradient_max_rel_l2"]["value"] <= 1e-5 and rows["bn_running_mean_rel_l2"]["passed"]
