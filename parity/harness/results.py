"""The rows and sections ``parity check`` collects: a :class:`Check` per value judged, a
:class:`Case` per model x framework x precision, a :class:`PolicyResult` per precision policy.
Plain data, no framework: every harness module may import it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from parity.errors import ParityError


@dataclass(frozen=True)
class Check:
    """One row of ``parity check``: ``passed`` is ``value <= tolerance``."""

    model: str
    framework: str
    check: str
    value: float
    tolerance: float
    passed: bool

    @classmethod
    def judged(cls, model: str, framework: str, name: str, value: float, tol: float) -> Check:
        """The row of ``value`` against ``tol`` (``passed`` when ``value <= tol``)."""
        return cls(model, framework, name, float(value), float(tol), bool(value <= tol))

    def as_dict(self) -> dict:
        """The JSON form: ``{"model", "framework", "check", "value", "tolerance", "passed"}``."""
        return asdict(self)


@dataclass(frozen=True)
class Case:
    """One model x framework under one precision policy, with that policy's tolerances."""

    model: str
    framework: str
    precision: str
    device: str
    tols: dict


@dataclass
class PolicyResult:
    """What one precision policy produced: check rows, JSON sections and plot inputs."""

    checks: list[Check] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    trajectory: list[dict] = field(default_factory=list)
    plot_layers: list[tuple] = field(default_factory=list)
    plot_traj: list[tuple] = field(default_factory=list)

    def extend(self, other: PolicyResult) -> None:
        """Append ``other``'s rows to this one's (checks included)."""
        for name in ("checks", "layers", "trajectory", "plot_layers", "plot_traj"):
            getattr(self, name).extend(getattr(other, name))


@dataclass(frozen=True)
class CaseInput:
    """What the ``--localize`` and ``--trajectory`` sections of one :class:`Case` run on:
    ``make_pair() -> ModelPair`` (a pair whose weights every section starts from), the checked
    batch ``x`` / ``y`` (torch layout), the trajectory's ``(x, y)`` batches, and the reports the
    foundation rows already computed (``{'layers_train': ..., 'gradients_train': ...}``)."""

    case: Case
    make_pair: Callable[[], Any]
    x: Any
    y: Any
    batches: list
    reports: dict = field(default_factory=dict)


class CheckError(ParityError, ValueError):
    """A refused ``parity check`` setting (an option, an output path, an input): exit 2."""


class ModelsError(ParityError):
    """The models to check do not build, convert or run (one line naming module and key): exit 1."""

    exit_code = 1
