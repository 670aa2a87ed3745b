"""One home for the numbers several modules share: parity tolerances and training defaults.

Framework-free (no torch, no jax), so ``torch_impl`` and ``flax_impl`` may import it too.
Each constant carries its reason; a module that needs a different value says why beside it.
"""

from __future__ import annotations

#: Relative L2 bound for a float32 comparison of two ports (forward outputs, gradients, BN
#: statistics, per-layer outputs). Two float32 kernels that sum the same products in another
#: order differ by a few ulps per output (float32 eps is 1.2e-7); through a handful of
#: conv/dense/BN layers that accumulates to 1e-7 .. 1e-6 on the project's models. A layout bug
#: (a flatten order not permuted, a kernel not transposed) gives differences of order 1.
FLOAT32_REL_TOL: float = 1e-5

#: Relative L2 bound when both sides are recomputed in float64: float64 rounding is 2**-53 ~
#: 1.1e-16 and correct ports agree to ~1e-15 .. 1e-12, so 1e-9 leaves a wide margin while a
#: port defect (a config difference of 1e-6 relative and above) stays far outside it.
FLOAT64_REL_TOL: float = 1e-9

#: SGD defaults shared by every training loop (the blog's set-up): learning rate and momentum.
LEARNING_RATE: float = 0.05
MOMENTUM: float = 0.9
