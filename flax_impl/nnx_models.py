"""The two matching architectures in Flax NNX (channels-last).

NNX brings back a mutable mode: ``model.train()`` / ``model.eval()`` set
``use_running_average`` on every BatchNorm and ``deterministic`` on every Dropout, in place,
like PyTorch's ``Module.train(mode)``. ``nnx.view(model, ...)`` instead returns a new
module that shares the weights and has its own mode, which is how ``flax_impl.nnx_train``
keeps a train view and an eval view apart. Submodule names match ``torch_impl.models``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from flax_impl import BN_EPSILON, BN_MOMENTUM


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # two-pass batch variance, as torch computes it (see linen_models._bn)
    return nnx.BatchNorm(
        features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, use_fast_variance=False, rngs=rngs
    )


class DigitsCNN(nnx.Module):
    """CNN for 8x8 digits. Input ``(N, 8, 8, 1)`` NHWC float32, output ``(N, 10)`` logits."""

    def __init__(
        self,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
        dropout: float = 0.3,
        num_classes: int = 10,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        c1, c2 = channels
        self.conv1 = nnx.Conv(1, c1, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn1 = _bn(c1, rngs)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), padding=1, use_bias=False, rngs=rngs)
        self.bn2 = _bn(c2, rngs)
        self.fc1 = nnx.Linear(4 * 4 * c2, hidden, use_bias=False, rngs=rngs)
        self.bn3 = _bn(hidden, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(nnx.relu(self.bn2(self.conv2(x))), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # channel-last order: h*W*C + w*C + c
        x = self.dropout(nnx.relu(self.bn3(self.fc1(x))))
        return self.fc2(x)


class Signal1DCNN(nnx.Module):
    """1-D CNN for MNIST-1D. Input ``(N, 40, 1)`` NWC float32, output ``(N, 10)`` logits."""

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.2,
        num_classes: int = 10,
        length: int = 40,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        c1, c2 = channels
        self.conv1 = nnx.Conv(1, c1, (5,), padding=2, use_bias=False, rngs=rngs)
        self.bn1 = _bn(c1, rngs)
        self.conv2 = nnx.Conv(c1, c2, (3,), padding=1, use_bias=False, rngs=rngs)
        self.bn2 = _bn(c2, rngs)
        self.fc1 = nnx.Linear((length // 4) * c2, hidden, use_bias=False, rngs=rngs)
        self.bn3 = _bn(hidden, rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x))), (2,), strides=(2,))
        x = nnx.max_pool(nnx.relu(self.bn2(self.conv2(x))), (2,), strides=(2,))
        x = x.reshape(x.shape[0], -1)  # channel-last order: w*C + c
        x = nnx.relu(self.bn3(self.fc1(x)))
        return self.fc2(self.dropout(x))


MODELS = {"digits": DigitsCNN, "signal1d": Signal1DCNN}


def build_model(name: str, seed: int = 0, **config) -> nnx.Module:
    """The NNX module for ``digits`` or ``signal1d``, Flax-initialised from ``seed``, in train mode."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**config, rngs=nnx.Rngs(seed))
