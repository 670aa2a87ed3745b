"""When a training loop evaluates inside training: one schedule for the torch and Flax loops.

Framework-free, so ``torch_impl.train`` and ``flax_impl.linen_train`` (and ``nnx_train``) both
import this one class instead of each keeping a copy.
"""

from __future__ import annotations


class EvalSchedule:
    """When a loop evaluates inside training, and what each evaluation measured.

    ``every``: ``"epoch"`` (after each epoch's last step: the default, as the blog does),
    an ``int`` N (after every N-th training step, counted over the whole run), or ``"end"``
    (only after the last epoch: the control, where no evaluation can leak a mode into training).
    ``points`` holds one ``{'step', 'test_loss', 'test_acc'}`` per evaluation, ``step`` being the
    number of training steps done before it.
    """

    def __init__(self, every: int | str, epochs: int) -> None:
        if not (every in ("epoch", "end") or (isinstance(every, int) and every >= 1)):
            raise ValueError(f"eval_every must be 'epoch', 'end' or a step count >= 1, got {every!r}")
        self.every, self.epochs, self.step = every, epochs, 0
        self.points: list[dict] = []

    def due_after_step(self) -> bool:
        """Count one training step; whether the loop evaluates now (integer schedules only)."""
        self.step += 1
        return isinstance(self.every, int) and self.step % self.every == 0

    def due_after_epoch(self, epoch: int) -> bool:
        """Whether the loop evaluates after ``epoch`` (0-based) has finished."""
        return self.every == "epoch" or (self.every == "end" and epoch == self.epochs - 1)

    def record(self, test: tuple[float, float]) -> None:
        """Keep what the evaluation after the current step measured."""
        self.points.append({"step": self.step, "test_loss": test[0], "test_acc": test[1]})

    def at_step(self) -> tuple[float, float] | None:
        """``(loss, accuracy)`` of an evaluation after the current step, if one ran."""
        last = self.points[-1] if self.points else None
        return (last["test_loss"], last["test_acc"]) if last and last["step"] == self.step else None

    def since(self, step: int) -> list[dict]:
        """The evaluations after more than ``step`` training steps."""
        return [p for p in self.points if p["step"] > step]
