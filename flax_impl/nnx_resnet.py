"""ResNet in Flax NNX with torchvision's structure and names (channels-last).

The same variants as ``torch_impl.resnet`` (see its table), from one :class:`ResNet`. Input
``(N, H, W, C)`` NHWC (``dims=1``: ``(N, W, C)`` NWC); mode set by ``model.train()`` /
``model.eval()``.

Naming: stages and shortcuts are ``nnx.List``, whose items are named by index, so NNX paths are
torch's names with ``/`` for ``.``: torch ``layer1.0.downsample.0`` is ``layer1/0/downsample/0``.
(``nnx.Sequential`` would add a level, ``downsample/layers/0``.)

Padding is written out, never ``'SAME'``; see ``flax_impl.linen_resnet.conv_padding``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from flax_impl import BN_EPSILON, BN_MOMENTUM

#: ``stem -> (kernel, stride, padding, max-pool after it)``, as in ``torch_impl.resnet``.
STEMS = {"imagenet": (7, 2, 3, True), "cifar": (3, 1, 1, False)}


def conv_padding(kernel: int, stride: int, dims: int) -> tuple[tuple[int, int], ...]:
    """torch's symmetric padding ``kernel // 2`` on both sides of each axis (``stride`` unused)."""
    del stride
    return ((kernel // 2, kernel // 2),) * dims


def _conv(cin: int, cout: int, kernel: int, stride: int, dims: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        (kernel,) * dims,
        strides=(stride,) * dims,
        padding=conv_padding(kernel, stride, dims),
        use_bias=False,
        rngs=rngs,
    )


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # two-pass batch variance, as torch computes it (see linen_models._bn)
    return nnx.BatchNorm(
        features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, use_fast_variance=False, rngs=rngs
    )


def _downsample(cin: int, cout: int, stride: int, dims: int, rngs: nnx.Rngs) -> nnx.List | None:
    """``downsample/0`` (1x1 conv, stride) and ``downsample/1`` (BN), or None for an identity."""
    if stride == 1 and cin == cout:
        return None
    return nnx.List([_conv(cin, cout, 1, stride, dims, rngs), _bn(cout, rngs)])


def _shortcut(downsample: nnx.List | None, x: jax.Array) -> jax.Array:
    return x if downsample is None else downsample[1](downsample[0](x))


class BasicBlock(nnx.Module):
    """Two 3x3 convolutions; ``(N, *S, inplanes)`` -> ``(N, *S / stride, planes)``."""

    expansion: ClassVar[int] = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dims: int = 2, *, rngs: nnx.Rngs) -> None:
        self.conv1 = _conv(inplanes, planes, 3, stride, dims, rngs)
        self.bn1 = _bn(planes, rngs)
        self.conv2 = _conv(planes, planes, 3, 1, dims, rngs)
        self.bn2 = _bn(planes, rngs)
        self.downsample = _downsample(inplanes, planes, stride, dims, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = _shortcut(self.downsample, x)
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nnx.relu(out + identity)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (stride here), 1x1 expand by 4; ``(N, *S, inplanes)`` -> ``(N, *S / stride, 4 planes)``."""

    expansion: ClassVar[int] = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dims: int = 2, *, rngs: nnx.Rngs) -> None:
        self.conv1 = _conv(inplanes, planes, 1, 1, dims, rngs)
        self.bn1 = _bn(planes, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, dims, rngs)
        self.bn2 = _bn(planes, rngs)
        self.conv3 = _conv(planes, planes * 4, 1, 1, dims, rngs)
        self.bn3 = _bn(planes * 4, rngs)
        self.downsample = _downsample(inplanes, planes * 4, stride, dims, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = _shortcut(self.downsample, x)
        out = nnx.relu(self.bn1(self.conv1(x)))
        out = nnx.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return nnx.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nnx.Module):
    """ResNet classifier. Input ``(N, H, W, C)`` NHWC (``dims=1``: ``(N, W, C)``) float32,
    output ``(N, num_classes)`` logits. Arguments as in ``torch_impl.resnet.ResNet``."""

    def __init__(
        self,
        block: Literal["basic", "bottleneck"],
        layers: Sequence[int],
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: Literal["imagenet", "cifar"] = "imagenet",
        in_channels: int = 3,
        dims: int = 2,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        kernel, stride, _, self.stem_pool = STEMS[stem]
        self.dims = dims
        block_cls = BLOCKS[block]
        self.conv1 = _conv(in_channels, widths[0], kernel, stride, dims, rngs)
        self.bn1 = _bn(widths[0], rngs)
        inplanes = widths[0]
        for i, (planes, count) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(count):
                blocks.append(block_cls(inplanes, planes, 2 if (i > 0 and j == 0) else 1, dims, rngs=rngs))
                inplanes = planes * block_cls.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.num_stages = len(layers)
        self.fc = nnx.Linear(inplanes, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x)))
        if self.stem_pool:
            x = nnx.max_pool(x, (3,) * self.dims, strides=(2,) * self.dims, padding=((1, 1),) * self.dims)
        for i in range(self.num_stages):
            for block in getattr(self, f"layer{i + 1}"):
                x = block(x)
        x = jnp.mean(x, axis=tuple(range(1, 1 + self.dims)))  # global average pool -> (N, C)
        return self.fc(x)


def resnet18(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision's ResNet-18 (BasicBlock, 2-2-2-2); input ``(N, H, W, 3)``."""
    return ResNet("basic", (2, 2, 2, 2), num_classes, rngs=rngs, **kwargs)


def resnet34(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision's ResNet-34 (BasicBlock, 3-4-6-3); input ``(N, H, W, 3)``."""
    return ResNet("basic", (3, 4, 6, 3), num_classes, rngs=rngs, **kwargs)


def resnet50(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """torchvision's ResNet-50 (Bottleneck, 3-4-6-3); input ``(N, H, W, 3)``."""
    return ResNet("bottleneck", (3, 4, 6, 3), num_classes, rngs=rngs, **kwargs)


def resnet20(num_classes: int = 10, *, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """CIFAR-style ResNet-20 (3 stages of 3 BasicBlocks, widths 16-32-64); input ``(N, 32, 32, 3)``."""
    kwargs = {"widths": (16, 32, 64), "stem": "cifar", **kwargs}
    return ResNet("basic", (3, 3, 3), num_classes, rngs=rngs, **kwargs)


def resnet20_1d(num_classes: int = 10, *, rngs: nnx.Rngs, **kwargs) -> ResNet:
    """ResNet-20 with 1-D convolutions for MNIST-1D signals; input ``(N, 40, 1)`` NWC."""
    kwargs = {"in_channels": 1, "dims": 1, **kwargs}
    return resnet20(num_classes, rngs=rngs, **kwargs)


FACTORIES = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet20": resnet20,
    "resnet20_1d": resnet20_1d,
}
