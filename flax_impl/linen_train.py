"""Training loops in Flax Linen: state in, state out; the mode is an argument.

Mirrors ``torch_impl/train.py``. Inputs are channels-last (NHWC / NWC) numpy or jax arrays; a
``batches(epoch)`` callable gives one epoch's ``(x, y)`` pairs in the shared seeded order.

* :class:`TrainState` carries ``batch_stats`` next to ``params`` and the optimizer state.
* :func:`train_step` applies with ``train=True, mutable=['batch_stats']`` and stores the new
  statistics in the returned state. Its static ``train`` argument exists so that
  ``linen_bug_emulated`` can write the seed's schedule explicitly (``train=False`` after
  epoch 0): the bug, written as a function.
* :func:`eval_step` applies with ``train=False``.
* :func:`train_epoch_scan` runs a whole epoch as one ``lax.scan`` with the data on the device:
  much faster on a GPU, much slower on a small CPU (see BENCHMARKS.md), so callers choose per
  backend.
* :func:`fit_seeds` / :func:`fit_bug_emulated_seeds` are :func:`fit` / :func:`fit_bug_emulated`
  for many seeds at once: one :func:`train_epoch_scan_seeds` call (scan, ``vmap`` over seeds)
  per epoch, the same batches and dropout keys per seed as the one-seed loops.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from flax_impl.audit import record_linen_modes, train_fraction
from parity.defaults import LEARNING_RATE, MOMENTUM
from parity.schedule import EvalSchedule

Batches = Callable[[int], Iterable[tuple[np.ndarray, np.ndarray]]]
OnEpoch = Callable[[dict], None]


class TrainState(train_state.TrainState):
    """``flax.training.train_state.TrainState`` plus the BatchNorm running statistics."""

    batch_stats: Any


@functools.cache
def make_optimizer(lr: float = LEARNING_RATE, momentum: float = MOMENTUM) -> optax.GradientTransformation:
    """SGD with heavy-ball momentum, the same update as ``torch.optim.SGD(lr, momentum)``.

    Cached: the transformation is a static field of :class:`TrainState` (and of
    ``nnx.Optimizer``), so a fresh object per seed would make ``jit`` recompile every step
    function per seed; one object per ``(lr, momentum)`` keeps the compilation cache warm.
    """
    return optax.sgd(lr, momentum=momentum)


def create_train_state(model, variables: dict, tx: optax.GradientTransformation) -> TrainState:
    """A :class:`TrainState` from a Linen module and its ``{'params', 'batch_stats'}`` (a model
    without BatchNorm, e.g. a ViT, has no ``batch_stats``: the state holds an empty dict)."""
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx, batch_stats=variables.get("batch_stats", {})
    )


def create_seed_states(model, variables: list[dict], tx: optax.GradientTransformation) -> TrainState:
    """One :class:`TrainState` whose every leaf has a leading seed axis, for
    :func:`train_epoch_scan_seeds`. ``variables`` holds one ``{'params', 'batch_stats'}`` per seed."""
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *variables)
    return jax.vmap(lambda v: create_train_state(model, v, tx))(stacked)


def loss_fn(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``(N, C)`` logits against ``(N,)`` integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train_step(
    state: TrainState, batch: tuple[jax.Array, jax.Array], rng: jax.Array, train: bool = True
) -> tuple[TrainState, dict]:
    x, y = batch

    def compute_loss(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        with record_linen_modes() as modes:
            if train:
                logits, updates = state.apply_fn(
                    variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng}
                )
            else:  # eval mode: running statistics are read, not updated
                logits, updates = (
                    state.apply_fn(variables, x, train=False),
                    {"batch_stats": state.batch_stats},
                )
        return loss_fn(logits, y), (updates.get("batch_stats", {}), train_fraction(modes))

    (loss, (batch_stats, frac)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    return state, {"loss": loss, "train_mode": frac}


#: ``train_step(state, (x, y), rng, train=True) -> (state, {'loss', 'train_mode'})``, jitted.
train_step = jax.jit(_train_step, static_argnames="train")


@jax.jit
def eval_step(state: TrainState, batch: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Mean loss and accuracy of a batch with ``train=False`` (running statistics, no dropout)."""
    x, y = batch
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    return loss_fn(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)


def _train_epoch_scan(
    state: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array, rng: jax.Array, train: bool = True
) -> tuple[TrainState, dict]:
    def body(state, step):
        i, b = step
        return _train_step(state, (x[b], y[b]), jax.random.fold_in(rng, i), train)

    return jax.lax.scan(body, state, (jnp.arange(idx.shape[0]), idx))


#: ``train_epoch_scan(state, x, y, idx, rng, train=True) -> (state, metrics)``: one epoch as a
#: ``lax.scan``. ``idx`` is ``(steps, batch)`` indices into device arrays ``x`` (NHWC / NWC) and
#: ``y``; step ``i`` uses dropout key ``fold_in(rng, i)``, exactly as :func:`fit` does. Metrics
#: are stacked along axis 0.
train_epoch_scan = jax.jit(_train_epoch_scan, static_argnames="train")


