"""Shared test set-up: CPU determinism, the ``gpu`` marker, and small shared fixtures."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import pytest
import torch

# The test models are tiny: one intra-op thread avoids oversubscribing 2 cores that jax's
# thread pool also uses (measured: a 3-epoch tiny run took 12.7 s with 2 threads, 0.37 s with 1,
# on a loaded 2-core box).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.gpu`` tests when torch sees no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
