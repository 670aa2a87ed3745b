"""A ViT-style encoder classifier in PyTorch with torchvision's ``vit_b_16`` names.

Input ``(N, C, H, W)`` NCHW float32, output ``(N, num_classes)`` logits:

1. ``conv_proj``: patch embedding, a Conv2d with kernel = stride = ``patch_size`` (with bias),
   ``(N, C, H, W)`` -> ``(N, D, H/p, W/p)`` -> tokens ``(N, S-1, D)`` in row-major patch order;
2. ``class_token`` ``(1, 1, D)`` prepended -> ``(N, S, D)``, ``S = (H/p)(W/p) + 1``;
3. ``encoder``: ``+ pos_embedding`` ``(1, S, D)``, ``dropout``, ``layers.encoder_layer_{i}``
   (pre-LN blocks), final ``ln``;
4. ``heads.head`` on the class token.

Encoder block (torchvision's ``EncoderBlock``): ``x = x + dropout(self_attention(ln_1(x)))``,
``x = x + mlp(ln_2(x))`` with ``mlp`` = ``0`` Linear(D, M), ``1`` GELU (exact, erf), ``2``
Dropout, ``3`` Linear(M, D), ``4`` Dropout. ``self_attention`` is ``nn.MultiheadAttention``
(``batch_first=True``): its ``in_proj_weight`` ``(3D, D)`` stacks the q, k, v projections in
that order, each ``(D, D)`` with rows grouped by head (head ``h`` is rows ``h*D/H ... (h+1)*D/H``).
LayerNorm eps is **1e-6**, as torchvision's ViT uses (``nn.LayerNorm``'s own default is 1e-5).

``attention_dropout`` (dropout on the attention weights, inside ``nn.MultiheadAttention``) is
0 as in torchvision's defaults: it happens inside one fused call, where no hook can share its
masks with Flax. Initialisation follows torchvision except ``heads.head``, which keeps PyTorch's
default instead of zeros, so that outputs and gradients compared in tests are not trivially 0.

Factories: ``vit_b_16`` (torchvision's configuration, 86,567,656 parameters for 1000 classes)
``vit_tiny`` (8x8 images, 4x4 patches, 2 layers, D=16, 2 heads: for tests) and ``vit_tiny_1d``
(``dims=1``: a Conv1d patch embedding over MNIST-1D's 40-sample signals, for the study).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

#: torchvision's ViT LayerNorm epsilon (PyTorch's nn.LayerNorm default is 1e-5, Flax's 1e-6).
LN_EPSILON = 1e-6


class MLPBlock(nn.Sequential):
    """``(N, S, D)`` -> ``(N, S, D)``: Linear(D, M), GELU (exact), Dropout, Linear(M, D), Dropout."""

    def __init__(self, in_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(
            nn.Linear(in_dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, in_dim),
            nn.Dropout(dropout),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block; ``(N, S, D)`` -> ``(N, S, D)``."""

    def __init__(
        self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=LN_EPSILON)
        self.self_attention = nn.MultiheadAttention(
            hidden_dim, num_heads, dropout=attention_dropout, batch_first=True
        )
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=LN_EPSILON)
        self.mlp = MLPBlock(hidden_dim, mlp_dim, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Position embedding, dropout, ``num_layers`` blocks, final LayerNorm; ``(N, S, D)`` -> ``(N, S, D)``."""

    def __init__(
        self,
        seq_length: int,
        num_layers: int,
        num_heads: int,
        hidden_dim: int,
        mlp_dim: int,
        dropout: float,
        attention_dropout: float,
    ) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        blocks = OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout))
            for i in range(num_layers)
        )
        self.layers = nn.Sequential(blocks)
        self.ln = nn.LayerNorm(hidden_dim, eps=LN_EPSILON)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """ViT classifier; input ``(N, in_channels, image_size, image_size)`` NCHW (``dims=1``: a
    signal ``(N, in_channels, image_size)`` NCW, patches of ``patch_size`` samples as tokens),
    output ``(N, num_classes)``."""

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
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.conv_proj = conv(in_channels, hidden_dim, patch_size, stride=patch_size)
        fan_in = in_channels * patch_size**dims
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq_length = (image_size // patch_size) ** dims + 1
        self.encoder = Encoder(
            seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout
        )
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x)  # (N, D, H/p, W/p); dims=1: (N, D, W/p)
        x = x.flatten(2).transpose(1, 2)  # (N, S-1, D), patches in row-major order
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def vit_b_16(num_classes: int = 1000, **kwargs) -> VisionTransformer:
    """torchvision's ViT-B/16: 224x224 images, 16x16 patches, 12 layers, D=768, 12 heads, M=3072."""
    config = {"image_size": 224, "patch_size": 16, "num_layers": 12, "num_heads": 12}
    return VisionTransformer(**config, hidden_dim=768, mlp_dim=3072, num_classes=num_classes, **kwargs)


def vit_tiny(num_classes: int = 10, **kwargs) -> VisionTransformer:
    """Test-sized ViT: 8x8 images, 4x4 patches (S=5), 2 layers, D=16, 2 heads, M=32, dropout 0.1."""
    config = {"image_size": 8, "patch_size": 4, "num_layers": 2, "num_heads": 2, "dropout": 0.1, **kwargs}
    return VisionTransformer(**config, hidden_dim=16, mlp_dim=32, num_classes=num_classes)


def vit_tiny_1d(num_classes: int = 10, **kwargs) -> VisionTransformer:
    """ViT for MNIST-1D: ``(N, 1, 40)`` NCW signals cut into 10 patches of 4 samples (S=11),
    2 layers, D=32, 4 heads, M=64, dropout 0.1; no BatchNorm (dropout is the only mode layer)."""
    config = {"image_size": 40, "patch_size": 4, "num_layers": 2, "num_heads": 4, "dropout": 0.1, **kwargs}
    return VisionTransformer(
        **config, hidden_dim=32, mlp_dim=64, num_classes=num_classes, in_channels=1, dims=1
    )


FACTORIES = {"vit_b_16": vit_b_16, "vit_tiny": vit_tiny, "vit_tiny_1d": vit_tiny_1d}
