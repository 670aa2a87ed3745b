"""ResNet in PyTorch with torchvision's structure and parameter names (channels-first).

One definition, :class:`ResNet`, gives every variant; the factories fix its arguments:

===============  ==========  =================  ============  ========  =====  ==================
factory          block       blocks per stage   widths        stem      dims   parameters
===============  ==========  =================  ============  ========  =====  ==================
``resnet18``     BasicBlock  2, 2, 2, 2         64 ... 512    imagenet  2      11,689,512 (1000)
``resnet34``     BasicBlock  3, 4, 6, 3         64 ... 512    imagenet  2      21,797,672 (1000)
``resnet50``     Bottleneck  3, 4, 6, 3         64 ... 512    imagenet  2      25,557,032 (1000)
``resnet20``     BasicBlock  3, 3, 3            16, 32, 64    cifar     2      272,474 (10)
``resnet20_1d``  BasicBlock  3, 3, 3            16, 32, 64    cifar     1      93,914 (10), MNIST-1D
===============  ==========  =================  ============  ========  =====  ==================

Names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``,
``layer1.0.downsample.1``, ``fc``), so a torchvision ``state_dict`` loads into the ImageNet
variants by name alone. Bottleneck puts the stride on its 3x3 convolution (torchvision's "v1.5").

Stems: ``imagenet`` is conv 7x7 stride 2 padding 3, BN, ReLU, max-pool 3x3 stride 2 padding 1;
``cifar`` is conv 3x3 stride 1 padding 1, BN, ReLU, no max-pool (so there is no ``maxpool``
attribute). The CIFAR variant uses projection shortcuts (1x1 conv + BN, torchvision's
``downsample``) where He et al.'s ResNet-20 used zero-padded identities ("option A"): one
shortcut kind for every variant keeps one definition and one set of conversion rules.
``dims=1`` swaps every Conv2d / BatchNorm2d / pooling for its 1-D counterpart (input NCW).

Initialisation follows torchvision: Kaiming-normal (``fan_out``, ReLU) convolutions, BN scale 1
and bias 0, PyTorch's default ``fc``. BN uses PyTorch's defaults, momentum 0.1 and eps 1e-5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import nn

#: ``dims -> (conv, batch norm, max-pool, adaptive average pool)`` classes.
LAYERS = {
    1: (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AdaptiveAvgPool1d),
    2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
}
#: ``stem -> (kernel, stride, padding, max-pool after it)``.
STEMS = {"imagenet": (7, 2, 3, True), "cifar": (3, 1, 1, False)}


def _conv(dims: int, cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Module:
    """Bias-free convolution with torch's symmetric padding ``kernel // 2`` on every side."""
    return LAYERS[dims][0](cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)


def _downsample(dims: int, cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """``downsample.0`` (1x1 conv, stride) and ``downsample.1`` (BN), or None for an identity."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv(dims, cin, cout, 1, stride), LAYERS[dims][1](cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``(N, inplanes, *S)`` -> ``(N, planes, *S / stride)``."""

    expansion: ClassVar[int] = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dims: int = 2) -> None:
        super().__init__()
        bn = LAYERS[dims][1]
        self.conv1 = _conv(dims, inplanes, planes, 3, stride)
        self.bn1 = bn(planes)
        self.conv2 = _conv(dims, planes, planes, 3)
        self.bn2 = bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(dims, inplanes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here), 1x1 expand by 4; ``(N, inplanes, *S)`` -> ``(N, 4 planes, *S / stride)``."""

    expansion: ClassVar[int] = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dims: int = 2) -> None:
        super().__init__()
        bn = LAYERS[dims][1]
        self.conv1 = _conv(dims, inplanes, planes, 1)
        self.bn1 = bn(planes)
        self.conv2 = _conv(dims, planes, planes, 3, stride)
        self.bn2 = bn(planes)
        self.conv3 = _conv(dims, planes, planes * 4, 1)
        self.bn3 = bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(dims, inplanes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet classifier. Input ``(N, in_channels, H, W)`` NCHW (``dims=1``: ``(N, C, W)`` NCW)
    float32, output ``(N, num_classes)`` logits.

    Stage ``i`` (``layer{i+1}``) has ``layers[i]`` blocks of width ``widths[i]``; every stage after
    the first halves the spatial size in its first block.
    """

    def __init__(
        self,
        block: Literal["basic", "bottleneck"],
        layers: Sequence[int],
        num_classes: int = 1000,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem: Literal["imagenet", "cifar"] = "imagenet",
        in_channels: int = 3,
        dims: int = 2,
    ) -> None:
        super().__init__()
        conv, bn, maxpool, avgpool = LAYERS[dims]
        kernel, stride, padding, pool = STEMS[stem]
        block_cls = BLOCKS[block]
        self.conv1 = conv(in_channels, widths[0], kernel, stride=stride, padding=padding, bias=False)
        self.bn1 = bn(widths[0])
        self.relu = nn.ReLU(inplace=True)
        if pool:
            self.maxpool = maxpool(kernel_size=3, stride=2, padding=1)
        inplanes = widths[0]
        for i, (planes, count) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(count):
                blocks.append(block_cls(inplanes, planes, 2 if (i > 0 and j == 0) else 1, dims))
                inplanes = planes * block_cls.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.avgpool = avgpool(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if hasattr(self, "maxpool"):
            x = self.maxpool(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = torch.flatten(self.avgpool(x), 1)  # (N, C, 1[, 1]) -> (N, C)
        return self.fc(x)


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """torchvision's ResNet-18 (BasicBlock, 2-2-2-2); input ``(N, 3, H, W)``."""
    return ResNet("basic", (2, 2, 2, 2), num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    """torchvision's ResNet-34 (BasicBlock, 3-4-6-3); input ``(N, 3, H, W)``."""
    return ResNet("basic", (3, 4, 6, 3), num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """torchvision's ResNet-50 (Bottleneck, 3-4-6-3); input ``(N, 3, H, W)``."""
    return ResNet("bottleneck", (3, 4, 6, 3), num_classes, **kwargs)


def resnet20(num_classes: int = 10, **kwargs) -> ResNet:
    """CIFAR-style ResNet-20 (3 stages of 3 BasicBlocks, widths 16-32-64); input ``(N, 3, 32, 32)``."""
    kwargs = {"widths": (16, 32, 64), "stem": "cifar", **kwargs}
    return ResNet("basic", (3, 3, 3), num_classes, **kwargs)


def resnet20_1d(num_classes: int = 10, **kwargs) -> ResNet:
    """ResNet-20 with 1-D convolutions for MNIST-1D signals; input ``(N, 1, 40)`` NCW."""
    kwargs = {"in_channels": 1, "dims": 1, **kwargs}
    return resnet20(num_classes, **kwargs)


FACTORIES = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet20": resnet20,
    "resnet20_1d": resnet20_1d,
}
