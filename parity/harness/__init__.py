"""The parity harness: everything that runs a torch model next to its Flax port and compares.

* :mod:`~parity.harness.sides`: the torch and Flax side adapters every comparison runs on
  (``FlaxSide``, ``run_torch``, ``torch_gradients`` / ``flax_gradients``, shared dropout);
* :mod:`~parity.harness.compare`: the fixed checks of ``parity check`` (forward, BN state,
  gradients, round trips) on the project's own models (``ModelPair``);
* :mod:`~parity.harness.localize`: the first diverging layer (forward) or parameter (gradient);
* :mod:`~parity.harness.trajectory`: K training steps side by side with matched optimizers;
* :mod:`~parity.harness.suite`: the ``parity check`` suite, driven by a frozen ``CheckConfig``;
* :mod:`~parity.harness.plots`: the divergence figure of ``parity check --plot``.

:mod:`parity.testing` wraps these as assertions for other projects' test suites.
"""
