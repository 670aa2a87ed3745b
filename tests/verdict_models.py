"""Small torch models and Flax ports written the way real ports are written, each with one
construct a verdict of the harness must get right: a transformer MLP block (LayerNorm epsilon,
tanh GELU), a conv stem with a functional or module max-pool between two convs (``SAME``
padding), a port whose Dense layers fix ``dtype=jnp.float32``, a BatchNorm over a large mean.
Torch layout: ``(N, L, D)`` tokens of features, images ``(N, C, H, W)``; Flax images NHWC.
"""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parity import convert
from parity.harness.pair import ModelPair

DIM = 8


# ------------------------------------------------------------------ MLP block (GPT style)
class MLPBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(DIM)
        self.fc = nn.Linear(DIM, 4 * DIM)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * DIM, DIM)

    def forward(self, x):
        return x + self.proj(self.act(self.fc(self.ln(x))))


class LinenMLPBlock(fnn.Module):
    """``epsilon``: the LayerNorm's (torch: 1e-5); ``tanh``: GELU approximation;
    ``dtype``: the Dense layers' computation dtype (None: the input's)."""

    epsilon: float = 1e-5
    tanh: bool = False
    dtype: object = None

    @fnn.compact
    def __call__(self, x):
        y = fnn.LayerNorm(epsilon=self.epsilon, name="ln")(x)
        y = fnn.Dense(4 * DIM, dtype=self.dtype, name="fc")(y)
        y = fnn.gelu(y, approximate=self.tanh)
        return x + fnn.Dense(DIM, dtype=self.dtype, name="proj")(y)


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLPBlock().eval()


def tokens(n: int = 4, length: int = 5) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, length, DIM)).astype(np.float32)


# ------------------------------------------------------------------ conv stem with a max-pool
class PoolStem(nn.Module):
    """conv1 -> max-pool 3/2/1 -> conv2; ``module``: the pool as ``nn.MaxPool2d`` (else
    ``F.max_pool2d`` in ``forward``, as torchvision-style stems often write it)."""

    def __init__(self, module: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1)
        self.pool = nn.MaxPool2d(3, 2, 1) if module else None
        self.conv2 = nn.Conv2d(4, 4, 3, 1, 1)

    def forward(self, x):
        x = self.conv1(x)
        x = self.pool(x) if self.pool is not None else F.max_pool2d(x, 3, 2, 1)
        return self.conv2(x)


class LinenPoolStem(fnn.Module):
    padding: object = "SAME"

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(4, (3, 3), padding=1, name="conv1")(x)
        x = fnn.max_pool(x, (3, 3), (2, 2), padding=self.padding)
        return fnn.Conv(4, (3, 3), padding=1, name="conv2")(x)


def make_stem(module: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return PoolStem(module).eval()


def images(n: int = 2, size: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


# ------------------------------------------------------------------ BatchNorm over an offset mean
class OffsetBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(DIM, DIM)
        self.bn = nn.BatchNorm1d(DIM)

    def forward(self, x):
        return self.bn(self.fc(x))


class LinenOffsetBN(fnn.Module):
    """``momentum``: Flax's convention (torch's 0.1 is Flax's 0.9)."""

    momentum: float = 0.9

    @fnn.compact
    def __call__(self, x, train: bool = False):
        y = fnn.Dense(DIM, name="fc")(x)
        bn = fnn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=1e-5, name="bn")
        return bn(y)


def make_offset_bn(offset: float = 3.0) -> nn.Module:
    """``offset`` > 0: a small spread around a large bias, so (x - mean) cancels."""
    torch.manual_seed(0)
    m = OffsetBN()
    if offset:
        with torch.no_grad():
            m.fc.weight.mul_(0.01)
            m.fc.bias.fill_(offset)
    return m.eval()


# ------------------------------------------------------------------ building a pair
def linen_pair(torch_model: nn.Module, flax_model: fnn.Module, x: np.ndarray, layout: str, **kw) -> ModelPair:
    """The pair with the torch weights converted by the general converter."""
    xf = np.moveaxis(x, 1, -1) if layout == "channels_first" else x
    shapes = jax.eval_shape(flax_model.init, jax.random.key(0), jnp.asarray(xf))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    state = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    variables = convert.torch_to_flax(state, torch_model, target, **kw)
    param_map = convert.params_to_torch_fn(torch_model, variables, **kw)
    return ModelPair(
        torch_model, flax_model, variables, param_map=param_map, input_layout=layout, convert_options=kw
    )
