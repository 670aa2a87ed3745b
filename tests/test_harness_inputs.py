"""``parity check --torch/--flax`` on ports as real authors write them (issue 20): outputs
that are not one tensor (item 4), a ``BatchNorm(axis_name=...)`` outside ``pmap`` and dropout
that ignores the mode (item 10), several inputs and required keyword-only arguments, and ports
that cannot run in float64 (item 11). Each runs the CLI on a small model of our own written in
the construct's style (tests/check_output_models.py, check_input_models.py,
check_input_kwonly.py)."""

import json
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from parity.cli import main
from parity.harness import outputs

OUT = "tests/check_output_models.py"
INP = "tests/check_input_models.py"
KWONLY = "tests/check_input_kwonly.py"
IDS = ["--input-shape", "4,5", "--input-dtype", "int64", "--input-high", "11"]


def check(tmp_path, torch_spec: str, flax_spec: str, *argv: str) -> tuple[int, dict]:
    """Run ``parity check``; ``(exit code, {check name: row})`` (``{}`` without a JSON)."""
    out = tmp_path / "check.json"
    rc = main(
        ["check", "--device", "cpu", "--torch", torch_spec, "--flax", flax_spec, *argv, "--json", str(out)]
    )
    rows = {c["check"]: c for c in json.loads(out.read_text())["checks"]} if out.exists() else {}
    return rc, rows


# ------------------------------------------------------------------ item 4: several outputs


@dataclass
class _Out:
    logits: np.ndarray
    loss: None = None


def test_output_leaves_by_position_key_and_field():
    tree = ({"logits": np.ones(2), "aux": (np.zeros(1), None)}, _Out(np.ones(3)))
    found = outputs.leaves(tree)
    assert list(found) == ["0.logits", "0.aux.0", "0.aux.1", "1.logits", "1.loss"]
    assert found["0.aux.1"] is None
    assert outputs.default_path(tree) == "0.logits" and outputs.default_path(np.ones(2)) is None
    with pytest.raises(KeyError, match="'0.logits', '0.aux.0', '1.logits'"):
        outputs.pick(tree, "1.loss")  # a None leaf is not a tensor to pick


@pytest.mark.slow  # 15 s under load (a full check run, first jit compilations)
def test_a_logits_and_none_loss_tuple_against_a_port_returning_logits(tmp_path):
    """torch returns ``(logits, None)`` as GPTs do; the Linen port returns ``logits``: the
    logits are compared, the None loss is no error."""
    rc, rows = check(tmp_path, f"{OUT}:torch_lm", f"{OUT}:linen_lm_logits", *IDS)
    assert rc == 0
    assert set(rows) == {
        "forward_eval_rel_l2",
        "forward_train_rel_l2",
        "gradient_max_rel_l2",
        "roundtrip_max_abs",
    }


@pytest.mark.slow  # 3 to 14 s under load (a full check run, NNX)
def test_a_dict_against_a_model_output_dataclass_compares_every_leaf(tmp_path):
    """torch returns ``{'logits', 'hidden'}``, the NNX port a ``ModelOutput``-like dataclass
    (not a pytree): both leaves get rows, matched by key."""
    rc, rows = check(tmp_path, f"{OUT}:torch_lm_dict", f"{OUT}:nnx_lm_dataclass", *IDS)
    assert rc == 0
    assert {"forward_eval_rel_l2", "forward_eval_rel_l2[hidden]", "forward_train_rel_l2[hidden]"} <= set(rows)


@pytest.mark.slow  # 7 s under load (two full check runs)
def test_a_fault_in_the_second_output_fails_that_leaf_and_output_picks_one(tmp_path):
    """The port's ``hidden`` is 1 % off: its rows fail (1e-2), the logits' pass; ``--output
    logits`` compares that leaf alone and passes."""
    rc, rows = check(tmp_path, f"{OUT}:torch_lm_dict", f"{OUT}:linen_lm_scaled_hidden", *IDS)
    assert rc == 1
    assert rows["forward_eval_rel_l2[hidden]"]["value"] == pytest.approx(1e-2, rel=1e-3)
    assert rows["forward_eval_rel_l2"]["passed"] and rows["gradient_max_rel_l2"]["passed"]
    rc, rows = check(
        tmp_path, f"{OUT}:torch_lm_dict", f"{OUT}:linen_lm_scaled_hidden", *IDS, "--output", "logits"
    )
    assert rc == 0 and not any("[hidden]" in name for name in rows)


