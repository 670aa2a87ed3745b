"""The two matching architectures in Flax Linen (channels-last).

``__call__(x, *, train)`` takes the mode as an argument: ``train=True`` normalises with batch
statistics (and needs ``mutable=['batch_stats']`` to store the updated running averages) and
runs dropout (and needs an rng for the ``'dropout'`` stream); ``train=False`` uses the running
averages and no dropout. Nothing about the mode is stored in the module.

Submodule names match ``torch_impl.models`` (``conv1``, ``bn1``, ..., ``fc2``).
"""

from __future__ import annotations

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_impl import BN_EPSILON, BN_MOMENTUM


def _bn(train: bool, name: str, axis_name: str | None = None) -> nn.BatchNorm:
    # two-pass batch variance, as torch computes it: Flax's default E[x^2] - E[x]^2 loses float32
    # precision when |mean| >> std (docs/HARNESS.md, "Flax's fast variance")
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        axis_name=axis_name,
        use_fast_variance=False,
        name=name,
    )


class DigitsCNN(nn.Module):
    """CNN for 8x8 digits. Input ``(N, 8, 8, 1)`` NHWC float32, output ``(N, 10)`` logits.

    conv1(3x3, pad 1)-bn1-relu, conv2(3x3, pad 1)-bn2-relu-maxpool(2), flatten (4*4*C),
    fc1-bn3-relu-dropout, fc2.
    """

    channels: tuple[int, int] = (16, 32)
    hidden: int = 64
    dropout: float = 0.3
    num_classes: int = 10
    #: mesh axis over which BatchNorm averages batch statistics under ``shard_map`` / ``pmap``
    #: (``None``: per replica). Plain ``jit`` over a sharded batch needs no axis name.
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c1, c2 = self.channels
        bn = partial(_bn, train, axis_name=self.bn_axis_name)
        x = nn.relu(bn("bn1")(nn.Conv(c1, (3, 3), padding=1, use_bias=False, name="conv1")(x)))
        x = nn.relu(bn("bn2")(nn.Conv(c2, (3, 3), padding=1, use_bias=False, name="conv2")(x)))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # channel-last order: h*W*C + w*C + c
        x = nn.relu(bn("bn3")(nn.Dense(self.hidden, use_bias=False, name="fc1")(x)))
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, name="fc2")(x)


class Signal1DCNN(nn.Module):
    """1-D CNN for MNIST-1D. Input ``(N, 40, 1)`` NWC float32, output ``(N, 10)`` logits.

    conv1(k5, pad 2)-bn1-relu-maxpool(2), conv2(k3, pad 1)-bn2-relu-maxpool(2), flatten
    (10*C), fc1-bn3-relu, dropout, fc2.
    """

    channels: tuple[int, int] = (32, 64)
    hidden: int = 128
    dropout: float = 0.2
    num_classes: int = 10
    #: mesh axis over which BatchNorm averages batch statistics under ``shard_map`` / ``pmap``
    #: (``None``: per replica). Plain ``jit`` over a sharded batch needs no axis name.
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        c1, c2 = self.channels
        bn = partial(_bn, train, axis_name=self.bn_axis_name)
        pool = partial(nn.max_pool, window_shape=(2,), strides=(2,))
        x = pool(nn.relu(bn("bn1")(nn.Conv(c1, (5,), padding=2, use_bias=False, name="conv1")(x))))
        x = pool(nn.relu(bn("bn2")(nn.Conv(c2, (3,), padding=1, use_bias=False, name="conv2")(x))))
        x = x.reshape(x.shape[0], -1)  # channel-last order: w*C + c
        x = nn.relu(bn("bn3")(nn.Dense(self.hidden, use_bias=False, name="fc1")(x)))
        x = nn.Dropout(self.dropout, deterministic=not train, name="dropout")(x)
        return nn.Dense(self.num_classes, name="fc2")(x)


MODELS = {"digits": DigitsCNN, "signal1d": Signal1DCNN}


def build_model(name: str, **config) -> nn.Module:
    """The Linen module for ``digits`` or ``signal1d`` (configuration only; no weights)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if "channels" in config:
        config["channels"] = tuple(config["channels"])
    return MODELS[name](**config)


def init_variables(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> dict:
    """Flax-native initial ``{'params', 'batch_stats'}`` for a channels-last ``input_shape``.

    Flax's default initialisers differ from PyTorch's (lecun-normal kernels vs Kaiming-uniform),
    so models meant to match are initialised in torch and converted instead.
    """
    x = jnp.zeros((2, *input_shape), jnp.float32)
    return dict(model.init(jax.random.key(seed), x, train=False))
