"""Shared test set-up: CPU determinism, the ``gpu`` marker, and the device/precision pin.

On a machine with a GPU, jax would otherwise put every array on the GPU with its default
(TF32-class) precision while torch runs on the CPU, against float32 tolerances. So every test
not marked ``gpu`` runs with both frameworks on the CPU under the ``strict`` policy, and the
global device/precision settings are restored after every test (a ``gpu`` test leaves cuda
behind otherwise). Module-scoped fixtures are set up between tests, so they see cpu/strict too.
"""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import pytest
import torch

from parity.device import configure, global_state, restore_global_state

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
        # the marker, not ``"gpu" in item.keywords``: keywords also hold parent directory names
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def cpu_strict_session():
    """cpu/strict before the first module-scoped fixture of the session is built."""
    configure("cpu", "strict")


@pytest.fixture(autouse=True)
def pinned_device_state(request):
    """Pin a non-``gpu`` test to cpu/strict; after any test, restore the settings it found."""
    if request.node.get_closest_marker("gpu") is None:
        configure("cpu", "strict")
    saved = global_state()
    yield
    restore_global_state(saved)
