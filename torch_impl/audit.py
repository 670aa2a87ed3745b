"""Mode audit: which BatchNorm and Dropout modules actually ran in training mode.

Forward pre-hooks read ``module.training`` at call time. A *training-step pass* is a forward
pass of the root model with autograd enabled; passes under ``torch.no_grad()`` (evaluation)
are not counted. This measures the mode, it does not assume it from where ``train()`` was
called.
"""

from __future__ import annotations

import torch
from torch import nn

MODE_LAYERS: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def mode_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose behaviour depends on ``training``: every BatchNorm and Dropout."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MODE_LAYERS)}


class ModeAudit:
    """Record, per training-step forward pass of ``model``, the share of mode layers in train mode.

    Usage::

        audit = ModeAudit(model)
        ...train an epoch...
        audit.fraction()   # mean over the passes since the last reset(); 1.0 = all in train mode
        audit.reset()
        audit.remove()     # detach the hooks
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = mode_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no BatchNorm or Dropout layer to audit")
        self.passes: list[float] = []  # per counted pass: fraction of layers in train mode
        self.eval_layers: dict[str, int] = {}  # layer name -> passes in which it ran in eval mode
        self._current: list[tuple[str, bool]] | None = None
        self._handles = [
            model.register_forward_pre_hook(self._start),
            model.register_forward_hook(self._finish),
        ]
        for name, m in self.layers.items():
            self._handles.append(m.register_forward_pre_hook(self._layer_hook(name)))

    def _start(self, module: nn.Module, args: tuple) -> None:
        self._current = [] if torch.is_grad_enabled() else None

    def _layer_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if self._current is not None:
                self._current.append((name, module.training))

        return hook

    def _finish(self, module: nn.Module, args: tuple, output) -> None:
        if self._current is not None and self._current:
            self.passes.append(sum(t for _, t in self._current) / len(self._current))
            for name, training in self._current:
                if not training:
                    self.eval_layers[name] = self.eval_layers.get(name, 0) + 1
        self._current = None

    def fraction(self) -> float:
        """Mean train-mode share over the recorded passes (``nan`` if none were recorded)."""
        return sum(self.passes) / len(self.passes) if self.passes else float("nan")

    def reset(self) -> None:
        """Forget the recorded passes (e.g. at the end of each epoch)."""
        self.passes.clear()
        self.eval_layers.clear()

    def remove(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> ModeAudit:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
