"""Torch factories for tests/test_port_generate.py: the zoo's models built from a fixed seed,
and a model whose forward branches on a tensor value (torch.fx cannot trace it)."""

import torch
from torch import nn

from torch_impl import resnet, vit
from torch_impl.models import build_model


def _seeded(factory, **kwargs):
    torch.manual_seed(0)
    return factory(**kwargs)


def digits() -> nn.Module:
    return build_model("digits", seed=0)


def signal1d() -> nn.Module:
    return build_model("signal1d", seed=0)


def resnet18() -> nn.Module:
    return _seeded(resnet.resnet18, num_classes=10)


def resnet20() -> nn.Module:
    return _seeded(resnet.resnet20)


def vit_tiny() -> nn.Module:
    return _seeded(vit.vit_tiny)


def tiny_transformer() -> nn.Module:
    from docs.examples.tiny_transformer_torch import make

    return make()


class DataDependent(nn.Module):
    """A Python ``if`` on a tensor value: the port keeps the layers and stubs the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def data_dependent() -> nn.Module:
    return _seeded(DataDependent)


class ModeDependent(nn.Module):
    """A forward that reads ``self.training`` (a functional dropout): the trace cannot carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(self.fc(x), 0.5, training=self.training)
