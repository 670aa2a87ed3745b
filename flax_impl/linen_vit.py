"""A ViT-style encoder classifier in Flax Linen with torchvision's ``vit_b_16`` names.

The architecture of ``torch_impl.vit`` (see there), channels-last: input ``(N, H, W, C)`` NHWC,
tokens ``(N, S, D)`` (the same layout as torch's ``batch_first`` tokens), output
``(N, num_classes)``; ``__call__(x, *, train)`` takes the mode (dropout on when ``train``).

Naming: ``conv_proj``, ``class_token``, ``encoder/pos_embedding``,
``encoder/layers/encoder_layer_{i}/{ln_1, self_attention, ln_2}``, ``encoder/ln``,
``heads/head``. The MLP is a list attribute (``mlp_0`` Dense, ``mlp_3`` Dense; the GELU at
index 1 and the dropouts at 2 and 4 keep torch's indices), as ResNet's blocks are.

Three conventions that differ from Flax's defaults, each a port bug when left at the default:

* GELU is exact (erf): ``jax.nn.gelu`` defaults to the tanh approximation, torch ``nn.GELU()``
  to the exact form (they differ by up to ~5e-4 per element);
* LayerNorm eps is torchvision ViT's 1e-6 (here Flax's default agrees; torch's default is
  1e-5), and the variance is computed in two passes (``use_fast_variance=False``) as torch does;
* ``self_attention`` is ``nn.MultiHeadDotProductAttention`` with ``query`` / ``key`` /
  ``value`` kernels ``(D, heads, D/heads)`` and ``out`` ``(heads, D/heads, D)``: torch's packed
  ``in_proj_weight`` rows are q, k, v in that order, each split into heads along its rows.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

#: torchvision's ViT LayerNorm epsilon (read when the model is set up).
LN_EPSILON = 1e-6
#: False: exact GELU, torch ``nn.GELU()``'s default (read at call time).
GELU_APPROXIMATE = False


def gelu(x: jax.Array) -> jax.Array:
    """GELU as torch's ``nn.GELU()`` computes it: exact (erf) unless :data:`GELU_APPROXIMATE`."""
    return jax.nn.gelu(x, approximate=GELU_APPROXIMATE)


def _layer_norm(name: str | None = None) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LN_EPSILON, use_fast_variance=False, name=name)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block; ``(N, S, D)`` -> ``(N, S, D)``."""

    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dropout_rate: float
    attention_dropout: float

    def setup(self) -> None:
        self.ln_1 = _layer_norm()
        self.self_attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            qkv_features=self.hidden_dim,
            out_features=self.hidden_dim,
            dropout_rate=self.attention_dropout,
        )
        self.dropout = nn.Dropout(self.dropout_rate)
        self.ln_2 = _layer_norm()
        self.mlp: list[nn.Module | Callable] = [
            nn.Dense(self.mlp_dim),
            gelu,
            nn.Dropout(self.dropout_rate),
            nn.Dense(self.hidden_dim),
            nn.Dropout(self.dropout_rate),
        ]

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        y = self.ln_1(x)
        y = self.self_attention(y, y, y, deterministic=not train)
        x = x + self.dropout(y, deterministic=not train)
        y = self.ln_2(x)
        for layer in self.mlp:
            y = layer(y, deterministic=not train) if isinstance(layer, nn.Dropout) else layer(y)
        return x + y


class EncoderLayers(nn.Module):
    """``encoder_layer_0 ... encoder_layer_{num_layers-1}`` in sequence (torch's ``nn.Sequential``)."""

    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dropout: float
    attention_dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        config = (self.num_heads, self.hidden_dim, self.mlp_dim, self.dropout, self.attention_dropout)
        for i in range(self.num_layers):
            x = EncoderBlock(*config, name=f"encoder_layer_{i}")(x, train=train)
        return x


class Encoder(nn.Module):
    """Position embedding, dropout, the blocks, final LayerNorm; ``(N, S, D)`` -> ``(N, S, D)``."""

    seq_length: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dropout: float
    attention_dropout: float

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        init = nn.initializers.normal(stddev=0.02)
        pos_embedding = self.param("pos_embedding", init, (1, self.seq_length, self.hidden_dim))
        x = nn.Dropout(self.dropout, name="dropout")(x + pos_embedding, deterministic=not train)
        config = (self.num_heads, self.hidden_dim, self.mlp_dim, self.dropout, self.attention_dropout)
        x = EncoderLayers(self.num_layers, *config, name="layers")(x, train=train)
        return _layer_norm(name="ln")(x)


class Heads(nn.Module):
    """``head``: Dense on the class token, ``(N, D)`` -> ``(N, num_classes)``."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Dense(self.num_classes, name="head")(x)


class VisionTransformer(nn.Module):
    """ViT classifier; input ``(N, image_size, image_size, C)`` NHWC (``dims=1``: a signal
    ``(N, image_size, C)`` NWC, patches of ``patch_size`` samples as tokens), output
    ``(N, num_classes)``."""

    image_size: int
    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    num_classes: int = 1000
    dims: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        p, dims = self.patch_size, self.dims
        x = nn.Conv(self.hidden_dim, (p,) * dims, strides=(p,) * dims, padding="VALID", name="conv_proj")(x)
        x = x.reshape(x.shape[0], -1, self.hidden_dim)  # (N, S-1, D), patches in row-major order
        class_token = self.param("class_token", nn.initializers.zeros, (1, 1, self.hidden_dim))
        x = jnp.concatenate([jnp.broadcast_to(class_token, (x.shape[0], 1, self.hidden_dim)), x], axis=1)
        seq_length = (self.image_size // p) ** dims + 1
        config = (self.num_layers, self.num_heads, self.hidden_dim, self.mlp_dim)
        x = Encoder(seq_length, *config, self.dropout, self.attention_dropout, name="encoder")(x, train=train)
        return Heads(self.num_classes, name="heads")(x[:, 0])


def vit_b_16(num_classes: int = 1000, **kwargs) -> VisionTransformer:
    """torchvision's ViT-B/16: 224x224 images, 16x16 patches, 12 layers, D=768, 12 heads, M=3072."""
    config = {"image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12}
    return VisionTransformer(**config, hidden_dim=768, mlp_dim=3072, num_classes=num_classes, **kwargs)


def vit_tiny(num_classes: int = 10, **kwargs) -> VisionTransformer:
    """Test-sized ViT: 8x8 images, 4x4 patches (S=5), 2 layers, D=16, 2 heads, M=32, dropout 0.1."""
    config = {"image_size": 8, "patch_size": 4, "num_layers": 2, "num_heads": 2, "dropout": 0.1, **kwargs}
    return VisionTransformer(**config, hidden_dim=16, mlp_dim=32, num_classes=num_classes)


def vit_tiny_1d(num_classes: int = 10, **kwargs) -> VisionTransformer:
    """ViT for MNIST-1D: ``(N, 40, 1)`` NWC signals cut into 10 patches of 4 samples (S=11),
    2 layers, D=32, 4 heads, M=64, dropout 0.1; no BatchNorm (dropout is the only mode layer)."""
    config = {"image_size": 40, "patch_size": 4, "num_layers": 2, "num_heads": 4, "dropout": 0.1, **kwargs}
    return VisionTransformer(**config, hidden_dim=32, mlp_dim=64, num_classes=num_classes, dims=1)


FACTORIES = {"vit_b_16": vit_b_16, "vit_tiny": vit_tiny, "vit_tiny_1d": vit_tiny_1d}
