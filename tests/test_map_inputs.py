"""``parity map`` and ``parity convert`` on models with several inputs (issue 20 item 11): the
repeatable ``--input [NAME=]SHAPE[:DTYPE[:HIGH]]`` of ``parity check``, one parsing and
building path for all three (``parity.commands.map.model_inputs``,
``parity.harness.outputs.extra_inputs``), and the Flax factory file's ``flax_call_kwargs``.
Models: tests/check_input_models.py (``model(x, time)``), tests/check_input_kwonly.py."""

import numpy as np
import pytest
import torch

from parity.cli import main
from parity.convert import read_checkpoint

INP = "tests/check_input_models.py"
KWONLY = "tests/check_input_kwonly.py"
TIME = ["--torch", f"{INP}:torch_time_net", "--flax", f"{INP}:linen_time_net"]


@pytest.mark.parametrize(
    "inputs",
    [
        ["--input", "2,3,6,6", "--input", "time=2:int64:10"],  # keyword
        ["--input", "2,3,6,6", "--input", "2:int64:10"],  # positional
        ["--input-shape", "2,3,6,6", "--input", "2:int64:10"],  # --input-shape first, as in check
    ],
)
def test_map_initialises_a_linen_port_that_takes_an_image_and_a_time(inputs, capsys):
    assert main(["map", *TIME, *inputs]) == 0
    out = capsys.readouterr().out
    assert "params/time_embed/embedding  (10, 5)" in out and out.rstrip().endswith("all paired")


def test_map_gives_a_required_keyword_only_argument_from_flax_call_kwargs(capsys):
    spec = ["--torch", f"{KWONLY}:torch_scaled", "--flax", f"{KWONLY}:linen_scaled"]
    assert main(["map", *spec, "--input", "2,6"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("all paired")


def test_map_refuses_keyword_inputs_without_a_main_input(capsys):
    assert main(["map", *TIME, "--input", "time=2:int64:10"]) == 2
    assert "the main input is positional" in capsys.readouterr().err


def test_input_dtype_without_input_shape_is_refused_not_ignored(capsys):
    assert (
        main(["map", *TIME, "--input", "2,3,6,6", "--input-dtype", "float64", "--input", "2:int64:10"]) == 2
    )
    assert "with --input give them in it (--input SHAPE:DTYPE:HIGH)" in capsys.readouterr().err


@pytest.mark.slow  # 16 to 22 s at load average 22 on the 2-core box (an eager Linen init)
def test_convert_writes_the_checkpoint_of_a_two_input_linen_port(tmp_path, capsys):
    from check_input_models import torch_time_net

    src, dst = tmp_path / "m.pt", tmp_path / "m.msgpack"
    model = torch_time_net()
    torch.save(model.state_dict(), src)
    argv = ["convert", *TIME, "--input", "2,3,6,6", "--input", "time=2:int64:10", str(src), str(dst)]
    assert main(argv) == 0, capsys.readouterr()
    flax = read_checkpoint(str(dst))
    np.testing.assert_array_equal(
        flax["params"]["time_embed"]["embedding"], model.time_embed.weight.detach().numpy()
    )
    np.testing.assert_array_equal(
        flax["params"]["conv"]["kernel"], model.conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    )
