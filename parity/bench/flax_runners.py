"""The Flax styles' runners: Linen (``jit``, ``scan``, ``vmap_scan``) and NNX (``jit``, ``split``).

Batches are channels-last (NHWC / NWC, :func:`parity.layout.to_channels_last`), the same rows
as torch's. Weights come from the workload's torch initialisation via :mod:`parity.convert`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_impl import linen_models, nnx_models, nnx_train
from flax_impl import linen_train as linen
from parity.bench.spec import Runner
from parity.bench.workload import Workload
from parity.convert import torch_to_linen, torch_to_nnx
from torch_impl.models import build_model as build_torch_model


def _linen_state(wl: Workload, dropout: float | None, seeds: int | None = None) -> linen.TrainState:
    """Linen's train state from ``wl``'s weights; ``seeds`` stacks that many copies (vmap)."""
    template = build_torch_model(wl.model, **wl.config)
    variables = jax.device_put(torch_to_linen(wl.state_dict, template))
    model = linen_models.build_model(wl.model, **wl.model_config(dropout))
    tx = linen.make_optimizer(wl.lr, wl.momentum)
    if seeds is None:
        return linen.create_train_state(model, variables, tx)
    return linen.create_seed_states(model, [variables] * seeds, tx)


def _jax_batches(wl: Workload, idx: np.ndarray) -> list[tuple[jax.Array, jax.Array]]:
    """``(x, y)`` per step on the device: x ``(batch, *spatial, channels)``, y ``(batch,)``."""
    x, y = jnp.asarray(wl.x_cl), jnp.asarray(wl.y)
    return jax.block_until_ready([(x[i], y[i]) for i in np.asarray(idx)])


def _tree_stats(tree) -> dict[str, np.ndarray]:
    """Leaves of a batch-statistics pytree as float64 host arrays keyed by their path."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float64) for path, leaf in flat}


class LinenJitRunner(Runner):
    """``linen_jit``: :func:`flax_impl.linen_train.train_step` over pre-gathered device batches;
    step ``i`` uses dropout key ``fold_in(key(0), i)`` as :func:`flax_impl.linen_train.fit` does."""

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        self.state = _linen_state(wl, dropout)
        self.batches = _jax_batches(wl, idx)
        rng = jax.random.key(0)
        self.keys = jax.block_until_ready([jax.random.fold_in(rng, i) for i in range(len(self.batches))])

    def run(self) -> list[jax.Array]:
        losses = []
        for batch, key in zip(self.batches, self.keys):
            self.state, metrics = linen.train_step(self.state, batch, key)
            losses.append(metrics["loss"])
        return jax.block_until_ready((self.state, losses))[1]

    def bn_stats(self) -> dict[str, np.ndarray]:
        return _tree_stats(self.state.batch_stats)


class LinenScanRunner(Runner):
    """``linen_scan``: :func:`flax_impl.linen_train.train_epoch_scan`; data and indices on the
    device."""

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        self.state = _linen_state(wl, dropout)
        self.x, self.y = jnp.asarray(wl.x_cl), jnp.asarray(wl.y)
        self.idx = jnp.asarray(idx)
        self.rng = jax.random.key(0)

    def run(self) -> jax.Array:
        self.state, metrics = linen.train_epoch_scan(self.state, self.x, self.y, self.idx, self.rng)
        return jax.block_until_ready((self.state, metrics["loss"]))[1]

    def bn_stats(self) -> dict[str, np.ndarray]:
        return _tree_stats(self.state.batch_stats)


class LinenVmapScanRunner(Runner):
    """``linen_vmap_scan``: :func:`flax_impl.linen_train.train_epoch_scan_seeds` over ``seeds``
    copies of the same converted weights; seed ``s`` has its own batch order and dropout key."""

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        self.states = _linen_state(wl, dropout, seeds=idx.shape[0])
        self.x, self.y = jnp.asarray(wl.x_cl), jnp.asarray(wl.y)
        self.idx = jnp.asarray(idx)
        self.rngs = jax.random.split(jax.random.key(0), idx.shape[0])

    def run(self) -> jax.Array:
        self.states, metrics = linen.train_epoch_scan_seeds(self.states, self.x, self.y, self.idx, self.rngs)
        return jax.block_until_ready((self.states, metrics["loss"]))[1]

    def bn_stats(self) -> dict[str, np.ndarray]:
        return _tree_stats(self.states.batch_stats)


def _nnx_model(wl: Workload, dropout: float | None) -> tuple[nnx.Module, nnx.Optimizer]:
    """The NNX model in training mode, from ``wl``'s weights, and its optimizer."""
    model = nnx_models.build_model(wl.model, seed=0, **wl.model_config(dropout))
    torch_to_nnx(wl.state_dict, build_torch_model(wl.model, **wl.config), model)
    model.train()
    return model, nnx_train.make_optimizer(model, lr=wl.lr, momentum=wl.momentum)


class NnxJitRunner(Runner):
    """``nnx_jit``: :func:`flax_impl.nnx_train.train_step` (``nnx.jit``) per step."""

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        self.model, self.opt = _nnx_model(wl, dropout)
        self.batches = _jax_batches(wl, idx)

    def run(self) -> list[jax.Array]:
        losses = [nnx_train.train_step(self.model, self.opt, x, y)["loss"] for x, y in self.batches]
        return jax.block_until_ready(losses)

    def bn_stats(self) -> dict[str, np.ndarray]:
        return _tree_stats(nnx.state(self.model, nnx.BatchStat))


@functools.cache
def _nnx_functional_step() -> Callable:
    """The jitted ``(graphdef, state, x, y) -> (state, loss)`` of NNX's functional API.

    ``graphdef`` is static (a pytree without leaves); ``state`` holds the parameters, batch
    statistics, optimizer state and the dropout rng counter, and is donated.
    """

    def step(graphdef, state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: nnx_train.loss_fn(m(x), y))(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return jax.jit(step, donate_argnums=1)


class NnxSplitRunner(Runner):
    """``nnx_split``: ``nnx.split((model, optimizer))`` once, then a plain ``jax.jit`` step."""

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        model, opt = _nnx_model(wl, dropout)
        self.graphdef, self.state = nnx.split((model, opt))
        self.batches = _jax_batches(wl, idx)

    def run(self) -> list[jax.Array]:
        step = _nnx_functional_step()
        losses = []
        for x, y in self.batches:
            self.state, loss = step(self.graphdef, self.state, x, y)
            losses.append(loss)
        return jax.block_until_ready((self.state, losses))[1]

    def bn_stats(self) -> dict[str, np.ndarray]:
        model, _ = nnx.merge(self.graphdef, self.state)
        return _tree_stats(nnx.state(model, nnx.BatchStat))
