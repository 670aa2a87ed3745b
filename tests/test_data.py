"""Datasets: real data, fixed splits, one seeded batch order, no downloads and no files."""

import os
import random

import numpy as np
import pytest

from parity import data
from parity.layout import to_channels_first, to_channels_last


def test_digits_shapes_range_and_fixed_split():
    d = data.load_digits()
    assert d.x_train.shape[1:] == (1, 8, 8) and d.x_train.dtype == np.float32
    assert len(d.x_train) + len(d.x_test) == 1797
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert set(np.unique(d.y_train)) == set(range(10)) and d.y_train.dtype == np.int32
    data.load_digits.cache_clear()
    again = data.load_digits()
    np.testing.assert_array_equal(again.x_test, d.x_test)


@pytest.mark.slow  # 2.4 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_mnist1d_generated_offline_without_side_effects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data.load_mnist1d.cache_clear()
    random.seed(123)
    np.random.seed(123)
    before = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    d = data.load_mnist1d()
    after = (random.random(), np.random.rand())
    assert before == after, "generation must not disturb the global RNGs"
    assert os.listdir(tmp_path) == [], "generation must write no file"
    assert d.x_train.shape == (4000, 1, 40) and d.x_test.shape == (1000, 1, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    assert data.load_mnist1d() is d  # cached per process


def test_batch_order_is_seeded_shared_and_drops_partial_batch():
    a = data.batch_order(1437, 128, seed=3, epoch=2)
    b = data.batch_order(1437, 128, seed=3, epoch=2)
    assert all((x == y).all() for x, y in zip(a, b))
    assert len(a) == 11 and all(len(i) == 128 for i in a)
    assert not all((x == y).all() for x, y in zip(a, data.batch_order(1437, 128, seed=3, epoch=3)))
    flat = np.concatenate(a)
    assert len(np.unique(flat)) == len(flat)


def test_batch_order_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_order(10, 0, 0, 0)
    with pytest.raises(ValueError, match="larger than"):
        data.batch_order(10, 11, 0, 0)


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="mnist1d, digits"):
        data.load("cifar")


def test_channels_last_is_one_conversion_each_way():
    d = data.load_digits()
    xtr, xte = d.channels_last()
    assert xtr.shape[1:] == (8, 8, 1) and d.channels_last()[0] is xtr
    np.testing.assert_array_equal(to_channels_first(xte), d.x_test)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)  # NCW
    assert to_channels_last(x)[1, 2, 0] == x[1, 0, 2]
