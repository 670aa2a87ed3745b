"""Torch factories for tests/test_port_generate.py: the zoo's models built from a fixed seed,
small models of the constructs the generator translates, and (``data_dependent``) the model
whose forward branches on a tensor value, tests/port_cli_models.py's ``Gate``, shared."""

import math

import torch
from torch import nn

from tests.port_cli_models import Gate, keyword_mask  # noqa: F401 (a factory of this file too)
from torch_impl import resnet, vit
from torch_impl.models import build_model


def _seeded(factory, **kwargs):
    torch.manual_seed(0)
    return factory(**kwargs)


def digits() -> nn.Module:
    return build_model("digits", seed=0)


def signal1d() -> nn.Module:
    return build_model("signal1d", seed=0)


def resnet18() -> nn.Module:
    return _seeded(resnet.resnet18, num_classes=10)


def resnet34() -> nn.Module:
    return _seeded(resnet.resnet34, num_classes=10)


def resnet50() -> nn.Module:
    return _seeded(resnet.resnet50, num_classes=10)


def resnet20() -> nn.Module:
    return _seeded(resnet.resnet20)


def vit_tiny() -> nn.Module:
    return _seeded(vit.vit_tiny)


def tiny_transformer() -> nn.Module:
    from docs.examples.tiny_transformer_torch import make

    return make()


def data_dependent() -> nn.Module:
    """tests/port_cli_models.py's ``Gate``: a Python ``if`` on a tensor value."""
    return _seeded(Gate)


class ModeDependent(nn.Module):
    """A forward that reads ``self.training`` (a functional dropout): the trace cannot carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(self.fc(x), 0.5, training=self.training)


class TokenOps(nn.Module):
    """No weights; the ops of attention code on ``(N, L, D)`` tokens (torch layout kept)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.size()
        q, k, v = torch.cat([x, x * 2.0, x - 1.0], dim=-1).chunk(3, dim=-1)
        q = q.view(n, t, 2, c // 2).permute(0, 2, 1, 3)
        k = k.reshape(n, t, 2, c // 2).transpose(1, 2)
        v = v.view(n, t, 2, c // 2).transpose(1, 2)
        att = torch.einsum("nhqd,nhkd->nhqk", q, k) / (c // 2) ** 0.5
        mask = torch.ones_like(att).tril() == 0
        att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = (att @ v + y).transpose(1, 2).contiguous().view(n, t, c)
        a, b = y.split([c // 2, c - c // 2], dim=2)
        z = torch.stack([a.sum(-1), b.amax(dim=-1)], dim=1).unsqueeze(-1).squeeze(-1)
        return torch.nn.functional.gelu(z.flatten(1), approximate="tanh") - torch.sigmoid(
            z.mean(dim=(1, 2))
        ).unsqueeze(1)


class ImageOps(nn.Module):
    """No weights; ops on an ``(N, C, H, W)`` map the port holds channels-last (axes remapped)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(x)) + torch.nn.functional.avg_pool2d(x, 2)
        y = torch.cat([y, y * y], dim=1)  # channels: the last axis in the port
        s = torch.nn.functional.softmax(y, dim=1).mean(dim=(2, 3), keepdim=True)
        y = self.avg(y * s)  # (N, 2C, 2, 2)
        tokens = y.flatten(2).transpose(1, 2)  # (N, 4, 2C)
        return torch.cat([tokens.sum(1), y.mean(1).flatten(1), y.permute(0, 2, 3, 1).flatten(1)], dim=1)


class DictGPTBlock(nn.Module):
    """Causal attention as nanoGPT writes it: sizes read from the input, the scale from
    ``math.sqrt`` of a traced size, the mask a buffer sliced to the sequence length."""

    def __init__(self, width: int = 8, heads: int = 2, block: int = 6) -> None:
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.register_buffer("mask", torch.tril(torch.ones(block, block)).view(1, 1, block, block))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.size()
        q, k, v = self.qkv(self.ln(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.mask[:, :, :t, :t] == 0, float("-inf")).softmax(dim=-1)
        return x + (att @ v).transpose(1, 2).reshape(b, t, c)


class DictGPT(nn.Module):
    """nanoGPT's layout: the layers in an ``nn.ModuleDict``, the head tied to
    ``transformer.wte`` inside it, an ``assert`` on a traced size, ``device=idx.device`` and a
    ``targets=None`` parameter the port is never given."""

    def __init__(self, vocab: int = 11, width: int = 8, block: int = 6) -> None:
        super().__init__()
        self.block = block
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab, width),
                wpe=nn.Embedding(block, width),
                h=nn.ModuleList([DictGPTBlock(width, 2, block) for _ in range(2)]),
                ln_f=nn.LayerNorm(width),
            )
        )
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        b, t = idx.size()
        assert t <= self.block, f"sequence of {t} tokens, block size {self.block}"
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device).unsqueeze(0)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is not None:
            return nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits


def dict_gpt() -> nn.Module:
    return _seeded(DictGPT)


class Upsample2d(nn.Module):
    """Transposed convolutions (stride with padding and output_padding; dilation, no bias) and
    a LayerNorm over ``(C, H, W)``; input ``(N, 2, 5, 5)``, output ``(N, 2, 14, 11)``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 2, 3, padding=1)
        self.up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)  # 5 -> 10
        self.spread = nn.ConvTranspose2d(3, 2, (3, 2), dilation=(2, 1), bias=False)  # -> (14, 11)
        self.norm = nn.LayerNorm([2, 14, 11])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.up(self.stem(x)))
        return self.norm(self.spread(y))


def upsample2d() -> nn.Module:
    return _seeded(Upsample2d)


class Upsample1d(nn.Module):
    """A ConvTranspose1d (stride 3, padding 2) and a LayerNorm over the last two axes ``(C, L)``
    between Linears on ``L``; input ``(N, 2, 6)``, output ``(N, 4, 3)``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 6)
        self.up = nn.ConvTranspose1d(2, 4, 4, stride=3, padding=2)  # (6 - 1) * 3 - 4 + 4 = 15
        self.norm = nn.LayerNorm([4, 15])
        self.fc = nn.Linear(15, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.up(self.embed(x))))


def upsample1d() -> nn.Module:
    return _seeded(Upsample1d)


class Renamed(nn.Module):
    """No weights; torch code that reuses its names (``x = x + a``), an alias that outlives the
    name it was read through (``b = a; a = a * 2``), shapes and a split unpacked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.size()
        a = torch.tanh(x)
        b = a
        a = a * 2
        x = x + a
        h, w = x.split(c // 2, dim=-1)
        x = h * w + b[..., : c // 2]
        return x.reshape(n, t * (c // 2))
