"""mode-parity: everything that knows both PyTorch and Flax.

Layout rules, weight conversion, datasets, the parity checks, the misplacement study,
the mode-bug lint, the benchmark and the ``parity`` command line live here.
``torch_impl`` never imports jax and ``flax_impl`` never imports torch.
"""

import os

# Before jax can initialise a GPU backend: don't let jax preallocate the GPU that torch shares.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

__version__ = "0.1.0"
