"""Small user models with several inputs for ``parity check --input``: a UNet-style
``model(x, time)`` (an image and integer diffusion steps) and a transformer-style
``model(input_ids, attention_mask)`` (the mask a keyword argument)."""

import flax.linen as fnn
import jax.numpy as jnp
import torch
from flax import nnx
from torch import nn


class TorchTimeNet(nn.Module):
    """``x (N, 3, 6, 6)``, ``time (N,)`` int64 in ``[0, 10)`` -> Conv2d -> + time embedding ->
    BatchNorm2d -> ReLU -> mean -> Linear ``(N, 4)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.time_embed = nn.Embedding(10, 5)
        self.bn = nn.BatchNorm2d(5)
        self.head = nn.Linear(5, 4)

    def forward(self, x, time):
        h = self.conv(x) + self.time_embed(time)[:, :, None, None]
        return self.head(torch.relu(self.bn(h)).mean((2, 3)))


def torch_time_net() -> nn.Module:
    torch.manual_seed(0)
    return TorchTimeNet()


class LinenTimeNet(fnn.Module):
    """The Linen port, channels-last, mode by a required ``train`` argument."""

    time_scale: float = 1.0  # the fault: 1.01 scales the time embedding

    @fnn.compact
    def __call__(self, x, time, train: bool):
        h = fnn.Conv(5, (3, 3), padding=1, name="conv")(x)
        h = h + self.time_scale * fnn.Embed(10, 5, name="time_embed")(time)[:, None, None, :]
        h = fnn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, use_fast_variance=False, name="bn"
        )(h)
        return fnn.Dense(4, name="head")(fnn.relu(h).mean((1, 2)))


def linen_time_net() -> fnn.Module:
    return LinenTimeNet()


def linen_time_net_scaled() -> fnn.Module:
    return LinenTimeNet(time_scale=1.01)


class TorchMasked(nn.Module):
    """``input_ids (N, L)`` int64, ``attention_mask (N, L)`` 0/1 -> Embedding -> masked mean ->
    Linear ``(N, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask=None):
        m = attention_mask[..., None].to(self.head.weight.dtype)
        return self.head((self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1))


def torch_masked() -> nn.Module:
    torch.manual_seed(0)
    return TorchMasked()


class NNXMasked(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(20, 8, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, input_ids, attention_mask=None):
        m = attention_mask[..., None].astype(self.head.kernel.dtype)
        return self.head((self.embed(input_ids) * m).sum(1) / jnp.maximum(m.sum(1), 1))


def nnx_masked() -> nnx.Module:
    return NNXMasked(nnx.Rngs(0))
