"""Factories of the ResNet-18 pair timed by ``scripts/bench_check.py``: the zoo's torch model
(torchvision names, seed 0) and its Linen and NNX ports, each a no-argument factory for
``parity check --torch scripts/bench_check_models.py:torch_resnet18 --flax ...``.

Input ``(4, 3, 32, 32)`` in torch layout (``(4, 32, 32, 3)`` for Flax); 1000 classes."""

from __future__ import annotations


def torch_resnet18():
    """The torch ResNet-18, weights seeded with 0."""
    import torch

    from torch_impl import resnet

    torch.manual_seed(0)
    return resnet.resnet18()


def linen_resnet18():
    """The Linen port (uninitialised; the harness converts the torch weights into it)."""
    from flax_impl import linen_resnet

    return linen_resnet.resnet18()


def nnx_resnet18():
    """The NNX port (its own initialisation; the harness loads the torch weights)."""
    from flax import nnx

    from flax_impl import nnx_resnet

    return nnx_resnet.resnet18(rngs=nnx.Rngs(0))
