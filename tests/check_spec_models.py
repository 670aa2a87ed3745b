"""Small user models for ``parity check --torch SPEC --flax SPEC`` tests: a token model (float
tokens ``(N, L, D)`` in both frameworks, per-token logits ``(N, L, 5)``), an id model
(``Embedding`` on int64 ids ``(N, L)``), and broken ports, one fault each."""

import flax.linen as fnn
import torch
from flax import nnx
from torch import nn


class TorchTokens(nn.Module):
    """``(N, L, 6)`` tokens -> LayerNorm -> Linear -> dropout -> ``(N, L, 5)`` logits."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 5)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.fc(self.norm(x)))


class NNXTokens(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, out: int = 5) -> None:
        self.norm = nnx.LayerNorm(6, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(6, out, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.fc(self.norm(x)))


def torch_tokens() -> nn.Module:
    torch.manual_seed(0)
    return TorchTokens()


def torch_tokens_no_dropout() -> nn.Module:
    torch.manual_seed(0)
    return TorchTokens(dropout=0.0)


def torch_tokens_double() -> nn.Module:
    """The fault: float64 weights against a float32 port."""
    return torch_tokens().double()


def nnx_tokens() -> nnx.Module:
    return NNXTokens(nnx.Rngs(0))


def nnx_tokens_wrong_width() -> nnx.Module:
    """The fault: ``fc`` has 4 outputs, torch's 5."""
    return NNXTokens(nnx.Rngs(0), out=4)


class TorchIds(nn.Module):
    """int64 ids ``(N, L)`` -> Embedding(20, 8) -> mean over tokens -> Linear -> ``(N, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


class LinenIds(fnn.Module):
    @fnn.compact
    def __call__(self, ids):
        return fnn.Dense(3, name="head")(fnn.Embed(20, 8, name="embed")(ids).mean(1))


def torch_ids() -> nn.Module:
    torch.manual_seed(0)
    return TorchIds()


def linen_ids() -> fnn.Module:
    return LinenIds()


class LinenIdsRenamed(fnn.Module):
    """The fault: the head is called ``classifier``; pairs only through a --map rule."""

    @fnn.compact
    def __call__(self, ids):
        return fnn.Dense(3, name="classifier")(fnn.Embed(20, 8, name="embed")(ids).mean(1))


def linen_ids_renamed() -> fnn.Module:
    return LinenIdsRenamed()


class TorchPReLU(nn.Module):
    """The fault: ``nn.PReLU`` holds a weight no layer rule converts."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.act = nn.PReLU()
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.act(self.embed(ids).mean(1)))


def torch_prelu() -> nn.Module:
    return TorchPReLU()


class LinenIdsScaled(fnn.Module):
    """The fault: embeddings scaled by sqrt(D), as some transformer ports do and torch does not."""

    @fnn.compact
    def __call__(self, ids):
        return fnn.Dense(3, name="head")(fnn.Embed(20, 8, name="embed")(ids).mean(1) * 8**0.5)


def linen_ids_scaled() -> fnn.Module:
    return LinenIdsScaled()
