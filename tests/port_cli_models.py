"""Torch factories for tests/test_port_cli.py (``parity port``), each built from a fixed seed: the
zoo's digits CNN, a tiny MLP with BatchNorm and Dropout (the fast happy path), a model whose
forward branches on a tensor value (torch.fx cannot trace it: the port gets a stub) and one
with a keyword input. tests/port_gen_models.py uses the last two too."""

import torch
from torch import nn

from torch_impl.models import build_model


def digits() -> nn.Module:
    """The zoo's digits CNN; input ``(N, 1, 8, 8)``."""
    return build_model("digits", seed=0)


class TinyMLP(nn.Module):
    """Linear-BatchNorm-ReLU-Dropout-Linear; input ``(N, 6)``, output ``(N, 3)`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8, bias=False)
        self.bn = nn.BatchNorm1d(8)
        self.dropout = nn.Dropout(0.25)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.bn(self.fc1(x)))))


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyMLP()


class Gate(nn.Module):
    """A Python ``if`` on a tensor value in ``forward``: not translatable."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def gate() -> nn.Module:
    torch.manual_seed(0)
    return Gate()


class KeywordMask(nn.Module):
    """A keyword input: called ``model(x, mask=m)``; ``scale`` is never given (a constant).
    Input ``(N, 6)``, mask ``(N, 4)``, output ``(N, 2)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 4)
        self.norm = nn.LayerNorm(4)
        self.gate = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = self.norm(self.fc(x))
        if mask is not None:
            h = h * torch.sigmoid(self.gate(mask))
        if scale is not None:
            h = h * scale
        return self.out(h)


def keyword_mask() -> nn.Module:
    torch.manual_seed(0)
    return KeywordMask()
