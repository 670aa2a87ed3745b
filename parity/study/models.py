"""The study's architectures in the three frameworks, and each seed's shared initial weights.

The project's own models (``signal1d``, ``digits``) come from ``torch_impl.models`` /
``flax_impl.{linen,nnx}_models`` and convert with :func:`parity.convert.torch_to_linen`; the
zoo's (``resnet20_1d``, ``vit_tiny_1d``, ``resnet20``) come from the factories of
``torch_impl.{resnet,vit}`` and their Flax mirrors and convert with the general
:func:`parity.convert.torch_to_flax`. Either way every framework's model of a seed starts from
the torch model's weights. Inputs: torch channels-first (NCW / NCHW), Flax channels-last.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from parity.registry import MODELS

#: zoo model -> (zoo module, extra keyword arguments for the torch and NNX factories). The digits
#: are one-channel 8x8 images; Linen infers input channels, torch and NNX are told.
ZOO: dict[str, tuple[str, dict]] = {
    "resnet20_1d": ("resnet", {}),
    "vit_tiny_1d": ("vit", {}),
    "resnet20": ("resnet", {"in_channels": 1}),
}


def build_torch(name: str, seed: int, config: dict) -> Any:
    """The torch model ``name`` with its framework's default initialisation under ``seed``."""
    import torch

    from torch_impl import models

    if name in MODELS:
        return models.build_model(name, seed=seed, **config)
    module, extra = ZOO[name]
    factory = _torch_zoo(module).FACTORIES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(**extra, **config)


def _torch_zoo(module: str) -> Any:
    from torch_impl import resnet, vit

    return {"resnet": resnet, "vit": vit}[module]


def _flax_zoo(framework: str, module: str) -> Any:
    from flax_impl import linen_resnet, linen_vit, nnx_resnet, nnx_vit

    return {
        ("linen", "resnet"): linen_resnet,
        ("linen", "vit"): linen_vit,
        ("nnx", "resnet"): nnx_resnet,
        ("nnx", "vit"): nnx_vit,
    }[framework, module]


@functools.cache
def linen_module(name: str, config_items: tuple) -> Any:
    """One Linen module per architecture config. ``TrainState.apply_fn`` is static under jit and
    bound methods compare by identity, so reusing one module lets jit reuse its compilation."""
    from flax_impl import linen_models

    config = dict(config_items)
    if name in MODELS:
        return linen_models.build_model(name, **config)
    return _flax_zoo("linen", ZOO[name][0]).FACTORIES[name](**config)


def build_nnx(name: str, seed: int, config: dict) -> Any:
    """The NNX model ``name`` (Flax-initialised from ``seed``; overwritten by :func:`load_nnx`)."""
    from flax import nnx

    from flax_impl import nnx_models

    if name in MODELS:
        return nnx_models.build_model(name, seed=seed, **config)
    module, extra = ZOO[name]
    return _flax_zoo("nnx", module).FACTORIES[name](**extra, **config, rngs=nnx.Rngs(seed))


def linen_variables(name: str, torch_model: Any, config_items: tuple, x_cl: np.ndarray) -> dict:
    """``torch_model``'s weights as Linen ``{'params'[, 'batch_stats']}`` (numpy). ``x_cl`` is a
    channels-last batch whose shape initialises the zoo's Linen module (conversion target)."""
    import jax

    from parity.convert import torch_to_flax, torch_to_linen

    if name in MODELS:
        return torch_to_linen(torch_model.state_dict(), torch_model)
    module = linen_module(name, config_items)
    target = jax.eval_shape(lambda: module.init(jax.random.key(0), x_cl[:2], train=False))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target)
    return dict(torch_to_flax(torch_model.state_dict(), torch_model, target))


def load_nnx(name: str, torch_model: Any, model: Any) -> Any:
    """Write ``torch_model``'s weights into the NNX ``model`` (in place; returned)."""
    from parity.convert import torch_to_flax, torch_to_nnx

    if name in MODELS:
        return torch_to_nnx(torch_model.state_dict(), torch_model, model)
    return torch_to_flax(torch_model.state_dict(), torch_model, model)
