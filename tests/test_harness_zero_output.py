"""A model whose outputs are all zero at initialisation (torchvision's ViT zero-initialises
its head) makes the forward rows compare nothing: ``check`` says so in a note, and a port bug
before the head still fails through the gradient rows."""

import pytest

from parity.cli import main

MODELS = "tests/check_zero_models.py"
NOTE = "eval outputs are all zero"


def check(torch_factory: str, flax_factory: str) -> int:
    argv = ["check", "--device", "cpu", "--input-shape", "4,6"]
    return main([*argv, "--torch", f"{MODELS}:{torch_factory}", "--flax", f"{MODELS}:{flax_factory}"])


def test_zero_outputs_are_noted_and_a_tanh_gelu_still_fails(capsys):
    assert check("torch_zero", "linen_tanh") == 1
    seen = capsys.readouterr()
    out = seen.out
    assert NOTE in seen.err, seen.err  # notes go to stderr, beside "# device ..."
    forward = [line for line in out.splitlines() if "forward_eval_rel_l2" in line]
    assert forward and forward[0].split()[3] == "0.000e+00", forward  # zero vs zero: no signal
    assert "gradient_max_rel_l2" in out and "FAIL" in out


@pytest.mark.slow  # 2.1 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_a_correct_port_passes_with_the_note_and_a_random_head_gets_none(capsys):
    assert check("torch_zero", "linen_exact") == 0
    assert NOTE in capsys.readouterr().err
    assert check("torch_random", "linen_exact") == 0
    assert NOTE not in capsys.readouterr().err
