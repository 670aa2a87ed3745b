"""The Flax side: the same models in channels-last layout (NHWC / NWC), written twice.

* ``flax_impl.linen_models``: Linen, mode passed explicitly as ``train=``; BatchNorm statistics
  in the ``batch_stats`` collection; dropout randomness from the ``'dropout'`` rng stream.
* ``flax_impl.nnx_models``: NNX, mode stored on the modules and set by ``.train()`` /
  ``.eval()`` or by ``nnx.view(...)``.

Nothing here imports torch.
"""

# Why Flax momentum 0.9 is PyTorch momentum 0.1 (written once, used by both Flax styles):
# PyTorch updates   running = (1 - momentum) * running + momentum * batch_stat
# Flax updates      ra      = momentum * ra + (1 - momentum) * batch_stat
# so the two "momentum" arguments weigh opposite terms: torch 0.1 == flax 1 - 0.1 == 0.9.
# Flax's own default is 0.99 (torch 0.01), which would silently slow the running statistics
# tenfold. eps is 1e-5 in both (PyTorch's default; Flax Linen's default is also 1e-5).
# One real difference remains and is NOT a parameter: PyTorch stores the *unbiased* batch
# variance (n / (n - 1)) in running_var, Flax the biased one; see parity.harness.compare.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
