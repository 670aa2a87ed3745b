"""What a misplacement study trains: the variants, the configuration and its validation.

Framework-free: :class:`StudyConfig` is built and checked before torch or jax is imported.
The trainers are in :mod:`parity.study.runners`, the driver in :mod:`parity.study.driver`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from parity.defaults import LEARNING_RATE, MOMENTUM
from parity.errors import ParityError
from parity.registry import DATASET_MODEL, STUDY_MODEL_DATASET


class StudyError(ParityError, ValueError):
    """A study that cannot run as asked (bad configuration, an output path in the way)."""


#: variant -> (framework, correct?, one-line description)
VARIANTS: dict[str, tuple[str, bool, str]] = {
    "torch_correct": ("torch", True, "model.train() at the start of every epoch; evaluate() sets eval"),
    "torch_seed_bug": (
        "torch",
        False,
        "the blog's loop: model.train() once before the epoch loop; test() sets eval and never restores",
    ),
    "linen": ("linen", True, "train=True passed to every training step; eval is another function"),
    "linen_bug_emulated": (
        "linen",
        False,
        "the seed's schedule written explicitly: train=False in training steps after epoch 1",
    ),
    "nnx_seed_bug": ("nnx", False, "the blog's loop in NNX: model.train() once; evaluate() leaves eval()"),
    "nnx_view": ("nnx", True, "nnx.view train and eval views of the same weights; nothing switched"),
}
VARIANT_NAMES: tuple[str, ...] = tuple(VARIANTS)

#: dataset -> architecture name in torch_impl.models / flax_impl.*_models
STUDY_DATASETS: tuple[str, ...] = tuple(DATASET_MODEL)
#: every architecture ``--model`` trains (the default for a dataset first; see parity.study.models)
STUDY_MODELS: tuple[str, ...] = tuple(STUDY_MODEL_DATASET)
#: ``--eval-every`` words: after every epoch (the default, as the blog), or only at the end
EVAL_SCHEDULES: tuple[str, ...] = ("epoch", "end")

#: ``--quick``: a first look (106-116 s on the 2-core AVX2 dev box, docs/STUDY.md)
QUICK = {"seeds": 3, "epochs": 10}

#: Linen execution paths: a Python loop of jitted steps (one seed at a time), or one
#: ``lax.scan`` epoch ``vmap``-ed over all seeds at once. ``auto``: loop on CPU, vmap on GPU.
LINEN_PATHS = ("auto", "loop", "vmap")

#: smallest batch the study trains with, in every framework: BatchNorm's batch statistics need
#: two examples (torch raises "Expected more than 1 value per channel" for one)
MIN_BATCH_SIZE = 2

#: torch intra-op threads on CPU unless configured: these models are too small for intra-op
#: parallelism to pay, and OpenMP threads waiting at barriers collapse when the cores are shared
#: (measured on the loaded 2-core dev box: 0.31 s/epoch with 1 thread, 1.7-11.5 s with 2; numbers
#: in docs/STUDY.md).
CPU_TORCH_THREADS = 1


@dataclass(frozen=True)
class StudyConfig:
    """What to train. Defaults are the full study (``parity study``); see :data:`QUICK`.

    ``model`` is one of :data:`STUDY_MODELS` trained on ``dataset`` (``None``: the dataset's own,
    ``signal1d`` / ``digits``). ``eval_every``: when the loops evaluate inside training,
    ``"epoch"``, ``"end"`` or a step count (:class:`parity.schedule.EvalSchedule`).
    ``model_config`` is passed to every framework's model builder (``channels``, ``hidden``,
    ``dropout``); empty means the architecture's defaults. ``train_subset`` keeps only the first
    N training examples (smoke tests). Seeds are ``0 .. seeds-1``. ``torch_threads``: torch's
    intra-op threads during the study (restored after); ``None`` = 1 on CPU (see
    :data:`CPU_TORCH_THREADS`), torch's own setting on a GPU. ``devices``: how many devices
    (GPUs, or CPU worker processes / simulated jax devices) the seeds are spread over
    (:mod:`parity.study.devices`); the numbers are those of ``devices=1``.
    """

    dataset: str = "mnist1d"
    seeds: int = 8
    epochs: int = 30
    lr: float = LEARNING_RATE
    momentum: float = MOMENTUM
    batch_size: int = 128
    variants: tuple[str, ...] = VARIANT_NAMES
    device: str = "auto"
    precision: str = "strict"
    linen_path: str = "auto"
    model_config: dict = field(default_factory=dict)
    train_subset: int | None = None
    torch_threads: int | None = None
    model: str | None = None
    eval_every: int | str = "epoch"
    devices: int = 1

    @property
    def model_name(self) -> str:
        """``model``, or the dataset's own: ``signal1d`` for mnist1d, ``digits`` for digits."""
        return self.model or DATASET_MODEL[self.dataset]

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    def validate(self) -> None:
        """Raise :class:`StudyError` (a ``ValueError``) naming the valid choices for any bad field."""
        from parity.device import DEVICES, PRECISIONS

        def choose(what: str, value: Any, choices: Sequence[str]) -> None:
            if value not in choices:
                raise StudyError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")

        choose("dataset", self.dataset, STUDY_DATASETS)
        self._validate_model_and_schedule()
        for v in self.variants:
            choose("variant", v, VARIANT_NAMES)
        if not self.variants:
            raise StudyError(f"no variant chosen; choose from {', '.join(VARIANT_NAMES)}")
        if len(set(self.variants)) != len(self.variants):
            raise StudyError(f"variants repeat: {', '.join(self.variants)}")
        choose("device", self.device, DEVICES)
        choose("precision", self.precision, PRECISIONS)
        choose("Linen path", self.linen_path, LINEN_PATHS)
        for name in ("seeds", "epochs"):
            if int(getattr(self, name)) < 1:
                raise StudyError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < MIN_BATCH_SIZE:
            raise StudyError(
                f"batch size must be >= {MIN_BATCH_SIZE}, got {self.batch_size}: BatchNorm in "
                "training mode needs more than one example per batch (torch refuses batch 1, "
                "Flax would silently zero the dense layer's normalised activations)"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise StudyError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise StudyError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.devices < 1:
            raise StudyError(f"devices must be >= 1, got {self.devices}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise StudyError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise StudyError(
                f"train_subset {self.train_subset} is smaller than one batch ({self.batch_size})"
            )

    def _validate_model_and_schedule(self) -> None:
        if self.model is not None:
            if self.model not in STUDY_MODELS:
                raise StudyError(f"unknown model {self.model!r}; choose one of {', '.join(STUDY_MODELS)}")
            if STUDY_MODEL_DATASET[self.model] != self.dataset:
                raise StudyError(
                    f"model {self.model} trains on {STUDY_MODEL_DATASET[self.model]}, not {self.dataset}"
                )
        every = self.eval_every
        if not (
            every in EVAL_SCHEDULES or (isinstance(every, int) and not isinstance(every, bool) and every >= 1)
        ):
            raise StudyError(
                f"eval_every must be a step count >= 1 or one of {', '.join(EVAL_SCHEDULES)}, got {every!r}"
            )

    def to_dict(self) -> dict:
        """JSON-ready configuration (tuples become lists)."""
        d = asdict(self)
        d["variants"] = list(self.variants)
        d["model_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_config.items()}
        d["model"] = self.model_name
        d["seed_list"] = self.seed_list
        return d


def config_items(config: StudyConfig) -> tuple:
    """``config.model_config`` as a hashable key (sorted items, lists as tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.model_config.items()))
