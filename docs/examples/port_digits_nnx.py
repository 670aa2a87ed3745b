"""Flax NNX port of ``torch_impl.models.DigitsCNN``, written by ``parity port``.

Converted: 1 class(es) (DigitsCNN) from the torch module tree, with
torch's attribute names; 8 layer(s) with torch's hyper-parameters written out; each
forward translated from a torch.fx trace of its class.

Layout: channels-last: the port takes image-like input NHWC (N, *spatial, C), the layout
Flax's Conv and pooling use; the caller moves torch's NCHW input once (parity check
does), and a tensor goes back to channels-first only where an op needs torch's axis
order (marked 'back to torch's channels-first').

Mode: BatchNorm and Dropout carry their own mode: model.train() / model.eval(), or
nnx.view(model, ...) for an evaluation view sharing the weights.

Not translated: none, everything was translated."""

import jax
from flax import nnx


class DigitsCNN(nnx.Module):
    """Port of ``torch_impl.models.DigitsCNN`` (the root)."""

    def __init__(self, *, rngs: nnx.Rngs) -> None:
        self.conv1 = nnx.Conv(
            1,
            16,
            kernel_size=(3, 3),
            strides=(1, 1),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            rngs=rngs,
        )
        self.bn1 = nnx.BatchNorm(
            16, momentum=0.9, epsilon=1e-05, use_fast_variance=False, rngs=rngs
        )
        self.conv2 = nnx.Conv(
            16,
            32,
            kernel_size=(3, 3),
            strides=(1, 1),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            rngs=rngs,
        )
        self.bn2 = nnx.BatchNorm(
            32, momentum=0.9, epsilon=1e-05, use_fast_variance=False, rngs=rngs
        )
        self.fc1 = nnx.Linear(512, 64, use_bias=False, rngs=rngs)
        self.bn3 = nnx.BatchNorm(
            64, momentum=0.9, epsilon=1e-05, use_fast_variance=False, rngs=rngs
        )
        self.dropout = nnx.Dropout(0.3, rngs=rngs)
        self.fc2 = nnx.Linear(64, 10, use_bias=True, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        conv1 = self.conv1(x)
        bn1 = self.bn1(conv1)
        x = jax.nn.relu(bn1)
        conv2 = self.conv2(x)
        bn2 = self.bn2(conv2)
        relu_1 = jax.nn.relu(bn2)
        x = nnx.max_pool(relu_1, window_shape=(2, 2), strides=(2, 2))
        # channels-last flatten order: the converter permutes fc1's rows to match
        x = x.reshape(x.shape[0], -1)
        fc1 = self.fc1(x)
        bn3 = self.bn3(fc1)
        relu_2 = jax.nn.relu(bn3)
        x = self.dropout(relu_2)
        return self.fc2(x)


def make() -> nnx.Module:
    """The port, fresh Flax weights (parity check converts torch's into it)."""
    return DigitsCNN(rngs=nnx.Rngs(0))
