"""Rule codes and the :class:`Finding` record that every part of the checker reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

#: rule code -> one-line description
RULES: dict[str, str] = {
    "MODE000": "file could not be read or parsed; nothing else is checked in it",
    "MODE001": "model left in eval mode inside a training loop (eval() reached from the loop "
    "is not undone by train() before the next training step)",
    "MODE002": "inference after load_state_dict()/torch.load() without eval(), in a file "
    "with no training step",
    "MODE003": "dropout that ignores the module's mode: F.dropout without training=self.training "
    "in a Module.forward, F.batch_norm(..., training=True) hard-coded, or nn.Dropout(p)(x) built in forward",
    "MODE009": "analysis incomplete (statement budget, call depth or recursion limit reached); "
    "findings in this file may be missing",
}

#: codes that are always reported, whatever ``select`` says: the file was not fully checked
ALWAYS_REPORTED = frozenset({"MODE000", "MODE009"})


class FixHint(NamedTuple):
    """Where ``--fix`` may put a ``train()`` call for a MODE001 finding, all in the finding's
    file: the training loop's line, the model's expression there, the training forward's line."""

    loop_line: int
    model: str
    forward_line: int


@dataclass(frozen=True, order=True)
class Finding:
    """One reported problem; ``line`` and ``col`` are 1-based."""

    path: str
    line: int
    col: int
    code: str
    message: str
    hint: FixHint | None = field(default=None, compare=False, repr=False)

    def format(self) -> str:
        """Return the ``path:line:col: CODE message`` line printed by the CLI."""
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"


def selected(code: str, select: tuple[str, ...] | list[str] | None) -> bool:
    """Whether ``code`` is reported under ``select`` (code prefixes; None or empty = all)."""
    return code in ALWAYS_REPORTED or not select or any(code.startswith(s) for s in select)
