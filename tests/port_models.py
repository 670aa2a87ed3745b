"""Small models written the way real ports are written, each with one construct the converter
must handle unchanged: a GPT with a tied embedding head and a causal-mask buffer, a ResNet whose
Linen port uses auto-names, bare parameters (class token, layer scale, a projection matrix), a
user-defined RMSNorm, head-split attention kernels (``DenseGeneral``), a LayerNorm applied
twice. Torch layout: tokens ``(N, L)`` int64, images ``(N, C, H, W)``; Flax images NHWC.
"""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM, HEADS, CTX = 11, 8, 2, 6
TOKENS = (2, 5)


# ------------------------------------------------------------------ GPT: tied head, mask buffer
class CausalSelfAttention(nn.Module):
    def __init__(self, persistent: bool = True) -> None:
        super().__init__()
        self.c_attn = nn.Linear(DIM, 3 * DIM)
        self.c_proj = nn.Linear(DIM, DIM)
        mask = torch.tril(torch.ones(CTX, CTX)).view(1, 1, CTX, CTX)
        self.register_buffer("bias", mask, persistent=persistent)  # minGPT's name for the mask

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.c_attn(x).split(DIM, dim=2)
        q, k, v = (z.view(n, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / (c // HEADS) ** 0.5
        att = F.softmax(att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf")), dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).reshape(n, t, c))


class GPTBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(DIM)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, DIM)
        self.wpe = nn.Embedding(CTX, DIM)
        self.h = nn.ModuleList([GPTBlock() for _ in range(2)])
        self.ln_f = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def make_gpt() -> nn.Module:
    torch.manual_seed(0)
    return TinyGPT().eval()


class LinenAttention(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        n, t, c = x.shape
        q, k, v = jnp.split(fnn.Dense(3 * DIM, name="c_attn")(x), 3, axis=-1)
        q, k, v = (z.reshape(n, t, HEADS, c // HEADS).transpose(0, 2, 1, 3) for z in (q, k, v))
        att = (q @ k.transpose(0, 1, 3, 2)) / (c // HEADS) ** 0.5
        mask = jnp.tril(jnp.ones((t, t), bool))  # a constant, not a variable
        att = jax.nn.softmax(jnp.where(mask, att, -jnp.inf), axis=-1)
        return fnn.Dense(DIM, name="c_proj")((att @ v).transpose(0, 2, 1, 3).reshape(n, t, c))


class LinenGPTBlock(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = x + LinenAttention(name="attn")(fnn.LayerNorm(epsilon=1e-5, name="ln_1")(x))
        y = fnn.LayerNorm(epsilon=1e-5, name="ln_2")(x)
        y = fnn.Dense(4 * DIM, name="fc")(y)
        return x + fnn.Dense(DIM, name="proj")(fnn.gelu(y, approximate=False))


class LinenGPT(fnn.Module):
    """``tied``: the head is ``wte.attend`` (as in the torch model); else its own Dense."""

    tied: bool = True

    @fnn.compact
    def __call__(self, idx):
        wte = fnn.Embed(VOCAB, DIM, name="wte")
        x = wte(idx) + fnn.Embed(CTX, DIM, name="wpe")(jnp.arange(idx.shape[1]))
        for i in range(2):
            x = LinenGPTBlock(name=f"h_{i}")(x)
        x = fnn.LayerNorm(epsilon=1e-5, name="ln_f")(x)
        return wte.attend(x) if self.tied else fnn.Dense(VOCAB, use_bias=False, name="lm_head")(x)


GPT_MAP = r"""h\.(\d+)\.mlp\.0 -> h_\1/fc
h\.(\d+)\.mlp\.2 -> h_\1/proj
"""


# ---------------------------------------------------------------- ResNet, Linen auto-names
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(BasicBlock(4, 4, 1), BasicBlock(4, 4, 1))
        self.layer2 = nn.Sequential(BasicBlock(4, 8, 2), BasicBlock(8, 8, 1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


def make_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = TinyResNet()
    with torch.no_grad():
        for name, b in model.named_buffers():
            if "running" in name:
                b.uniform_(0.5, 1.5)
    return model.eval()


class ResNetBlock(fnn.Module):
    """The Flax examples' style: submodules unnamed (``Conv_0``, ``BatchNorm_0``, ...); with
    ``named`` the projection is ``conv_proj``/``norm_proj`` as in the Flax ImageNet example."""

    features: int
    strides: int = 1
    named: bool = False

    @fnn.compact
    def __call__(self, x):
        norm = lambda **kw: fnn.BatchNorm(use_running_average=True, epsilon=1e-5, **kw)  # noqa: E731
        s = (self.strides, self.strides)
        y = fnn.relu(norm()(fnn.Conv(self.features, (3, 3), s, padding=1, use_bias=False)(x)))
        y = norm()(fnn.Conv(self.features, (3, 3), padding=1, use_bias=False)(y))
        if x.shape[-1] != self.features or self.strides != 1:
            names = ("conv_proj", "norm_proj") if self.named else (None, None)
            x = fnn.Conv(self.features, (1, 1), s, use_bias=False, name=names[0])(x)
            x = norm(name=names[1])(x)
        return fnn.relu(x + y)


class LinenResNet(fnn.Module):
    """``named``: the stem and the projections named as in the Flax ImageNet example
    (``conv_init``, ``bn_init``, ``conv_proj``, ``norm_proj``); the rest auto-named."""

    named: bool = False

    @fnn.compact
    def __call__(self, x):
        stem = ("conv_init", "bn_init") if self.named else (None, None)
        x = fnn.Conv(4, (3, 3), padding=1, use_bias=False, name=stem[0])(x)
        x = fnn.relu(fnn.BatchNorm(use_running_average=True, epsilon=1e-5, name=stem[1])(x))
        for features, strides in ((4, 1), (4, 1), (8, 2), (8, 1)):
            x = ResNetBlock(features, strides, named=self.named)(x)
        return fnn.Dense(5)(x.mean((1, 2)))


NAMED_RESNET_MAP = r"""conv1 -> conv_init
bn1 -> bn_init
downsample\.0 -> conv_proj
downsample\.1 -> norm_proj
"""


# -------------------------------------------------- bare parameters, RMSNorm, head-split, shared LN
class RMSNorm(nn.Module):
    """A user-defined layer (the LLaMA style): one scale vector over the last axis."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class HeadSplitAttention(nn.Module):
    """Separate q/k/v ``Linear(d, h*k)`` and an out-projection ``Linear(h*k, d)``."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        self.o = nn.Linear(DIM, DIM)

    def forward(self, x):
        n, t, _ = x.shape
        q, k, v = (p(x).view(n, t, HEADS, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = F.softmax(q @ k.transpose(-2, -1) / (DIM // HEADS) ** 0.5, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(n, t, DIM))


class PortBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = RMSNorm(DIM)
        self.attn = HeadSplitAttention()
        self.gamma = nn.Parameter(torch.full((DIM,), 0.5))  # layer scale, a bare parameter

    def forward(self, x):
        return x + self.gamma * self.attn(self.norm(x))


class BareViT(nn.Module):
    """Bare parameters (``cls``, ``pos``, ``proj`` used as ``x @ proj``, ``head`` used as
    ``F.linear``), one block, and a LayerNorm applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, DIM)
        self.cls = nn.Parameter(torch.randn(1, 1, DIM))
        self.pos = nn.Parameter(torch.randn(1, 5, DIM))
        self.blocks = nn.ModuleList([PortBlock()])
        self.ln = nn.LayerNorm(DIM)
        self.proj = nn.Parameter(torch.randn(DIM, 6))
        self.head = nn.Parameter(torch.randn(4, 6))

    def forward(self, x):  # x: (N, 4, 3) patch features
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], 1) + self.pos
        x = self.ln(x)
        for block in self.blocks:
            x = block(x)
        return F.linear(self.ln(x)[:, 0] @ self.proj, self.head)


def make_bare_vit() -> nn.Module:
    torch.manual_seed(0)
    model = BareViT()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


class LinenPortBlock(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        y = fnn.RMSNorm(epsilon=1e-6, name="norm")(x)
        n, t, _ = y.shape
        q, k, v = (fnn.DenseGeneral((HEADS, DIM // HEADS), name=p)(y) for p in ("q", "k", "v"))
        att = jax.nn.softmax(jnp.einsum("nqhd,nkhd->nhqk", q, k) / (DIM // HEADS) ** 0.5, axis=-1)
        out = jnp.einsum("nhqk,nkhd->nqhd", att, v)
        out = fnn.DenseGeneral(DIM, axis=(-2, -1), name="o")(out)
        return x + self.param("layer_scale", fnn.initializers.ones, (DIM,)) * out


class LinenBareViT(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        cls = self.param("cls_token", fnn.initializers.zeros, (1, 1, DIM))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, DIM)), fnn.Dense(DIM, name="embed")(x)], 1)
        x = x + self.param("pos", fnn.initializers.zeros, (1, 5, DIM))
        x = fnn.LayerNorm(epsilon=1e-5, name="ln_a")(x)
        x = LinenPortBlock(name="blocks_0")(x)
        x = fnn.LayerNorm(epsilon=1e-5, name="ln_b")(x)[:, 0]
        x = fnn.Dense(6, use_bias=False, name="proj")(x)
        return fnn.Dense(4, use_bias=False, name="head")(x)


BARE_VIT_MAP = r"""cls -> cls_token
blocks\.(\d+)\.attn\.(\w) -> blocks.\1.\2
blocks\.(\d+)\.gamma -> blocks.\1.layer_scale
ln -> ln_a, ln_b
"""


# ------------------------------------------------------------------------ bfloat16 checkpoints
def make_bf16() -> nn.Module:
    """A bfloat16 torch model (``Linear(4, 3)``)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3)).to(torch.bfloat16)


def make_bf16_linen() -> fnn.Module:
    """Its Linen port, parameters in bfloat16."""
    return fnn.Sequential([fnn.Dense(3, param_dtype=jnp.bfloat16)])


def make_f32() -> nn.Module:
    """The same model in float32."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3))


def make_f32_linen() -> fnn.Module:
    return fnn.Sequential([fnn.Dense(3)])
