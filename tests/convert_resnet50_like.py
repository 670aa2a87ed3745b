"""A ResNet-50-sized model (25.6M parameters) from plain nn.Conv2d / nn.BatchNorm2d / nn.Linear,
named like torchvision's (``conv1``, ``layer1.0.downsample.0``, ``fc``), and a Linen port named
by the conventions of :mod:`parity.convert.naming` (``layer1_0/downsample/layers_0``).

Used to measure the converter at scale (``python tests/convert_resnet50_like.py``) and by
``tests/test_convert_scale.py`` for exactness. Input ``(N, 3, 224, 224)`` NCHW.
"""

from __future__ import annotations

import flax.linen as fnn
import numpy as np
import torch
from torch import nn

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * 4
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50Like(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        c = 64
        for i, (width, blocks, stride) in enumerate(STAGES, 1):
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(c, width, stride if b == 0 else 1))
                c = width * 4
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


class LinenBottleneck(fnn.Module):
    width: int
    stride: int
    project: bool

    def setup(self):
        bn = lambda: fnn.BatchNorm(use_running_average=True, epsilon=1e-5)  # noqa: E731
        w, s = self.width, self.stride
        self.conv1, self.bn1 = fnn.Conv(w, (1, 1), use_bias=False), bn()
        self.conv2, self.bn2 = fnn.Conv(w, (3, 3), s, padding=((1, 1), (1, 1)), use_bias=False), bn()
        self.conv3, self.bn3 = fnn.Conv(w * 4, (1, 1), use_bias=False), bn()
        if self.project:
            self.downsample = fnn.Sequential([fnn.Conv(w * 4, (1, 1), s, use_bias=False), bn()])

    def __call__(self, x):
        y = fnn.relu(self.bn1(self.conv1(x)))
        y = fnn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return fnn.relu(y + (self.downsample(x) if self.project else x))


class LinenResNet50Like(fnn.Module):
    num_classes: int = 1000

    @fnn.compact
    def __call__(self, x):
        x = fnn.Conv(64, (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False, name="conv1")(x)
        x = fnn.relu(fnn.BatchNorm(use_running_average=True, epsilon=1e-5, name="bn1")(x))
        x = fnn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
        c = 64
        for i, (width, blocks, stride) in enumerate(STAGES, 1):
            for b in range(blocks):
                s = stride if b == 0 else 1
                x = LinenBottleneck(width, s, s != 1 or c != width * 4, name=f"layer{i}_{b}")(x)
                c = width * 4
        return fnn.Dense(self.num_classes, name="fc")(x.mean(axis=(1, 2)))


def make_torch() -> nn.Module:
    torch.manual_seed(0)
    return ResNet50Like().eval()


def make_linen() -> fnn.Module:
    return LinenResNet50Like()


def linen_shapes() -> dict:
    """The Linen variables' shapes (``jax.eval_shape``: nothing is computed)."""
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    return jax.eval_shape(make_linen().init, jax.random.key(0), x)


def measure() -> None:
    """Time and peak extra memory (tracemalloc: numpy allocations) of torch -> Linen -> torch,
    and of the pairing behind ``parity map``."""
    import os
    import time
    import tracemalloc

    from parity.convert import flax_to_torch, map_models, torch_to_flax

    model, shapes = make_torch(), linen_shapes()
    sd = model.state_dict()
    small = nn.Linear(2, 2)  # warm-up: imports (flax.nnx, torch.fx) are not the converter's cost
    flax_to_torch(
        torch_to_flax(
            small.state_dict(),
            small,
            {"params": {"kernel": np.zeros((2, 2), np.float32), "bias": np.zeros(2, np.float32)}},
        ),
        small,
    )
    n_params = sum(p.numel() for p in model.parameters())
    size = sum(t.numel() * t.element_size() for t in sd.values())
    tracemalloc.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    v = torch_to_flax(sd, model, shapes)
    t1 = time.perf_counter()
    _, peak_to_flax = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    back = flax_to_torch(v, model)
    t2 = time.perf_counter()
    c2 = time.process_time()
    _, peak_round = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    exact = all(torch.equal(back[k], sd[k]) for k in sd if "num_batches" not in k)
    t3 = time.perf_counter()
    pairing, rows = map_models(model, shapes)
    t4 = time.perf_counter()
    mb = 2**20
    ratio_in, ratio_round = peak_to_flax / size, peak_round / size
    print(
        f"params {n_params / 1e6:.2f}M, checkpoint {size / mb:.1f} MiB, bit-exact {exact}, paired {pairing.ok}"
    )
    print(f"torch->Linen {t1 - t0:.2f} s (peak extra {peak_to_flax / mb:.0f} MiB = {ratio_in:.2f}x)")
    print(f"Linen->torch {t2 - t1:.2f} s (peak, both held {peak_round / mb:.0f} MiB = {ratio_round:.2f}x)")
    print(
        f"round trip {t2 - t0:.2f} s wall, {c2 - c0:.2f} s CPU; map pairing {t4 - t3:.2f} s ({len(rows)} rows)"
    )
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    measure()
