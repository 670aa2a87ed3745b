"""The names every command shares, each defined once: models, frameworks, datasets.

Framework-free (no torch, no jax), so argparse can offer them as choices without loading either.
Devices and precision policies live in :mod:`parity.device` (``DEVICES``, ``PRECISIONS``).
"""

from __future__ import annotations

#: the project's own architectures: torch_impl.models / flax_impl.{linen,nnx}_models
MODELS: tuple[str, ...] = ("digits", "signal1d")
#: every framework style, torch first (the reference)
FRAMEWORKS: tuple[str, ...] = ("torch", "linen", "nnx")
#: the Flax styles compared against torch
FLAX_FRAMEWORKS: tuple[str, ...] = ("linen", "nnx")
#: the model each dataset trains (the study's default dataset first); MODEL_DATASET is its inverse
DATASET_MODEL: dict[str, str] = {"mnist1d": "signal1d", "digits": "digits"}
MODEL_DATASET: dict[str, str] = {model: dataset for dataset, model in DATASET_MODEL.items()}
#: optimizers the trajectory harness matches across frameworks (torch.optim <-> optax)
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
#: every model ``parity study --model`` trains -> its dataset: the project's two, then the
#: reference zoo's (torch_impl/{resnet,vit}.py and their Flax ports) sized for a CPU
STUDY_MODEL_DATASET: dict[str, str] = {
    "signal1d": "mnist1d",
    "digits": "digits",
    "resnet20_1d": "mnist1d",
    "vit_tiny_1d": "mnist1d",
    "resnet20": "digits",
}
