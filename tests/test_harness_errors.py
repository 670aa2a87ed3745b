"""One-line refusals of ``parity check`` options that used to run the wrong thing, blame the
wrong layer, or die in a RESOURCE_EXHAUSTED traceback."""

import pytest

from parity.cli import main
from parity.harness.input_checks import COPIES, SmallRun, check_memory
from parity.harness.results import CheckError

MODELS = "tests/check_spec_models.py"
USERS = "tests/convert_user_models.py"


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("parity check: "), err
    return err


@pytest.mark.parametrize("n", ["0", "-1"])
def test_data_parallel_zero_is_refused_not_the_ordinary_suite(n, capsys, monkeypatch):
    import parity.harness.suite as suite

    monkeypatch.setattr(suite, "run_suite", lambda *a: pytest.fail("the ordinary suite ran"))
    assert main(["check", "--device", "cpu", "--data-parallel", n]) == 2
    assert f"--data-parallel must be at least 1, got {n}" in one_line(capsys)


def test_an_input_rank_the_first_conv_does_not_take_blames_the_input(capsys):
    """A Conv2d model given 4,3,8: torch reads (3, 8) unbatched and the port fails at a Linear;
    the message names the input's rank and the first layer, not the Linear."""
    argv = ["check", "--device", "cpu", "--torch", f"{USERS}:make_torch", "--flax", f"{USERS}:make_nnx"]
    assert main([*argv, "--input-shape", "4,3,8"]) == 2
    err = one_line(capsys)
    assert "--input-shape 4,3,8 has rank 3, but the first layer stem.0 (Conv2d) takes rank-4" in err
    assert "dot_general" not in err


def test_a_batch_too_large_for_memory_is_refused_with_an_estimate(capsys):
    """10**10 token rows of a tiny model: refused from a two-sample pass, before any tensor of
    that size (the Linen init alone would ask for 280 GB)."""
    argv = ["check", "--device", "cpu", "--torch", f"{MODELS}:torch_ids", "--flax", f"{MODELS}:linen_ids"]
    argv += ["--input-shape", "10000000000,7", "--input-dtype", "int64", "--input-high", "20"]
    assert main(argv) == 2
    err = one_line(capsys)
    assert "--input-shape 10000000000,7 needs about" in err and "GiB are available" in err


def test_the_memory_estimate_is_copies_times_activations_times_n():
    run = SmallRun(None, False, bytes_per_sample=1000)
    check_memory((10, 4), 4, run, available=COPIES * 1000 * 10)  # exactly fits
    with pytest.raises(CheckError, match=r"needs about .* x 11 samples x 6 copies"):
        check_memory((11, 4), 4, run, available=COPIES * 1000 * 10)
    # a model that failed on the small batch: the input alone is the estimate
    with pytest.raises(CheckError, match="16 bytes of activations per sample"):
        check_memory((11, 4), 4, SmallRun(None, False, None), available=COPIES * 16 * 10)
