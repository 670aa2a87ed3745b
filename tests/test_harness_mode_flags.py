"""Mode flags reach a Linen ``__call__`` as static Python values in ``parity map`` and
``parity check``: a required ``train`` argument (as in Flax's ImageNet example) must not become
a tracer under ``jax.eval_shape`` (issue 20, item 1)."""

import flax.linen as fnn
import pytest
import torch
from torch import nn

from parity.cli import main

HERE = "tests/test_harness_mode_flags.py"


class TorchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.fc(x))))


class LinenNet(fnn.Module):
    @fnn.compact
    def __call__(self, x, train):  # required, positional: `if train` needs a Python bool
        x = fnn.Dense(8, name="fc")(x)
        if train:
            x = fnn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, name="bn")(x)
        else:
            x = fnn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5, name="bn")(x)
        return fnn.Dense(3, name="head")(fnn.relu(x))


def make_torch() -> nn.Module:
    torch.manual_seed(0)
    return TorchNet()


def make_linen() -> fnn.Module:
    return LinenNet()


# jax.eval_shape traced `train=False` into a tracer (issue 20 item 1): parity.spec.linen_variables
# now passes keyword arguments statically, so `if train:` in a Linen __call__ sees a bool
def test_map_passes_train_as_a_python_bool(capsys):
    rc = main(
        ["map", "--torch", f"{HERE}:make_torch", "--flax", f"{HERE}:make_linen", "--input-shape", "4,6"]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "TracerBoolConversionError" not in err and "all paired" in out


@pytest.mark.slow  # 2.6 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_check_passes_train_as_a_python_bool(capsys):
    """A guard: check already passed the flag statically (FlaxSide.mode_kwargs, closed over)."""
    argv = ["check", "--device", "cpu", "--torch", f"{HERE}:make_torch", "--flax", f"{HERE}:make_linen"]
    rc = main([*argv, "--input-shape", "4,6"])
    out, err = capsys.readouterr()
    assert rc == 0, err + out
    assert "forward_train_rel_l2" in out
