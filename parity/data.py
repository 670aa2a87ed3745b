"""Datasets shared by every framework, and the one seeded batch order they all use.

Arrays are numpy, float32 inputs and int32 labels, stored channels-first as PyTorch wants
them: ``digits`` is ``(N, 1, 8, 8)`` (NCHW) and ``mnist1d`` is ``(N, 1, 40)`` (NCW). Flax
code receives the same arrays through :func:`parity.layout.to_channels_last`
(NHWC / NWC), converted once per dataset in :meth:`Dataset.channels_last`.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from parity.layout import to_channels_last

DATASETS = ("mnist1d", "digits", "synthetic")
SPLIT_SEED = 0  # the fixed train/test split of digits


@dataclass(frozen=True)
class Dataset:
    """A train/test split. ``x_*`` are float32 channels-first, ``y_*`` int32 class ids."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10
    _cl: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-example shape, channels-first: ``(1, 8, 8)`` or ``(1, 40)``."""
        return tuple(self.x_train.shape[1:])

    def channels_last(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x_train, x_test)`` as NHWC / NWC for Flax, converted once and cached."""
        if not self._cl:
            self._cl["train"] = to_channels_last(self.x_train)
            self._cl["test"] = to_channels_last(self.x_test)
        return self._cl["train"], self._cl["test"]


@functools.cache
def load_digits() -> Dataset:
    """scikit-learn's shipped 8x8 digits (1797 images), scaled to [0, 1], fixed 80/20 split."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=SPLIT_SEED, stratify=y)
    return Dataset("digits", x_tr, y_tr, x_te, y_te)


@functools.cache
def load_mnist1d() -> Dataset:
    """MNIST-1D generated offline: 4000 train / 1000 test signals of length 40.

    Uses ``mnist1d.data.make_dataset(get_dataset_args())`` (never the downloading
    ``get_dataset``) and writes no file. Generation reseeds Python's and numpy's global RNGs,
    so their states are saved and restored around it. Cached per process.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    f = lambda a: np.ascontiguousarray(a, dtype=np.float32)[:, None, :]
    return Dataset(
        "mnist1d", f(d["x"]), d["y"].astype(np.int32), f(d["x_test"]), d["y_test"].astype(np.int32)
    )


def synthetic(shape: tuple[int, ...], n_train: int = 4096, n_test: int = 1024, seed: int = 0) -> Dataset:
    """Random inputs of per-example channels-first ``shape`` with random labels (benchmarks only)."""
    rng = np.random.default_rng(seed)
    mk = lambda n: rng.standard_normal((n, *shape), dtype=np.float32)
    lab = lambda n: rng.integers(0, 10, n, dtype=np.int32)
    return Dataset("synthetic", mk(n_train), lab(n_train), mk(n_test), lab(n_test))


def load(name: str) -> Dataset:
    """Load a dataset by name: ``mnist1d`` or ``digits`` (``synthetic`` is digits-shaped)."""
    if name == "mnist1d":
        return load_mnist1d()
    if name == "digits":
        return load_digits()
    if name == "synthetic":
        return synthetic((1, 8, 8))
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def batch_order(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True) -> list[np.ndarray]:
    """Index arrays of one epoch's batches; the same for every framework.

    The permutation depends only on ``(seed, epoch)``. ``drop_last`` drops the final partial
    batch, so every training batch has the same shape (one compilation under jit, and never a
    BatchNorm batch of size 1).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    if stop == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
    return [perm[i : i + batch_size] for i in range(0, stop, batch_size)]


def iterate_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x[idx], y[idx])`` for :func:`batch_order`; works for either layout of ``x``."""
    for idx in batch_order(len(x), batch_size, seed, epoch):
        yield x[idx], y[idx]
