"""The training-step example written beside a generated port: the mode pattern the study is
about, in the port's style. NNX: each function sets the mode it needs (``model.train()`` /
an ``nnx.view`` for evaluation); Linen: ``train`` is an argument of every apply.
"""

from __future__ import annotations

_NNX = '''"""Training the generated NNX port: every function establishes the mode it needs.

``train_epoch`` calls ``model.train()`` first (batch statistics, dropout on); ``evaluate``
runs an ``nnx.view`` of the model in eval mode (running averages, no dropout) that shares
its weights, so no step depends on the mode a previous one left behind.
"""

import jax
import numpy as np
import optax
from flax import nnx

from {module} import {factory}


def loss_fn(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


def train_epoch(model: nnx.Module, optimizer: nnx.Optimizer, batches) -> float:
    model.train()
    return float(np.mean([train_step(model, optimizer, x, y) for x, y in batches]))


def evaluate(model: nnx.Module, batches) -> float:
    view = nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)
    return float(np.mean([loss_fn(view, x, y) for x, y in batches]))


def main(input_shape: tuple[int, ...], steps: int = 2) -> tuple[float, float]:
    """A few steps on random data of ``input_shape`` (the port's layout)."""
    model = {factory}()
    optimizer = nnx.Optimizer(model, optax.sgd(0.05, momentum=0.9), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    classes = nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)(
        np.zeros(input_shape, np.float32)
    ).shape[-1]
    batches = [
        (rng.standard_normal(input_shape).astype(np.float32), rng.integers(0, classes, input_shape[0]))
        for _ in range(steps)
    ]
    return train_epoch(model, optimizer, batches), evaluate(model, batches)
'''

_LINEN = '''"""Training the generated Linen port: the mode is an argument of every apply.

``train_step`` applies with ``train=True``, ``mutable=["batch_stats"]`` and a dropout rng,
and stores the new statistics in the returned state; ``eval_step`` applies with
``train=False``. State in, state out: nothing about the mode is stored in the model.
"""

from typing import Any

import jax
import numpy as np
import optax
from flax.training import train_state

from {module} import {factory}


class TrainState(train_state.TrainState):
    batch_stats: Any


def create_state(model, x: np.ndarray) -> TrainState:
    variables = model.init(jax.random.key(0), x, train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=optax.sgd(0.05, momentum=0.9),
        batch_stats=variables.get("batch_stats", {{}}),
    )


@jax.jit
def train_step(state: TrainState, x: jax.Array, y: jax.Array, rng: jax.Array):
    def loss_fn(params):
        variables = {{"params": params, "batch_stats": state.batch_stats}}
        logits, updates = state.apply_fn(
            variables, x, train=True, mutable=["batch_stats"], rngs={{"dropout": rng}}
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {{}}))
    return state, loss


@jax.jit
def eval_step(state: TrainState, x: jax.Array, y: jax.Array) -> jax.Array:
    variables = {{"params": state.params, "batch_stats": state.batch_stats}}
    logits = state.apply_fn(variables, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main(input_shape: tuple[int, ...], steps: int = 2) -> tuple[float, float]:
    """A few steps on random data of ``input_shape`` (the port's layout)."""
    model = {factory}()
    rng = np.random.default_rng(0)
    x0 = np.zeros(input_shape, np.float32)
    state = create_state(model, x0)
    logits = model.apply({{"params": state.params, "batch_stats": state.batch_stats}}, x0, train=False)
    batches = [
        (rng.standard_normal(input_shape).astype(np.float32), rng.integers(0, logits.shape[-1], input_shape[0]))
        for _ in range(steps)
    ]
    losses = []
    for step, (x, y) in enumerate(batches):
        state, loss = train_step(state, x, y, jax.random.key(step))
        losses.append(float(loss))
    return float(np.mean(losses)), float(np.mean([eval_step(state, x, y) for x, y in batches]))
'''


def training_example(style: str, module: str = "model", factory: str = "make") -> str:
    """Source of ``train_example.py`` for a port in ``style`` importing ``factory`` from
    ``module``; ``main(input_shape)`` runs a few steps on random data and returns
    ``(train loss, eval loss)``."""
    from parity.port._emit import _ruff_format

    template = _NNX if style == "nnx" else _LINEN
    return _ruff_format(template.format(module=module, factory=factory))
