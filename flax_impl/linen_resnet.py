"""ResNet in Flax Linen with torchvision's structure and names (channels-last).

The same variants as ``torch_impl.resnet`` (see its table), from one :class:`ResNet`. Input
``(N, H, W, C)`` NHWC (``dims=1``: ``(N, W, C)`` NWC); ``__call__(x, *, train)`` takes the mode.

Naming: blocks are Linen *list attributes* assigned in ``setup``, which Linen names
``<attribute>_<index>``: torch ``layer1.0.conv1`` is ``params/layer1_0/conv1``, torch
``layer1.0.downsample.0`` / ``.1`` are ``layer1_0/downsample_0`` / ``downsample_1``. Everything
else has torch's name (``conv1``, ``bn1``, ``fc``).

Padding is written out, never ``'SAME'``: a stride-2 convolution with ``'SAME'`` pads
asymmetrically (``(0, 1)`` for a 3x3 kernel on an even input), torch pads ``kernel // 2`` on
both sides; the outputs have the same shape and different values. :func:`conv_padding` is the
one place that says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_impl import BN_EPSILON, BN_MOMENTUM

#: ``stem -> (kernel, stride, padding, max-pool after it)``, as in ``torch_impl.resnet``.
STEMS = {"imagenet": (7, 2, 3, True), "cifar": (3, 1, 1, False)}


def conv_padding(kernel: int, stride: int, dims: int) -> tuple[tuple[int, int], ...]:
    """torch's symmetric padding ``kernel // 2`` on both sides of each of ``dims`` axes.

    ``stride`` is not used: torch's padding does not depend on it, and that is the point
    (Flax ``'SAME'`` does, and becomes asymmetric at stride 2).
    """
    del stride
    return ((kernel // 2, kernel // 2),) * dims


def _conv(features: int, kernel: int, stride: int, dims: int, name: str | None = None) -> nn.Conv:
    return nn.Conv(
        features,
        (kernel,) * dims,
        strides=(stride,) * dims,
        padding=conv_padding(kernel, stride, dims),
        use_bias=False,
        name=name,
    )


def _bn(name: str | None = None) -> nn.BatchNorm:
    # use_running_average is given at call time: setup-defined modules cannot see `train`;
    # two-pass batch variance, as torch computes it (see linen_models._bn)
    return nn.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, use_fast_variance=False, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``(N, *S, inplanes)`` -> ``(N, *S / stride, planes)``."""

    planes: int
    stride: int = 1
    project: bool = False  # a 1x1 conv + BN shortcut (torch's ``downsample``)
    dims: int = 2
    expansion: ClassVar[int] = 1

    def setup(self) -> None:
        self.conv1 = _conv(self.planes, 3, self.stride, self.dims)
        self.bn1 = _bn()
        self.conv2 = _conv(self.planes, 3, 1, self.dims)
        self.bn2 = _bn()
        if self.project:
            self.downsample = [_conv(self.planes, 1, self.stride, self.dims), _bn()]

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        identity = x
        if self.project:
            identity = self.downsample[1](self.downsample[0](x), use_running_average=not train)
        out = nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        out = self.bn2(self.conv2(out), use_running_average=not train)
        return nn.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here), 1x1 expand by 4; ``(N, *S, inplanes)`` -> ``(N, *S / stride, 4 planes)``."""

    planes: int
    stride: int = 1
    project: bool = False
    dims: int = 2
    expansion: ClassVar[int] = 4

    def setup(self) -> None:
        self.conv1 = _conv(self.planes, 1, 1, self.dims)
        self.bn1 = _bn()
        self.conv2 = _conv(self.planes, 3, self.stride, self.dims)
        self.bn2 = _bn()
        self.conv3 = _conv(self.planes * 4, 1, 1, self.dims)
        self.bn3 = _bn()
        if self.project:
            self.downsample = [_conv(self.planes * 4, 1, self.stride, self.dims), _bn()]

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        identity = x
        if self.project:
            identity = self.downsample[1](self.downsample[0](x), use_running_average=not train)
        out = nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        out = nn.relu(self.bn2(self.conv2(out), use_running_average=not train))
        out = self.bn3(self.conv3(out), use_running_average=not train)
        return nn.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet classifier. Input ``(N, H, W, C)`` NHWC (``dims=1``: ``(N, W, C)``) float32,
    output ``(N, num_classes)`` logits. Arguments as in ``torch_impl.resnet.ResNet``."""

    block: Literal["basic", "bottleneck"]
    layers: Sequence[int]
    num_classes: int = 1000
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: Literal["imagenet", "cifar"] = "imagenet"
    dims: int = 2

    def setup(self) -> None:
        kernel, stride, _, _ = STEMS[self.stem]
        block_cls = BLOCKS[self.block]
        self.conv1 = _conv(self.widths[0], kernel, stride, self.dims)
        self.bn1 = _bn()
        inplanes = self.widths[0]
        for i, (planes, count) in enumerate(zip(self.widths, self.layers)):
            blocks = []
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                project = stride != 1 or inplanes != planes * block_cls.expansion
                blocks.append(block_cls(planes, stride, project, self.dims))
                inplanes = planes * block_cls.expansion
            setattr(self, f"layer{i + 1}", blocks)  # a list attribute: layer1_0, layer1_1, ...
        self.fc = nn.Dense(self.num_classes)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        if STEMS[self.stem][3]:
            x = nn.max_pool(x, (3,) * self.dims, strides=(2,) * self.dims, padding=((1, 1),) * self.dims)
        for i in range(len(self.layers)):
            for block in getattr(self, f"layer{i + 1}"):
                x = block(x, train=train)
        x = jnp.mean(x, axis=tuple(range(1, 1 + self.dims)))  # global average pool -> (N, C)
        return self.fc(x)


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """torchvision's ResNet-18 (BasicBlock, 2-2-2-2); input ``(N, H, W, 3)``."""
    return ResNet("basic", (2, 2, 2, 2), num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    """torchvision's ResNet-34 (BasicBlock, 3-4-6-3); input ``(N, H, W, 3)``."""
    return ResNet("basic", (3, 4, 6, 3), num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """torchvision's ResNet-50 (Bottleneck, 3-4-6-3); input ``(N, H, W, 3)``."""
    return ResNet("bottleneck", (3, 4, 6, 3), num_classes, **kwargs)


def resnet20(num_classes: int = 10, **kwargs) -> ResNet:
    """CIFAR-style ResNet-20 (3 stages of 3 BasicBlocks, widths 16-32-64); input ``(N, 32, 32, 3)``."""
    kwargs = {"widths": (16, 32, 64), "stem": "cifar", **kwargs}
    return ResNet("basic", (3, 3, 3), num_classes, **kwargs)


def resnet20_1d(num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet-20 with 1-D convolutions for MNIST-1D signals; input ``(N, 40, 1)`` NWC."""
    kwargs = {"dims": 1, **kwargs}
    return resnet20(num_classes, **kwargs)


FACTORIES = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet20": resnet20,
    "resnet20_1d": resnet20_1d,
}
