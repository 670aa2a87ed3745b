"""The Flax ports of ``tiny_transformer_torch.py``, Linen and NNX, following the conventions
``parity`` pairs without configuration (MIGRATION.md):

* names: torch ``blocks.0.attn`` is Linen ``blocks_0/attn`` (a list attribute spelled by name)
  and NNX ``blocks/0/attn`` (``nnx.List``); torch ``nn.Sequential`` ``mlp.3`` is Linen
  ``mlp_3`` and NNX ``nnx.Sequential`` ``mlp/layers/3`` (indices kept: ``GELU`` and ``ReLU``
  have no weights but keep their slot);
* layout: channels-last input ``(N, H, W, C)``; the stem's ``(N, H/2, W/2, D)`` map reshaped to
  ``(N, HW/4, D)`` tokens is torch's ``flatten(2).transpose(1, 2)``, the same row-major order;
* torch defaults written out: ``LayerNorm`` epsilon 1e-5 (Flax 1e-6), exact GELU
  (``approximate=False``; Flax defaults to tanh), BatchNorm momentum 0.9 and epsilon 1e-5
  (torch momentum 0.1), the 3x3 conv's symmetric padding ``((1, 1), (1, 1))``.
"""

from functools import partial

import flax.linen as nn
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.attention import dot_product_attention_weights

gelu = partial(nn.gelu, approximate=False)  # torch nn.GELU() is exact (erf)


def attention(query, key, value, mask=None, dtype=None, **_):
    """Softmax attention written out, ``(N, L, heads, d)`` -> ``(N, L, heads, d)``, for NNX:
    with dropout 0, NNX's ``dot_product_attention`` takes ``jax.nn.dot_product_attention``, whose
    softmax runs in float32 even under x64, so ``parity check``'s float64 trajectory (1e-9)
    would see 1e-8. Same function in float32."""
    weights = dot_product_attention_weights(query, key, mask=mask, dtype=dtype)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value)


class LinenBlock(nn.Module):
    dim: int
    heads: int
    dropout: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        h = nn.LayerNorm(epsilon=1e-5, name="norm1")(x)
        h = nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.dim, name="attn")(h, h)
        x = x + nn.Dropout(self.dropout, name="drop")(h, deterministic=not train)
        h = nn.LayerNorm(epsilon=1e-5, name="norm2")(x)
        h = gelu(nn.Dense(2 * self.dim, name="mlp_0")(h))
        h = nn.Dropout(self.dropout, name="mlp_2")(h, deterministic=not train)
        return x + nn.Dense(self.dim, name="mlp_3")(h)


class LinenTinyTransformer(nn.Module):
    dim: int = 16
    depth: int = 2
    heads: int = 2
    classes: int = 10
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.Conv(self.dim, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="stem_0")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="stem_1")(x)
        x = nn.Conv(self.dim, (2, 2), strides=2, padding="VALID", name="stem_3")(nn.relu(x))
        x = x.reshape(x.shape[0], -1, self.dim)  # (N, L, D)
        for i in range(self.depth):
            x = LinenBlock(self.dim, self.heads, self.dropout, name=f"blocks_{i}")(x, train)
        return nn.Dense(self.classes, name="head")(nn.LayerNorm(epsilon=1e-5, name="norm")(x).mean(1))


class NNXBlock(nnx.Module):
    def __init__(self, dim: int, heads: int, dropout: float, rngs: nnx.Rngs) -> None:
        self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, dim, dim, decode=False, attention_fn=attention, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.mlp = nnx.Sequential(
            nnx.Linear(dim, 2 * dim, rngs=rngs),
            gelu,
            nnx.Dropout(dropout, rngs=rngs),
            nnx.Linear(2 * dim, dim, rngs=rngs),
        )

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class NNXTinyTransformer(nnx.Module):
    def __init__(self, in_channels=3, dim=16, depth=2, heads=2, classes=10, dropout=0.1, *, rngs: nnx.Rngs):
        self.dim = dim
        self.stem = nnx.Sequential(
            nnx.Conv(in_channels, dim, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs),
            nnx.BatchNorm(dim, momentum=0.9, epsilon=1e-5, rngs=rngs),
            nnx.relu,
            nnx.Conv(dim, dim, (2, 2), strides=2, padding="VALID", rngs=rngs),
        )
        self.blocks = nnx.List([NNXBlock(dim, heads, dropout, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(dim, classes, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = self.stem(x)
        x = x.reshape(x.shape[0], -1, self.dim)  # (N, L, D)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def make_linen() -> nn.Module:
    """Linen factory (``--flax docs/examples/tiny_transformer_flax.py:make_linen``)."""
    return LinenTinyTransformer()


def make_nnx() -> nnx.Module:
    """NNX factory (``--flax docs/examples/tiny_transformer_flax.py:make_nnx``)."""
    return NNXTinyTransformer(rngs=nnx.Rngs(0))
