"""A ViT-style encoder classifier in Flax NNX with torchvision's ``vit_b_16`` names.

The architecture of ``torch_impl.vit`` (see there), channels-last: input ``(N, H, W, C)`` NHWC,
tokens ``(N, S, D)``, output ``(N, num_classes)``; mode set by ``model.train()`` /
``model.eval()``.

Naming: NNX paths are torch's names with ``/`` for ``.``: ``conv_proj``, ``class_token``,
``encoder/pos_embedding``, ``encoder/layers/encoder_layer_{i}/{ln_1, self_attention, ln_2}``,
``encoder/layers/encoder_layer_0/mlp/0`` (an ``nnx.List`` keeps torch's indices, GELU at 1),
``encoder/ln``, ``heads/head``. The conventions that differ from Flax's defaults (exact GELU,
LayerNorm eps 1e-6 with two-pass variance, the attention kernels' head layout) are explained in
``flax_impl.linen_vit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

#: torchvision's ViT LayerNorm epsilon (read when the model is built).
LN_EPSILON = 1e-6
#: False: exact GELU, torch ``nn.GELU()``'s default (read at call time).
GELU_APPROXIMATE = False


def gelu(x: jax.Array) -> jax.Array:
    """GELU as torch's ``nn.GELU()`` computes it: exact (erf) unless :data:`GELU_APPROXIMATE`."""
    return jax.nn.gelu(x, approximate=GELU_APPROXIMATE)


def _layer_norm(features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=LN_EPSILON, use_fast_variance=False, rngs=rngs)


class EncoderBlock(nnx.Module):
    """Pre-LN transformer block; ``(N, S, D)`` -> ``(N, S, D)``."""

    def __init__(
        self,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.ln_1 = _layer_norm(hidden_dim, rngs)
        self.self_attention = nnx.MultiHeadAttention(
            num_heads,
            hidden_dim,
            qkv_features=hidden_dim,
            out_features=hidden_dim,
            dropout_rate=attention_dropout,
            decode=False,
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.ln_2 = _layer_norm(hidden_dim, rngs)
        self.mlp = nnx.List(
            [
                nnx.Linear(hidden_dim, mlp_dim, rngs=rngs),
                gelu,
                nnx.Dropout(dropout, rngs=rngs),
                nnx.Linear(mlp_dim, hidden_dim, rngs=rngs),
                nnx.Dropout(dropout, rngs=rngs),
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.ln_1(x)
        x = x + self.dropout(self.self_attention(y, y, y))
        y = self.ln_2(x)
        for layer in self.mlp:
            y = layer(y)
        return x + y


class EncoderLayers(nnx.Module):
    """``encoder_layer_0 ... encoder_layer_{num_layers-1}`` in sequence (torch's ``nn.Sequential``)."""

    def __init__(self, num_layers: int, *config, rngs: nnx.Rngs) -> None:
        self.num_layers = num_layers
        for i in range(num_layers):
            setattr(self, f"encoder_layer_{i}", EncoderBlock(*config, rngs=rngs))

    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.num_layers):
            x = getattr(self, f"encoder_layer_{i}")(x)
        return x


class Encoder(nnx.Module):
    """Position embedding, dropout, the blocks, final LayerNorm; ``(N, S, D)`` -> ``(N, S, D)``."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        init = nnx.initializers.normal(stddev=0.02)
        self.pos_embedding = nnx.Param(init(rngs.params(), (1, seq_length, hidden_dim)))
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        config = (num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.layers = EncoderLayers(num_layers, *config, rngs=rngs)
        self.ln = _layer_norm(hidden_dim, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding[...])))


class Heads(nnx.Module):
    """``head``: Linear on the class token, ``(N, D)`` -> ``(N, num_classes)``."""

    def __init__(self, hidden_dim: int, num_classes: int, *, rngs: nnx.Rngs) -> None:
        self.head = nnx.Linear(hidden_dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(x)


class VisionTransformer(nnx.Module):
    """ViT classifier; input ``(N, image_size, image_size, C)`` NHWC (``dims=1``: a signal
    ``(N, image_size, C)`` NWC, patches of ``patch_size`` samples as tokens), output
    ``(N, num_classes)``."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        dims: int = 2,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        kernel = (patch_size,) * dims
        self.conv_proj = nnx.Conv(in_channels, hidden_dim, kernel, strides=kernel, padding="VALID", rngs=rngs)
        self.class_token = nnx.Param(jnp.zeros((1, 1, hidden_dim)))
        seq_length = (image_size // patch_size) ** dims + 1
        config = (num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.encoder = Encoder(seq_length, *config, rngs=rngs)
        self.heads = Heads(hidden_dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv_proj(x)  # (N, H/p, W/p, D); dims=1: (N, W/p, D)
        x = x.reshape(x.shape[0], -1, x.shape[-1])  # (N, S-1, D), patches in row-major order
        token = jnp.broadcast_to(self.class_token[...], (x.shape[0], 1, x.shape[-1]))
        return self.heads(self.encoder(jnp.concatenate([token, x], axis=1))[:, 0])


def vit_b_16(num_classes: int = 1000, *, rngs: nnx.Rngs, **kwargs) -> VisionTransformer:
    """torchvision's ViT-B/16: 224x224 images, 16x16 patches, 12 layers, D=768, 12 heads, M=3072."""
    config = {"image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12}
    return VisionTransformer(
        **config, hidden_dim=768, mlp_dim=3072, num_classes=num_classes, rngs=rngs, **kwargs
    )


def vit_tiny(num_classes: int = 10, *, rngs: nnx.Rngs, **kwargs) -> VisionTransformer:
    """Test-sized ViT: 8x8 images, 4x4 patches (S=5), 2 layers, D=16, 2 heads, M=32, dropout 0.1."""
    config = {"image_size": 8, "patch_size": 4, "num_layers": 2, "num_heads": 2, "dropout": 0.1, **kwargs}
    return VisionTransformer(**config, hidden_dim=16, mlp_dim=32, num_classes=num_classes, rngs=rngs)


def vit_tiny_1d(num_classes: int = 10, *, rngs: nnx.Rngs, **kwargs) -> VisionTransformer:
    """ViT for MNIST-1D: ``(N, 40, 1)`` NWC signals cut into 10 patches of 4 samples (S=11),
    2 layers, D=32, 4 heads, M=64, dropout 0.1; no BatchNorm (dropout is the only mode layer)."""
    config = {"image_size": 40, "patch_size": 4, "num_layers": 2, "num_heads": 4, "dropout": 0.1, **kwargs}
    return VisionTransformer(
        **config, hidden_dim=32, mlp_dim=64, num_classes=num_classes, in_channels=1, dims=1, rngs=rngs
    )


FACTORIES = {"vit_b_16": vit_b_16, "vit_tiny": vit_tiny, "vit_tiny_1d": vit_tiny_1d}
