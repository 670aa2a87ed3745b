"""A model none of our code defines, written as a user would (nn.Sequential, a list of blocks,
LayerNorm, attention, two flattens into Linear layers), with its Linen and NNX ports following
the naming conventions of :mod:`parity.convert.naming`. Used by the converter and map tests.

Input ``(N, 3, 4, 4)`` NCHW in torch, ``(N, 4, 4, 3)`` NHWC in Flax; output ``(N, 5)``.
"""

import flax.linen as fnn
import jax.numpy as jnp
import torch
from flax import nnx
from torch import nn

INPUT_SHAPE = (2, 3, 4, 4)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList([Block(8) for _ in range(2)])
        self.side = nn.Conv2d(8, 4, 1)
        self.norm = nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc_main = nn.Linear(8 * 16, 5)
        self.fc_side = nn.Linear(4 * 16, 5)
        self.fc_attn = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        side = self.side(x).view(x.size(0), -1)
        tokens = self.norm(x.flatten(2).transpose(1, 2))  # (N, H*W, C)
        attended = self.attn(tokens, tokens, tokens, need_weights=False)[0].mean(1)
        return self.fc_main(torch.flatten(x, 1)) + self.fc_side(side) + self.fc_attn(attended)


def make_torch() -> nn.Module:
    torch.manual_seed(0)
    model = UserNet()
    with torch.no_grad():
        for name, b in model.named_buffers():
            if "running" in name:
                b.uniform_(0.5, 1.5)
    return model.eval()


class LinenBlock(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        y = fnn.Conv(x.shape[-1], (3, 3), padding=1, use_bias=False, name="conv")(x)
        return fnn.relu(x + fnn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn")(y))


class LinenUserNet(fnn.Module):
    def setup(self):
        bn = fnn.BatchNorm(use_running_average=True, epsilon=1e-5)
        self.stem = fnn.Sequential([fnn.Conv(8, (3, 3), padding=1), bn, fnn.relu])
        self.blocks = [LinenBlock() for _ in range(2)]
        self.side = fnn.Conv(4, (1, 1))
        self.norm = fnn.LayerNorm(epsilon=1e-5)
        self.attn = fnn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=8)
        self.fc_main = fnn.Dense(5)
        self.fc_side = fnn.Dense(5)
        self.fc_attn = fnn.Dense(5)

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        n = x.shape[0]
        side = self.side(x).reshape(n, -1)
        tokens = self.norm(x.reshape(n, -1, x.shape[-1]))
        attended = self.attn(tokens, tokens, tokens).mean(1)
        return self.fc_main(x.reshape(n, -1)) + self.fc_side(side) + self.fc_attn(attended)


class NNXBlock(nnx.Module):
    def __init__(self, c: int, rngs: nnx.Rngs) -> None:
        self.conv = nnx.Conv(c, c, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(c, epsilon=1e-5, momentum=0.9, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(x + self.bn(self.conv(x)))


class NNXUserNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.stem = nnx.Sequential(
            nnx.Conv(3, 8, (3, 3), padding=1, rngs=rngs),
            nnx.BatchNorm(8, epsilon=1e-5, momentum=0.9, rngs=rngs),
            nnx.relu,
        )
        self.blocks = nnx.List([NNXBlock(8, rngs) for _ in range(2)])
        self.side = nnx.Conv(8, 4, (1, 1), rngs=rngs)
        self.norm = nnx.LayerNorm(8, epsilon=1e-5, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs
        )
        self.fc_main = nnx.Linear(8 * 16, 5, rngs=rngs)
        self.fc_side = nnx.Linear(4 * 16, 5, rngs=rngs)
        self.fc_attn = nnx.Linear(8, 5, rngs=rngs)

    def __call__(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        n = x.shape[0]
        side = self.side(x).reshape(n, -1)
        tokens = self.norm(x.reshape(n, -1, x.shape[-1]))
        attended = self.attn(tokens).mean(1)
        return self.fc_main(x.reshape(n, -1)) + self.fc_side(side) + self.fc_attn(attended)


def make_linen() -> fnn.Module:
    return LinenUserNet()


def make_nnx() -> nnx.Module:
    return NNXUserNet(nnx.Rngs(0))


def linen_input() -> jnp.ndarray:
    return jnp.zeros((INPUT_SHAPE[0], *INPUT_SHAPE[2:], INPUT_SHAPE[1]))


def make_linen_renamed() -> fnn.Module:
    """A one-layer Linen model whose Dense is called ``head``."""
    return _RenamedLinen()


class _RenamedLinen(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return fnn.Dense(5, name="head")(x.reshape(x.shape[0], -1))


def make_small_torch() -> nn.Module:
    """One Linear called ``fc_attn`` over the flattened input: pairs with ``_RenamedLinen``'s
    ``head`` only through a map rule."""
    model = nn.Sequential()
    model.add_module("fc_attn", nn.Linear(48, 5))
    return model
