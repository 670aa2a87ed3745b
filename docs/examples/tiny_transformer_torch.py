"""A model none of the project's code defines, written as a PyTorch user would: a convolutional
stem in ``nn.Sequential``, a list of pre-LN transformer blocks (``nn.LayerNorm``,
``nn.MultiheadAttention``, a GELU MLP in ``nn.Sequential``, dropout), mean pooling over tokens
and a linear head. Its Flax ports (Linen and NNX) are in ``tiny_transformer_flax.py``.

Input ``(N, 3, 16, 16)`` NCHW float32; tokens ``(N, 64, 16)``; output ``(N, 10)`` logits.

    parity map   --torch docs/examples/tiny_transformer_torch.py:make \\
                 --flax docs/examples/tiny_transformer_flax.py:make_nnx
    parity check --torch docs/examples/tiny_transformer_torch.py:make \\
                 --flax docs/examples/tiny_transformer_flax.py:make_linen --input-shape 4,3,16,16
"""

import torch
from torch import nn


class Block(nn.Module):
    """Pre-LN transformer block, ``(N, L, D)`` -> ``(N, L, D)``."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """``(N, C, H, W)`` -> stem ``(N, D, H/2, W/2)`` -> tokens ``(N, HW/4, D)`` -> blocks ->
    LayerNorm -> mean over tokens -> ``(N, classes)``."""

    def __init__(self, in_channels=3, dim=16, depth=2, heads=2, classes=10, dropout=0.1) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 2, stride=2),
        )
        self.blocks = nn.ModuleList([Block(dim, heads, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # (N, L, D), patches in row-major order
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def make() -> nn.Module:
    """The factory ``parity`` calls (``--torch docs/examples/tiny_transformer_torch.py:make``)."""
    torch.manual_seed(0)
    return TinyTransformer()
