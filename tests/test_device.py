"""``parity.device`` on the CPU: the precision probe (it can tell TF32 from float32), the
global-state snapshot, and the suite's cpu/strict pin (tests/conftest.py)."""

import json

import jax
import numpy as np
import pytest
import torch

from parity.device import (
    PROBE_VALUE,
    TF32_REL_GAP,
    classify_probe,
    configure,
    global_state,
    precision_probe,
    probe_inputs,
    restore_global_state,
)


def round_to_tf32(a: np.ndarray) -> np.ndarray:
    """float32 -> TF32 (10 explicit significand bits), round to nearest: what tensor cores read."""
    bits = a.astype(np.float32).view(np.uint32)
    return ((bits + np.uint32(1 << 12)) & np.uint32(0xFFFFE000)).view(np.float32)


def test_tf32_rounding_drops_the_probe_values_low_bits():
    assert round_to_tf32(np.float32([PROBE_VALUE]))[0] == 1.0
    assert round_to_tf32(np.float32([1.0 + 2.0**-10]))[0] == np.float32(1.0 + 2.0**-10)  # kept


def test_classify_tells_float32_from_emulated_tf32():
    inputs = probe_inputs()
    x, w, ref = inputs["matmul_x"], inputs["matmul_w"], inputs["matmul_ref"]
    exact = classify_probe(x @ w, ref)
    assert exact["result"] == "float32" and exact["max_rel_err"] == 0.0
    tf32 = classify_probe(round_to_tf32(x).astype(np.float64) @ round_to_tf32(w), ref)
    assert tf32["result"] == "tf32" and not tf32["equals_float32"]
    assert tf32["max_rel_err"] == pytest.approx(TF32_REL_GAP, rel=1e-3)
    assert classify_probe(ref * 1.01, ref)["result"] == "other"


@pytest.mark.parametrize("precision", ["strict", "default"])
def test_probe_on_cpu_gives_float32_under_both_policies(precision):
    report = precision_probe(configure("cpu", precision))
    json.dumps(report, allow_nan=False)  # JSON-safe, for parity check --json
    assert report["device"] == "cpu" and report["precision"] == precision and not report["tf32_capable"]
    for framework in ("torch", "jax"):
        for op in ("matmul", "conv"):
            row = report[framework][op]
            assert row["result"] == "float32" and row["max_rel_err"] <= 1e-6, (framework, op, row)
            assert row["expected"] == "float32" and row["as_expected"]
    assert report["as_expected"]


def test_snapshot_restores_both_frameworks_settings():
    before = global_state()
    configure("cpu", "default")
    assert global_state() != before
    restore_global_state(before)
    assert global_state() == before


def test_a_test_may_leave_the_default_policy_behind():
    configure("cpu", "default")
    torch.backends.cudnn.allow_tf32 = True
    assert jax.config.jax_default_matmul_precision is None


def test_the_next_test_finds_cpu_strict_again():
    """Runs after the test above (file order): the autouse fixture restored cpu/strict."""
    state = global_state()
    assert state["jax_default_device"] == jax.devices("cpu")[0]
    assert state["jax_default_matmul_precision"] == "highest"
    assert state["torch_cudnn_allow_tf32"] is False and state["torch_matmul_allow_tf32"] is False
    assert state["torch_float32_matmul_precision"] == "highest"
