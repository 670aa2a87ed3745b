"""The two matching architectures in PyTorch (channels-first).

Mode is read from ``self.training`` by BatchNorm and Dropout, set by ``model.train()`` /
``model.eval()``. Layer attribute names are the same as in ``flax_impl`` (``conv1``, ``bn1``,
..., ``fc2``) so that the converter maps names one to one.

Convolutions and dense layers that feed a BatchNorm have no bias: BN subtracts the batch
mean, so such a bias has no effect on the output and its gradient is zero up to rounding,
which would make a per-parameter gradient comparison compare noise with noise.

BatchNorm uses PyTorch's defaults, ``momentum=0.1`` and ``eps=1e-5``; see
``flax_impl.linen_models`` for why Flax's ``momentum=0.9`` is the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DigitsCNN(nn.Module):
    """CNN for 8x8 digits. Input ``(N, 1, 8, 8)`` NCHW float32, output ``(N, 10)`` logits.

    conv1(3x3, pad 1)-bn1-relu, conv2(3x3, pad 1)-bn2-relu-maxpool(2), flatten (C*4*4),
    fc1-bn3-relu-dropout, fc2.
    """

    def __init__(
        self,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        dropout: float = 0.3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.flatten_shape = (c2, 4, 4)  # (C, H, W) of the map flattened into fc1
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden, bias=False)
        self.bn3 = nn.BatchNorm1d(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)  # channel-first order: c*H*W + h*W + w
        x = self.dropout(F.relu(self.bn3(self.fc1(x))))
        return self.fc2(x)


class Signal1DCNN(nn.Module):
    """1-D CNN for MNIST-1D. Input ``(N, 1, 40)`` NCW float32, output ``(N, 10)`` logits.

    conv1(k5, pad 2)-bn1-relu-maxpool(2), conv2(k3, pad 1)-bn2-relu-maxpool(2), flatten
    (C*10), fc1-bn3-relu, dropout, fc2.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.2,
        num_classes: int = 10,
        length: int = 40,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        if length % 4:
            raise ValueError(f"length must be a multiple of 4 (two 2x poolings), got {length}")
        self.conv1 = nn.Conv1d(1, c1, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm1d(c1)
        self.conv2 = nn.Conv1d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(c2)
        self.flatten_shape = (c2, length // 4)  # (C, W) of the map flattened into fc1
        self.fc1 = nn.Linear(c2 * (length // 4), hidden, bias=False)
        self.bn3 = nn.BatchNorm1d(hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool1d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool1d(F.relu(self.bn2(self.conv2(x))), 2)
        x = torch.flatten(x, 1)  # channel-first order: c*W + w
        x = F.relu(self.bn3(self.fc1(x)))
        return self.fc2(self.dropout(x))


MODELS = {"digits": DigitsCNN, "signal1d": Signal1DCNN}


def build_model(name: str, seed: int | None = None, **config) -> nn.Module:
    """Build ``digits`` or ``signal1d`` with PyTorch's default init, seeded when ``seed`` is given."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if seed is None:
        return MODELS[name](**config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](**config)