def test_last_position_only_at_inference_is_a_fail_naming_both_shapes(tmp_path, capsys):
    """torch returns only the last position's logits in eval mode, the port every position:
    a FAIL row with both shapes and where they part (after the last layer), not a crash."""
    rc, rows = check(tmp_path, f"{OUT}:torch_lm_last", f"{OUT}:linen_lm_logits", *IDS)
    assert rc == 1
    (name,) = [n for n in rows if n.startswith("forward_eval_rel_l2")]
    assert "torch (4, 1, 11) vs Flax (4, 5, 11)" in name and "lm_head" in name
    assert rows[name]["value"] is None  # inf in strict JSON
    assert rows["forward_train_rel_l2"]["passed"]  # train mode returns every position


def test_an_output_path_neither_side_has_is_one_line(tmp_path, capsys):
    rc, _ = check(tmp_path, f"{OUT}:torch_lm_dict", f"{OUT}:nnx_lm_dataclass", *IDS, "--output", "loss")
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert "--output: the torch model has no tensor output 'loss' (tensor outputs: 'logits', 'hidden')" in err


# ------------------------------------------------- item 10: pmap BatchNorm, dropout and its rng


@pytest.mark.slow  # 10 s under load (a full check run)
def test_a_batchnorm_written_for_pmap_runs_as_on_an_axis_of_size_one(tmp_path):
    """``BatchNorm(axis_name='batch')`` outside any mapped axis ('unbound axis name: batch'
    before): its statistics over one member are the plain batch statistics, and pass."""
    rc, rows = check(tmp_path, f"{OUT}:torch_bn", f"{OUT}:linen_bn_pmap", "--input-shape", "8,6")
    assert rc == 0
    assert rows["bn_running_var_corrected_rel_l2"]["passed"] and rows["forward_train_rel_l2"]["passed"]


@pytest.mark.slow  # 11 s each under load (a full check run)
@pytest.mark.parametrize("port", ["linen_bn_dropout_always_on", "nnx_bn_dropout_always_on"])
def test_dropout_hard_coded_on_is_a_mode_fail_naming_the_layer(tmp_path, port):
    """A port with ``Dropout(deterministic=False)`` drops in eval mode (before: Linen's
    InvalidRngError, no 'dropout' rng; NNX's "no `rngs` argument was provided to Dropout"): a
    FAIL row naming the dropout layer, and the eval forward fails."""
    rc, rows = check(tmp_path, f"{OUT}:torch_bn", f"{OUT}:{port}", "--input-shape", "8,6")
    assert rc == 1
    assert not rows["dropout_active_in_eval_mode[drop]"]["passed"]
    assert not rows["forward_eval_rel_l2"]["passed"] and rows["forward_train_rel_l2"]["passed"]


