"""Ports whose layers all fix ``dtype=jnp.float32`` (as ports written for mixed precision do:
LayerNorm and Dense), of the GPT-style MLP block of tests/verdict_models.py (``(N, L, 8)``
tokens): Linen (the dtype a field of the block, handed to its layers) and NNX, each correct or
with the LayerNorm epsilon 1e-6 (torch: 1e-5), a ~1e-6-relative fault that float32 cannot
resolve. SPEC factories for ``parity check --torch/--flax``."""

import flax.linen as fnn
import jax.numpy as jnp
from flax import nnx
from verdict_models import DIM, make_mlp


def torch_mlp():
    return make_mlp()


class LinenMLPBlock(fnn.Module):
    epsilon: float = 1e-5
    dtype: object = jnp.float32

    @fnn.compact
    def __call__(self, x):
        y = fnn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype, name="ln")(x)
        y = fnn.gelu(fnn.Dense(4 * DIM, dtype=self.dtype, name="fc")(y), approximate=False)
        return x + fnn.Dense(DIM, dtype=self.dtype, name="proj")(y)


def linen_mlp() -> fnn.Module:
    return LinenMLPBlock()


def linen_mlp_eps() -> fnn.Module:
    return LinenMLPBlock(epsilon=1e-6)


class NNXMLPBlock(nnx.Module):
    def __init__(self, epsilon: float, rngs: nnx.Rngs) -> None:
        self.ln = nnx.LayerNorm(DIM, epsilon=epsilon, dtype=jnp.float32, rngs=rngs)
        self.fc = nnx.Linear(DIM, 4 * DIM, dtype=jnp.float32, rngs=rngs)
        self.proj = nnx.Linear(4 * DIM, DIM, dtype=jnp.float32, rngs=rngs)

    def __call__(self, x):
        return x + self.proj(nnx.gelu(self.fc(self.ln(x)), approximate=False))


def nnx_mlp() -> nnx.Module:
    return NNXMLPBlock(1e-5, nnx.Rngs(0))


def nnx_mlp_eps() -> nnx.Module:
    return NNXMLPBlock(1e-6, nnx.Rngs(0))