@partial(jax.jit, static_argnames="train")
def train_epoch_scan_seeds(
    states: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array, rngs: jax.Array, train: bool = True
) -> tuple[TrainState, dict]:
    """:func:`train_epoch_scan` ``vmap``-ed over seeds: ``states``, ``idx`` ``(seeds, steps, batch)``
    and ``rngs`` carry a leading seed axis (see :func:`create_seed_states`); the data ``x``, ``y``
    is shared. Possible because the whole training state is a value."""
    return jax.vmap(partial(_train_epoch_scan, train=train), in_axes=(0, None, None, 0, 0))(
        states, x, y, idx, rngs
    )


#: :func:`eval_step` ``vmap``-ed over the seed axis of ``states``; the batch is shared.
#: ``eval_step_seeds(states, (x, y)) -> (loss (seeds,), accuracy (seeds,))``.
eval_step_seeds = jax.jit(jax.vmap(eval_step, in_axes=(0, None)))


def evaluate(state: TrainState, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Test loss and accuracy on the whole set ``x`` (NHWC / NWC) in one batch."""
    loss, acc = eval_step(state, (jnp.asarray(x), jnp.asarray(y)))
    return float(loss), float(acc)


def _run_epoch(
    state: TrainState,
    batches: Iterable,
    rng: jax.Array,
    train_mode: Callable[[], bool],
    schedule: EvalSchedule,
    test_set: tuple[np.ndarray, np.ndarray],
) -> tuple[TrainState, list[float], float]:
    """One epoch of :func:`train_step`; each step's mode is ``train_mode()`` at that step, and
    the state is evaluated where ``schedule`` says (evaluation is pure: it changes nothing)."""
    metrics = []
    for i, (x, y) in enumerate(batches):
        state, m = train_step(state, (x, y), jax.random.fold_in(rng, i), train=train_mode())
        metrics.append(m)
        if schedule.due_after_step():
            schedule.record(evaluate(state, *test_set))
    stacked = jax.device_get(metrics)  # one device sync per epoch (plus evaluations)
    return state, [float(m["loss"]) for m in stacked], float(np.mean([m["train_mode"] for m in stacked]))


def _log(epoch: int, losses: list[float], test: tuple[float, float]) -> dict:
    """One epoch's record: the same keys in every framework's loops."""
    mean = float(np.mean(losses))
    return {
        "epoch": epoch,
        "train_loss": mean,
        "step_losses": losses,
        "test_loss": test[0],
        "test_acc": test[1],
        "diverged": not math.isfinite(mean),
    }


def _epoch_end(
    epoch: int, losses: list[float], schedule: EvalSchedule, start: int, measure: Callable[[], tuple]
) -> dict:
    """The epoch's record: the loop's own evaluation if one ran after its last step, else
    ``measure()`` (an evaluation that changes nothing); ``evals``: the loop's evaluations in it."""
    test = schedule.at_step() or measure()
    return _log(epoch, losses, test) | {"evals": schedule.since(start)}


def _fit(
    state: TrainState,
    batches: Batches,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    rng: jax.Array,
    train_mode: Callable[[EvalSchedule], bool],
    on_epoch: OnEpoch | None,
    eval_every: int | str,
) -> tuple[TrainState, list[dict]]:
    schedule, history = EvalSchedule(eval_every, epochs), []
    for epoch in range(epochs):
        start = schedule.step
        state, losses, frac = _run_epoch(
            state,
            batches(epoch),
            jax.random.fold_in(rng, epoch),
            lambda: train_mode(schedule),
            schedule,
            test_set,
        )
        if schedule.due_after_epoch(epoch):
            schedule.record(evaluate(state, *test_set))
        measure = functools.partial(evaluate, state, *test_set)
        history.append(_epoch_end(epoch, losses, schedule, start, measure) | {"train_mode": frac})
        if on_epoch:
            on_epoch(history[-1])
        if history[-1]["diverged"]:
            break
    return state, history


def fit(
    state: TrainState,
    batches: Batches,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    rng: jax.Array,
    on_epoch: OnEpoch | None = None,
    eval_every: int | str = "epoch",
) -> tuple[TrainState, list[dict]]:
    """The Linen loop: every training step is called with ``train=True``; evaluation is a
    different function. There is no mode left behind for the next step to inherit, whatever
    the evaluation schedule (``eval_every``: see :class:`EvalSchedule`)."""
    return _fit(state, batches, test_set, epochs, rng, lambda schedule: True, on_epoch, eval_every)


def fit_bug_emulated(
    state: TrainState,
    batches: Batches,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    rng: jax.Array,
    on_epoch: OnEpoch | None = None,
    eval_every: int | str = "epoch",
) -> tuple[TrainState, list[dict]]:
    """The seed's schedule written out explicitly: ``train=True`` until the loop's first
    evaluation, ``train=False`` in every training step after it (default schedule: epoch 0 in
    train mode, every later epoch in eval mode; ``eval_every="end"``: train mode throughout). In
    Linen the bug has to be *written*; this is what ``torch_impl.train.fit_seed_bug`` does
    without saying so."""
    return _fit(
        state, batches, test_set, epochs, rng, lambda schedule: not schedule.points, on_epoch, eval_every
    )


#: ``orders(epoch) -> (seeds, steps, batch)`` integer indices into the shared training set
SeedOrders = Callable[[int], np.ndarray]
#: ``on_epoch(seed_index, record)``, called for every seed still training, in seed order
OnSeedEpoch = Callable[[int, dict], None]


def _seed_records(
    epoch: int, metrics: dict, test: tuple[np.ndarray, np.ndarray], i: int, evaluated_at: int | None
) -> dict:
    """Seed ``i``'s :func:`_log` record of one :func:`train_epoch_scan_seeds` epoch (host arrays);
    ``evaluated_at``: the step count of the loop's evaluation after this epoch, if it ran one."""
    losses = [float(v) for v in metrics["loss"][i]]
    loss, acc = float(test[0][i]), float(test[1][i])
    record = _log(epoch, losses, (loss, acc))
    evals = [] if evaluated_at is None else [{"step": evaluated_at, "test_loss": loss, "test_acc": acc}]
    return record | {"train_mode": float(np.mean(metrics["train_mode"][i])), "evals": evals}


def _fit_seeds(
    states: TrainState,
    train_set: tuple[np.ndarray, np.ndarray],
    orders: SeedOrders,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    rngs: jax.Array,
    train_mode: Callable[[EvalSchedule], bool],
    on_epoch: OnSeedEpoch | None,
    eval_every: int | str,
) -> tuple[TrainState, list[list[dict]]]:
    schedule = EvalSchedule(eval_every, epochs)
    if isinstance(schedule.every, int):
        raise ValueError("eval_every as a step count needs the one-seed loop (fit / fit_bug_emulated)")
    x, y = jax.device_put(train_set[0]), jax.device_put(train_set[1])
    test = (jax.device_put(test_set[0]), jax.device_put(test_set[1]))
    histories: list[list[dict]] = [[] for _ in range(rngs.shape[0])]
    active = set(range(rngs.shape[0]))
    for epoch in range(epochs):
        epoch_rngs = jax.vmap(lambda k, e=epoch: jax.random.fold_in(k, e))(rngs)
        idx = jnp.asarray(orders(epoch))
        train = train_mode(schedule)
        states, metrics = train_epoch_scan_seeds(states, x, y, idx, epoch_rngs, train=train)
        metrics, scores = jax.device_get((metrics, eval_step_seeds(states, test)))  # one sync
        schedule.step += idx.shape[1]
        evaluated_at = None
        if schedule.due_after_epoch(epoch):  # the same evaluation for every seed: record it once
            schedule.points.append({"step": schedule.step})
            evaluated_at = schedule.step
        for i in sorted(active):
            histories[i].append(_seed_records(epoch, metrics, scores, i, evaluated_at))
            if on_epoch:
                on_epoch(i, histories[i][-1])
            if histories[i][-1]["diverged"]:
                active.discard(i)  # later epochs are not recorded; the other seeds go on
        if not active:
            break
    return states, histories


def fit_seeds(
    states: TrainState,
    train_set: tuple[np.ndarray, np.ndarray],
    orders: SeedOrders,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    rngs: jax.Array,
    on_epoch: OnSeedEpoch | None = None,
    eval_every: int | str = "epoch",
) -> tuple[TrainState, list[list[dict]]]:
    """:func:`fit` for every seed of ``states`` at once (see :func:`create_seed_states`).

    ``train_set`` is ``(x, y)`` with ``x`` channels-last (NHWC / NWC), copied to the device once;
    ``orders(epoch)`` gives each seed's batch indices ``(seeds, steps, batch)``; ``rngs`` holds
    one dropout key per seed, ``(seeds,)``. Seed ``s``'s step ``i`` of epoch ``e`` uses
    ``fold_in(fold_in(rngs[s], e), i)``, as :func:`fit` does with ``rng = rngs[s]``. Returns the
    states and one history per seed; a seed whose epoch loss is not finite stops being recorded
    after that epoch (its history ends with ``diverged``), as in :func:`fit`. ``eval_every``:
    ``"epoch"`` or ``"end"`` (one scan per epoch cannot stop inside an epoch; a step count
    raises ``ValueError``).
    """
    return _fit_seeds(
        states, train_set, orders, test_set, epochs, rngs, lambda schedule: True, on_epoch, eval_every
    )


def fit_bug_emulated_seeds(
    states: TrainState,
    train_set: tuple[np.ndarray, np.ndarray],
    orders: SeedOrders,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    rngs: jax.Array,
    on_epoch: OnSeedEpoch | None = None,
    eval_every: int | str = "epoch",
) -> tuple[TrainState, list[list[dict]]]:
    """:func:`fit_bug_emulated` for every seed at once (arguments as :func:`fit_seeds`)."""
    return _fit_seeds(
        states,
        train_set,
        orders,
        test_set,
        epochs,
        rngs,
        lambda schedule: not schedule.points,
        on_epoch,
        eval_every,
    )
