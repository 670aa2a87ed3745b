"""mode-parity: everything that knows both PyTorch and Flax.

Layout rules, weight conversion, datasets, the parity checks, the misplacement study,
the mode-bug lint, the benchmark and the ``parity`` command line live here.
``torch_impl`` never imports jax and ``flax_impl`` never imports torch.
"""

__version__ = "0.1.0"
