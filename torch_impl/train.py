"""Training loops in PyTorch: the correct one and the seed's misplaced one.

Mirrors ``flax_impl/linen_train.py`` (Linen) and ``flax_impl/nnx_train.py`` (NNX): same
function names, same order. Batches are channels-first (NCHW / NCW): a ``batches(epoch)``
callable gives one epoch's ``(x, y)`` pairs in the shared seeded order, as numpy arrays (copied
to the device per step) or as tensors already there (:func:`device_batches`: on a GPU the
training set is copied once and each batch is gathered on the device).

``train_step`` does not touch the mode. Mode is the loop's job, and where the loop sets it is
the whole difference between :func:`fit` and :func:`fit_seed_bug`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parity.defaults import LEARNING_RATE, MOMENTUM
from parity.schedule import EvalSchedule

Batches = Callable[
    [int], Iterable[tuple[np.ndarray, np.ndarray]] | Iterable[tuple[torch.Tensor, torch.Tensor]]
]

OnEpoch = Callable[[dict], None]


def make_optimizer(
    model: nn.Module, lr: float = LEARNING_RATE, momentum: float = MOMENTUM
) -> torch.optim.Optimizer:
    """SGD with heavy-ball momentum, the same update as ``optax.sgd(lr, momentum)``."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy of ``(N, C)`` logits against ``(N,)`` integer labels."""
    return F.cross_entropy(logits, y)


def _tensor(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(a)
    return t.to(device, non_blocking=True) if t.device != device else t


def device_batches(
    x: np.ndarray, y: np.ndarray, orders: Callable[[int], Sequence[np.ndarray]], device: torch.device | str
) -> Batches:
    """``batches(epoch)`` over a training set that lives on ``device``.

    On a GPU, ``x`` (NCHW / NCW) and ``y`` are copied to the device once; ``orders(epoch)`` gives
    the epoch's batch index arrays (e.g. :func:`parity.data.batch_order`), copied in one transfer
    per epoch, and every batch is gathered on the device (``x[idx]``) instead of in numpy and
    copied per step. On the CPU there is no copy to save (``torch.from_numpy`` shares numpy's
    memory), and batches stay numpy-gathered: with equal values, torch-allocated batches gave
    losses that differ from the second step on in the 7th digit (oneDNN's float32 results depend
    on the buffer), and the CPU numbers are kept identical to the numpy-batched loops'.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return lambda epoch: ((x[idx], y[idx]) for idx in orders(epoch))
    x_dev, y_dev = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.from_numpy(np.stack(orders(epoch))).to(device)  # (steps, batch)
        return ((x_dev[i], y_dev[i]) for i in idx)

    return batches


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One SGD step on a batch ``x`` (NCHW / NCW) and labels ``y``; returns the loss (no sync).

    Runs in whatever mode the model is in: that is the caller's responsibility.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y.long())
    loss.backward()
    optimizer.step()
    return loss.detach()


def _run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    device: torch.device,
    schedule: EvalSchedule,
    evaluate_inside: Callable[[], None],
) -> list[float]:
    """One epoch of :func:`train_step`, calling ``evaluate_inside()`` where ``schedule`` says."""
    losses = []
    for x, y in batches:
        losses.append(train_step(model, optimizer, _tensor(x, device), _tensor(y, device)))
        if schedule.due_after_step():
            evaluate_inside()
    return torch.stack(losses).cpu().tolist()  # one device sync per epoch (plus evaluations)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """Test loss and accuracy on the whole set ``x`` (NCHW / NCW) in one batch.

    Sets ``model.eval()`` as its first line, like pytorch/examples' ``test()``, and, like the
    blog's ``test()``, does not restore the previous mode.
    """
    model.eval()
    device = torch.device(device)
    logits = model(_tensor(x, device))
    yt = _tensor(y, device).long()
    return loss_fn(logits, yt).item(), (logits.argmax(1) == yt).float().mean().item()


def probe(
    model: nn.Module, x: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """:func:`evaluate` that leaves every module's mode as it found it: the study's measurement
    at an epoch end where the loop itself did not evaluate (so the measurement leaks nothing)."""
    modes = {m: m.training for m in model.modules()}
    try:
        return evaluate(model, x, y, device)
    finally:
        for m, training in modes.items():
            m.training = training


def _epoch_end(
    epoch: int, losses: list[float], schedule: EvalSchedule, start: int, measure: Callable[[], tuple]
) -> dict:
    """The epoch's record: the loop's own evaluation if one ran after its last step, else
    ``measure()`` (a mode-preserving :func:`probe`); ``evals``: the loop's evaluations in it."""
    test = schedule.at_step() or measure()
    return _log(epoch, losses, test) | {"evals": schedule.since(start)}


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


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    device: torch.device | str = "cpu",
    on_epoch: OnEpoch | None = None,
    eval_every: int | str = "epoch",
) -> list[dict]:
    """The correct loop: ``model.train()`` at the start of every epoch and after every
    evaluation inside one; ``evaluate`` sets eval. ``eval_every``: see :class:`EvalSchedule`.

    Stops early, marking the epoch ``diverged``, when the train loss is not finite.
    """
    device = torch.device(device)
    schedule, history = EvalSchedule(eval_every, epochs), []

    def evaluate_inside() -> None:
        schedule.record(evaluate(model, *test_set, device=device))
        model.train()  # a mid-epoch evaluation must not leave its mode to the next step

    for epoch in range(epochs):
        start = schedule.step
        model.train()  # every epoch establishes its own mode
        losses = _run_epoch(model, optimizer, batches(epoch), device, schedule, evaluate_inside)
        if schedule.due_after_epoch(epoch):
            schedule.record(evaluate(model, *test_set, device=device))
        history.append(_epoch_end(epoch, losses, schedule, start, lambda: probe(model, *test_set, device)))
        if on_epoch:
            on_epoch(history[-1])
        if history[-1]["diverged"]:
            break
    return history


def fit_seed_bug(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    test_set: tuple[np.ndarray, np.ndarray],
    epochs: int,
    device: torch.device | str = "cpu",
    on_epoch: OnEpoch | None = None,
    eval_every: int | str = "epoch",
) -> list[dict]:
    """The blog's loop, kept as the "before" picture: ``model.train()`` once, outside the loop.

    ``evaluate`` (the blog's ``test()``) calls ``model.eval()`` and returns without restoring,
    so every step after the first evaluation trains in evaluation mode: with the default
    schedule, every epoch after epoch 0; with ``eval_every="end"``, none (the control).
    """
    device = torch.device(device)
    schedule, history = EvalSchedule(eval_every, epochs), []

    def evaluate_inside() -> None:
        schedule.record(evaluate(model, *test_set, device=device))  # leaves eval on

    model.train()  # once, outside the loop  <- the bug
    for epoch in range(epochs):
        start = schedule.step
        losses = _run_epoch(model, optimizer, batches(epoch), device, schedule, evaluate_inside)
        if schedule.due_after_epoch(epoch):
            schedule.record(evaluate(model, *test_set, device=device))  # leaves eval on
        history.append(_epoch_end(epoch, losses, schedule, start, lambda: probe(model, *test_set, device)))
        if on_epoch:
            on_epoch(history[-1])
        if history[-1]["diverged"]:
            break
    return history
