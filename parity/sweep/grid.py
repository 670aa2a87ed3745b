"""The sweep's grid: which cells (model x evaluation schedule) it trains, and how each is trained.

Every cell is one :class:`parity.study.StudyConfig`: the same seeds, epochs, variants and
optimiser for every cell, only the model (and its dataset) and ``eval_every`` change.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from parity.defaults import LEARNING_RATE
from parity.errors import ParityError
from parity.registry import STUDY_MODEL_DATASET
from parity.study.config import StudyConfig


class SweepError(ParityError, ValueError):
    """A sweep that cannot run as asked (an empty or repeated axis, an unknown model)."""


#: variants the sweep trains unless told otherwise: the seed's bug in torch and in NNX, and the
#: reference both are paired with; a subset of the six so the default grid fits the CPU budget
#: (docs/STUDY.md, "The sweep"); ``--variants`` adds the others
SWEEP_VARIANTS: tuple[str, ...] = ("torch_correct", "torch_seed_bug", "nnx_seed_bug")


@dataclass(frozen=True)
class SweepConfig:
    """A grid of ``models`` x ``schedules`` (``eval_every`` values), each cell a study of
    ``seeds`` seeds x ``epochs`` epochs of ``variants`` on the first ``train_subset`` training
    examples (``None``: all). ``device``/``precision``/``linen_path`` as in ``StudyConfig``."""

    models: tuple[str, ...] = ("signal1d", "resnet20_1d", "vit_tiny_1d", "resnet20")
    schedules: tuple[int | str, ...] = ("epoch", 10, "end")
    seeds: int = 4
    epochs: int = 6
    variants: tuple[str, ...] = SWEEP_VARIANTS
    batch_size: int = 128
    lr: float = LEARNING_RATE
    train_subset: int | None = None
    device: str = "auto"
    precision: str = "strict"
    linen_path: str = "auto"

    def cells(self) -> list[tuple[str, int | str]]:
        """``(model, eval_every)`` per cell, model-major."""
        return [(m, e) for m in self.models for e in self.schedules]

    def study(self, model: str, eval_every: int | str) -> StudyConfig:
        """The :class:`StudyConfig` of one cell."""
        return StudyConfig(
            dataset=STUDY_MODEL_DATASET.get(model, "?"),
            model=model,
            eval_every=eval_every,
            seeds=self.seeds,
            epochs=self.epochs,
            variants=self.variants,
            batch_size=self.batch_size,
            lr=self.lr,
            train_subset=self.train_subset,
            device=self.device,
            precision=self.precision,
            linen_path=self.linen_path,
        )

    def validate(self) -> None:
        """Raise ``ValueError`` for an empty or repeated axis or any bad cell (``StudyConfig``'s checks)."""
        for name in ("models", "schedules"):
            axis = getattr(self, name)
            if not axis:
                raise SweepError(f"the sweep needs at least one of {name}")
            if len(set(axis)) != len(axis):
                raise SweepError(f"{name} repeat: {', '.join(map(str, axis))}")
        if "torch_correct" not in self.variants:
            raise SweepError("the sweep pairs every variant with torch_correct: include it")
        for model, every in self.cells():
            if model not in STUDY_MODEL_DATASET:
                raise SweepError(f"unknown model {model!r}; choose from {', '.join(STUDY_MODEL_DATASET)}")
            self.study(model, every).validate()
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise SweepError(f"lr must be a positive number, got {self.lr}")

    def to_dict(self) -> dict:
        """JSON-ready configuration."""
        d = asdict(self)
        return d | {
            "models": list(self.models),
            "schedules": list(self.schedules),
            "variants": list(self.variants),
        }


#: ``parity sweep --quick``: the default CNN, the default schedule and its control, 3 seeds x 4
#: epochs on the first 2048 training examples: a first look well under 3 minutes of CPU time on
#: the 2-core dev box (docs/STUDY.md, "The sweep")
QUICK = SweepConfig(models=("signal1d",), schedules=("epoch", "end"), seeds=3, epochs=4, train_subset=2048)


def cell_id(model: str, eval_every: int | str) -> str:
    """The cell's file stem, e.g. ``resnet20_1d-eval-epoch`` or ``signal1d-eval-10``."""
    return f"{model}-eval-{eval_every}"


def with_overrides(config: SweepConfig, **changes) -> SweepConfig:
    """``config`` with the non-``None`` ``changes`` applied."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})
