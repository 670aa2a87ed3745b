"""Models for ``tests/test_harness_zero_output.py``: an MLP whose head starts at zero (as
torchvision's ViT head does), its Linen port with an exact GELU (correct) and with a tanh GELU
(a real port bug), and the same MLP with a random head (the control)."""

import flax.linen as fnn
import torch
from torch import nn


class ZeroHead(nn.Module):
    """``(N, 6)`` -> Linear 8 -> GELU -> Linear 3 (weights and bias zero) -> ``(N, 3)``."""

    def __init__(self, zero: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.act = nn.GELU()
        self.head = nn.Linear(8, 3)
        if zero:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc1(x)))


class LinenZeroHead(fnn.Module):
    """The Linen port; ``approximate=True`` is the tanh-GELU bug."""

    approximate: bool = False

    @fnn.compact
    def __call__(self, x):
        h = fnn.gelu(fnn.Dense(8, name="fc1")(x), approximate=self.approximate)
        return fnn.Dense(3, name="head")(h)


def torch_zero() -> nn.Module:
    torch.manual_seed(0)
    return ZeroHead()


def torch_random() -> nn.Module:
    torch.manual_seed(0)
    return ZeroHead(zero=False)


def linen_exact() -> fnn.Module:
    return LinenZeroHead()


def linen_tanh() -> fnn.Module:
    return LinenZeroHead(approximate=True)
