"""A Flax port whose ``__call__`` has a required keyword-only argument (``scale``, as ports
take ``rngs=`` or ``cache=``), given by this file's ``flax_call_kwargs`` hook; and its torch
original, which has the constant built in."""

import flax.linen as fnn
import torch
from torch import nn


class TorchScaled(nn.Module):
    """``(N, 6)`` -> Linear -> x 0.5 -> ``(N, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x) * 0.5


def torch_scaled() -> nn.Module:
    torch.manual_seed(0)
    return TorchScaled()


class LinenScaled(fnn.Module):
    @fnn.compact
    def __call__(self, x, *, scale: float):
        return fnn.Dense(3, name="fc")(x) * scale


def linen_scaled() -> fnn.Module:
    return LinenScaled()


#: the hook: keyword arguments every call of the Flax model gets
flax_call_kwargs = {"scale": 0.5}