def test_a_linen_dropout_gets_a_dropout_rng():
    """A Linen model whose dropout is on gets a 'dropout' rng from the Flax side."""
    import flax.linen as fnn

    from parity.harness.sides import FlaxSide

    class AlwaysOn(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return fnn.Dropout(0.5, deterministic=False)(x)

    side = FlaxSide(AlwaysOn(), {"params": {}})
    out, _, _ = side.apply({}, {}, None, jnp.ones((2, 8)), train=False)
    assert set(np.unique(np.asarray(out))) <= {0.0, 2.0}


# ------------------------------------------------------------- item 11: several inputs


@pytest.mark.slow  # 24 s under load (two full check runs)
def test_two_positional_inputs_image_and_time(tmp_path):
    """``unet(x, time)``: ``--input 4:int64:10`` is the second positional input of both sides."""
    args = ["--input-shape", "4,3,6,6", "--input", "4:int64:10"]
    rc, rows = check(tmp_path, f"{INP}:torch_time_net", f"{INP}:linen_time_net", *args)
    assert rc == 0 and rows["bn_running_mean_rel_l2"]["passed"]
    rc, rows = check(tmp_path, f"{INP}:torch_time_net", f"{INP}:linen_time_net_scaled", *args)
    assert rc == 1 and not rows["forward_eval_rel_l2"]["passed"]


@pytest.mark.slow  # 6 s under load (a full check run, NNX)
def test_a_keyword_input_attention_mask(tmp_path, capsys):
    """``model(input_ids, attention_mask=...)``; the NNX ``Embed`` (float32 ``dtype`` by
    default) does not make the port float32-only: its lookup of float32 weights is exact."""
    args = ["--input-shape", "4,7", "--input-dtype", "int64", "--input-high", "20", "--no-channels-last"]
    rc, rows = check(
        tmp_path, f"{INP}:torch_masked", f"{INP}:nnx_masked", *args, "--input", "attention_mask=4,7:int64:2"
    )
    assert rc == 0 and len(rows) == 4
    assert "judged in float32" not in capsys.readouterr().err


def test_required_keyword_only_arguments_come_from_flax_call_kwargs(tmp_path):
    rc, rows = check(tmp_path, f"{KWONLY}:torch_scaled", f"{KWONLY}:linen_scaled", "--input-shape", "4,6")
    assert rc == 0 and rows["forward_eval_rel_l2"]["passed"]


def test_an_input_whose_batch_differs_is_one_line(tmp_path, capsys):
    args = ["--input-shape", "4,3,6,6", "--input", "3:int64:10"]
    rc, _ = check(tmp_path, f"{INP}:torch_time_net", f"{INP}:linen_time_net", *args)
    err = capsys.readouterr().err
    assert rc == 2 and err == "parity check: --input 3: batch 3, but the main input has 4\n"


def test_an_input_option_that_does_not_parse_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        check(tmp_path, f"{INP}:torch_time_net", f"{INP}:linen_time_net", "--input", "t=4:int64:1:2")
    assert e.value.code == 2 and "expected [NAME=]SHAPE[:DTYPE[:HIGH]]" in capsys.readouterr().err


# --------------------------------------------------- item 11: ports that cannot run in float64


@pytest.mark.slow  # 4 to 9 s each under load (check runs with a 2-step trajectory)
@pytest.mark.parametrize(
    "port, why",
    [
        ("linen_lm_float32_norm", "Flax layer ln_f (float32) computes below float64"),
        ("linen_lm_no_x64", "does not run in float64 (TypeError: this port runs in float32"),
    ],
)
def test_a_port_that_cannot_run_in_float64_is_judged_in_float32(tmp_path, capsys, port, why):
    """A LayerNorm that casts to float32 (without the float64 probe its float64 trajectory
    failed, 95 times over its bound, on a correct port) and a port that raises under x64 (a
    traceback without it): float32 rows and a float32 trajectory check, one line saying why."""
    rc, rows = check(tmp_path, f"{OUT}:torch_lm", f"{OUT}:{port}", *IDS, "--trajectory", "2")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"{why}" in err and "judged in float32" in err
    assert "trajectory_sgd_2_float32_worst_over_bound" in rows
    assert not any("float64" in name for name in rows)


@pytest.mark.slow  # 10 s under load (a check run with float64 and float32 trajectories)
def test_the_float64_probe_keeps_correct_float64_ports_in_float64(tmp_path, capsys):
    """A port that computes in float64 keeps the float64 trajectory as its check."""
    rc, rows = check(tmp_path, f"{OUT}:torch_lm", f"{OUT}:linen_lm", *IDS, "--trajectory", "2")
    assert rc == 0 and "trajectory_sgd_2_float64_worst_over_bound" in rows
    assert "judged in float32" not in capsys.readouterr().err
    assert jax.config.jax_enable_x64 is False


def test_output_on_a_one_tensor_model_says_there_is_no_leaf_to_pick():
    import numpy as np
    import pytest

    from parity.harness.outputs import pick

    with pytest.raises(KeyError, match="the output is one tensor, --output picks a leaf"):
        pick(np.zeros(3), "logits")
    with pytest.raises(KeyError, match=r"tensor outputs: 'a'"):
        pick({"a": np.zeros(3), "b": None}, "c")
