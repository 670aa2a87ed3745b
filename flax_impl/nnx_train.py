"""Training loops in Flax NNX: the seed's loop with ``.train()`` / ``.eval()``, and ``nnx.view``.

Mirrors ``torch_impl/train.py``. NNX stores the mode on the modules again, so the seed's
misplacement reproduces exactly: :func:`fit_seed_bug` calls ``model.train()`` once, and
:func:`evaluate` leaves ``model.eval()`` behind. :func:`fit_view` takes two views of the same
weights, one fixed in train mode and one fixed in eval mode (``nnx.view``), and cannot have the
bug: neither view's mode is ever changed.

Inputs are channels-last (NHWC / NWC); ``batches(epoch)`` gives the shared seeded order.
Dropout randomness comes from the ``rngs`` the model was built with.

The loops step with NNX's functional API (:func:`split_train_step`): ``nnx.split`` once per
epoch, a plain ``jax.jit`` step on ``(graphdef, state)``, ``nnx.update`` after the epoch. It
computes exactly what :func:`train_step` (``nnx.jit``) computes, without ``nnx.jit``'s graph
traversal of the model and optimizer on every call (about 1 ms of host time per step on the
2-core CPU dev box; docs/STUDY.md). The mode is part of the ``graphdef``, so a mode change
still re-traces and the audit is still read from the modules at trace time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_impl import linen_train as linen_train
from flax_impl.audit import nnx_modes, train_fraction
from flax_impl.linen_train import _epoch_end, loss_fn
from parity.defaults import LEARNING_RATE, MOMENTUM
from parity.schedule import EvalSchedule

Batches = Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]]
OnEpoch = Callable[[dict], None]


def make_optimizer(model: nnx.Module, lr: float = LEARNING_RATE, momentum: float = MOMENTUM) -> nnx.Optimizer:
    """SGD with heavy-ball momentum over the model's ``nnx.Param`` s, with the cached optax
    transformation of :func:`flax_impl.linen_train.make_optimizer` (static under ``nnx.jit``)."""
    return nnx.Optimizer(model, linen_train.make_optimizer(lr, momentum), wrt=nnx.Param)


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> dict:
    """One step in whatever mode ``model`` is in (the caller's responsibility, as in torch).

    Returns ``{'loss', 'train_mode'}``; ``train_mode`` is read from the modules' attributes at
    call time (they are static under ``nnx.jit``, so a mode change re-traces).
    """
    modes = nnx_modes(model)
    loss, grads = nnx.value_and_grad(lambda m: loss_fn(m(x), y))(model)
    optimizer.update(model, grads)
    return {"loss": loss, "train_mode": train_fraction(modes)}


def _split_step(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, y: jax.Array) -> tuple:
    model, optimizer = nnx.merge(graphdef, state)
    modes = nnx_modes(model)  # static: read while tracing, from the merged modules
    loss, grads = nnx.value_and_grad(lambda m: loss_fn(m(x), y))(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {"loss": loss, "train_mode": train_fraction(modes)}


#: :func:`train_step` on ``nnx.split((model, optimizer))``:
#: ``split_train_step(graphdef, state, x, y) -> (state, {'loss', 'train_mode'})``, jitted. The
#: ``graphdef`` carries the modules' modes, so a mode change compiles a new step.
split_train_step = jax.jit(_split_step)


@nnx.jit
def eval_step(model: nnx.Module, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean loss and accuracy of a batch in whatever mode ``model`` is in."""
    logits = model(x)
    return loss_fn(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)


def evaluate(model: nnx.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test loss and accuracy; sets ``model.eval()`` first and, like the blog's ``test()``,
    does not restore the previous mode."""
    model.eval()
    loss, acc = eval_step(model, jnp.asarray(x), jnp.asarray(y))
    return float(loss), float(acc)


def mode_view(model: nnx.Module, train: bool) -> nnx.Module:
    """``nnx.view`` of ``model`` fixed in train or eval mode: the same weights, its own mode
    flags, for the mode attributes the model's layers have (a ViT has no BatchNorm)."""
    flags = {"deterministic": not train, "use_running_average": not train}
    present = {k for _, m in nnx.iter_modules(model) for k in flags if hasattr(m, k)}
    return nnx.view(model, **{k: v for k, v in flags.items() if k in present})


def probe(model: nnx.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """:func:`evaluate` on an eval-mode view: ``model``'s own mode is left as it was, so the
    study's measurement at an epoch end where the loop did not evaluate leaks nothing."""
    loss, acc = eval_step(mode_view(model, train=False), jnp.asarray(x), jnp.asarray(y))
    return float(loss), float(acc)


def _run_epoch(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    batches: Iterable,
    schedule: EvalSchedule,
    evaluate_inside: Callable[[], None],
) -> tuple[list[float], float]:
    """One epoch of :func:`split_train_step`, calling ``evaluate_inside()`` where ``schedule``
    says (on the updated modules, then split again: the evaluation may change the mode, which
    lives in the ``graphdef``). ``model`` and ``optimizer`` hold the new state after it, also
    when a step raises (e.g. an interrupt): the state of the last finished step."""
    graphdef, state = nnx.split((model, optimizer))
    metrics = []
    try:
        for x, y in batches:
            state, m = split_train_step(graphdef, state, x, y)
            metrics.append(m)
            if schedule.due_after_step():
                nnx.update((model, optimizer), state)
                evaluate_inside()
                graphdef, state = nnx.split((model, optimizer))
    finally:
        nnx.update((model, optimizer), state)
    stacked = jax.device_get(metrics)  # one device sync per epoch (plus evaluations)
    return [float(m["loss"]) for m in stacked], float(np.mean([m["train_mode"] for m in stacked]))


def fit_seed_bug(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    batches: Batches,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    on_epoch: OnEpoch | None = None,
    eval_every: int | str = "epoch",
) -> list[dict]:
    """The blog's loop in NNX: ``model.train()`` once; ``evaluate`` leaves ``eval()`` on, so
    every step after the loop's first evaluation trains in eval mode (``eval_every``: see
    :class:`parity.schedule.EvalSchedule`)."""
    schedule, history = EvalSchedule(eval_every, epochs), []

    def evaluate_inside() -> None:
        schedule.record(evaluate(model, *test_set))  # leaves eval on

    model.train()  # once, outside the loop  <- the bug
    for epoch in range(epochs):
        start = schedule.step
        losses, frac = _run_epoch(model, optimizer, batches(epoch), schedule, evaluate_inside)
        if schedule.due_after_epoch(epoch):
            schedule.record(evaluate(model, *test_set))  # leaves eval on
        measure = functools.partial(probe, model, *test_set)
        history.append(_epoch_end(epoch, losses, schedule, start, measure) | {"train_mode": frac})
        if on_epoch:
            on_epoch(history[-1])
        if history[-1]["diverged"]:
            break
    return history


def fit_view(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    batches: Batches,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    on_epoch: OnEpoch | None = None,
    eval_every: int | str = "epoch",
) -> list[dict]:
    """Two views of the same weights, each with a fixed mode; nothing is ever switched, whatever
    the evaluation schedule (``eval_every``: see :class:`parity.schedule.EvalSchedule`)."""
    train_model, eval_model = mode_view(model, train=True), mode_view(model, train=False)
    schedule, history = EvalSchedule(eval_every, epochs), []

    def evaluate_view() -> tuple[float, float]:
        loss, acc = eval_step(eval_model, *map(jnp.asarray, test_set))
        return float(loss), float(acc)

    def evaluate_inside() -> None:
        schedule.record(evaluate_view())

    for epoch in range(epochs):
        start = schedule.step
        losses, frac = _run_epoch(train_model, optimizer, batches(epoch), schedule, evaluate_inside)
        if schedule.due_after_epoch(epoch):
            schedule.record(evaluate_view())
        history.append(_epoch_end(epoch, losses, schedule, start, evaluate_view) | {"train_mode": frac})
        if on_epoch:
            on_epoch(history[-1])
        if history[-1]["diverged"]:
            break
    return history
