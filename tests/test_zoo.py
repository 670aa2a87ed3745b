"""The reference zoo's structure, and the porting gotchas that need no general converter.

Structure: torchvision's names, parameter counts (torchvision's published ones for
ResNet-18/34/50 and ViT-B/16, the same count in torch, Linen and NNX), output shapes.

Gotchas (MIGRATION.md, "Reference zoo"), each a small torch model and its Flax port whose
weights are written here with :mod:`parity.layout`, one deliberate mistake, and ``localize``
naming the layer that makes it:

==============================  ===================================  ==========================
gotcha                          fault injected                       localised to
==============================  ===================================  ==========================
stride-2 padding                ``'SAME'`` instead of ((1, 1),)*2    ``conv1`` (shape equal)
GELU approximation              ``jax.nn.gelu`` default (tanh)       ``act``
LayerNorm eps                   1e-5 instead of 1e-6                 ``ln``
``count_include_pad``           Flax default with torch ``False``    ``pool``
``Embedding(padding_idx)``      plain ``nn.Embed``                   ``embedding.weight`` grad
ConvTranspose padding           torch's ``padding`` copied           ``deconv`` (shape)
==============================  ===================================  ==========================

Attention gotchas (q/k/v order, head layout, mask polarity) need ``nn.MultiheadAttention``
converted and live in ``tests/test_zoo_parity.py``.
"""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from flax_impl import linen_resnet, linen_vit, nnx_resnet, nnx_vit
from parity import layout
from parity.harness.localize import GradientOptions, localize, localize_gradients
from parity.harness.pair import ModelPair
from torch_impl import resnet as torch_resnet
from torch_impl import vit as torch_vit

# torchvision's published parameter counts (1000 classes): ResNet docs / model builders.
TORCHVISION_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "vit_b_16": 86_567_656,
}
TORCH = {**torch_resnet.FACTORIES, **torch_vit.FACTORIES}
LINEN = {**linen_resnet.FACTORIES, **linen_vit.FACTORIES}
NNX = {**nnx_resnet.FACTORIES, **nnx_vit.FACTORIES}
#: torch input shape (NCHW / NCW) per model, small enough for the CPU.
INPUT = {
    "resnet20": (2, 3, 16, 16),
    "resnet20_1d": (2, 1, 40),
    "resnet18": (2, 3, 32, 32),
    "vit_tiny": (2, 3, 8, 8),
}


def count(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def torch_count(name: str) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return sum(p.numel() for p in TORCH[name]().parameters())


def linen_params_shape(name: str, input_shape) -> dict:
    x = jnp.zeros((1, *input_shape[2:], input_shape[1]))
    return jax.eval_shape(lambda: LINEN[name]().init(jax.random.key(0), x, train=False))["params"]


def nnx_params_shape(name: str):
    return nnx.state(nnx.eval_shape(lambda: NNX[name](rngs=nnx.Rngs(0))), nnx.Param)


def owners(keys, sep: str) -> set[str]:
    """Modules that own parameters, '.'-joined; attention projections collapse into their layer."""
    out = set()
    for key in keys:
        parts = [str(p) for p in key.split(sep)[:-1]] if isinstance(key, str) else [str(p) for p in key[:-1]]
        if parts and parts[-1] in ("query", "key", "value", "out", "out_proj"):
            parts = parts[:-1]
        out.add(".".join(parts))
    return out


def linen_name(torch_name: str) -> str:
    """torch ``layer1.0.conv1`` -> Linen list attribute ``layer1_0.conv1``."""
    parts: list[str] = []
    for p in torch_name.split("."):
        if p.isdigit():
            parts[-1] += f"_{p}"
        else:
            parts.append(p)
    return ".".join(parts)


# ----------------------------------------------------------------------------- structure


def test_resnet_has_torchvision_names():
    with torch.device("meta"):
        keys = list(torch_resnet.resnet50().state_dict())
        basic = set(torch_resnet.resnet18().state_dict())
    assert keys[:6] == [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.num_batches_tracked",
    ]
    for key in ["layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
                "layer4.2.bn3.bias", "fc.weight", "fc.bias"]:  # fmt: skip
        assert key in keys
    assert "layer1.0.downsample.0.weight" not in basic  # 64 -> 64, stride 1: identity shortcut
    assert {"layer2.0.downsample.0.weight", "layer4.1.conv2.weight"} <= basic


def test_vit_has_torchvision_names():
    keys = set(torch_vit.vit_tiny().state_dict())
    block = "encoder.layers.encoder_layer_1."
    expected = {
        "class_token",
        "conv_proj.weight",
        "conv_proj.bias",
        "encoder.pos_embedding",
        "encoder.ln.weight",
        "heads.head.weight",
    }
    suffixes = ["ln_1.weight", "self_attention.in_proj_weight", "self_attention.out_proj.bias"]
    suffixes += ["ln_2.bias", "mlp.0.weight", "mlp.3.bias"]
    expected |= {block + s for s in suffixes}
    assert expected <= keys
    assert all(m.eps == 1e-6 for m in torch_vit.vit_tiny().modules() if isinstance(m, nn.LayerNorm))


@pytest.mark.parametrize("name", ["resnet20", "resnet20_1d", "vit_tiny"])
def test_flax_paths_follow_the_naming_conventions(name):
    """Linen: torch names with list indices joined by '_'; NNX: torch names exactly."""
    torch_keys = [k for k, _ in TORCH[name]().named_parameters()]
    linen_keys = jax.tree_util.tree_flatten_with_path(linen_params_shape(name, INPUT[name]))[0]
    linen = owners([tuple(p.key for p in path) for path, _ in linen_keys], "/")
    nnx_state = nnx.to_pure_dict(nnx_params_shape(name))
    nnx_paths = jax.tree_util.tree_flatten_with_path(nnx_state)[0]
    nnx_keys = [tuple(getattr(p, "key", getattr(p, "idx", p)) for p in path) for path, _ in nnx_paths]
    expected = owners(torch_keys, ".")
    assert owners(nnx_keys, "/") == expected
    assert linen == {linen_name(n) for n in expected}


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "vit_b_16"])
def test_torch_parameter_counts_are_torchvisions(name):
    assert torch_count(name) == TORCHVISION_COUNTS[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet20", "resnet20_1d", "vit_tiny"])
def test_same_parameter_count_in_all_three_frameworks(name):
    shape = INPUT.get(name, (1, 3, 64, 64))
    n = torch_count(name)
    assert count(linen_params_shape(name, shape)) == n
    assert count(nnx_params_shape(name)) == n


@pytest.mark.parametrize("name", sorted(INPUT))
def test_output_shapes(name):
    """torch runs; Flax is traced only (``jax.eval_shape``: shapes without compiling or running)."""
    shape = INPUT[name]
    expected = (shape[0], 1000 if name == "resnet18" else 10)
    assert tuple(TORCH[name]().eval()(torch.zeros(shape)).shape) == expected
    x = jnp.zeros((shape[0], *shape[2:], shape[1]))
    lm = LINEN[name]()
    assert (
        jax.eval_shape(lambda: lm.apply(lm.init(jax.random.key(0), x, train=False), x, train=False)).shape
        == expected
    )

    def nnx_forward():
        model = NNX[name](rngs=nnx.Rngs(0))
        model.eval()
        return model(x)

    assert jax.eval_shape(nnx_forward).shape == expected


def test_stride_two_padding_is_symmetric_and_explicit():
    """Every Flax conv pads kernel // 2 on both sides; 'SAME' appears nowhere."""
    assert linen_resnet.conv_padding(3, 2, 2) == ((1, 1), (1, 1))
    assert nnx_resnet.conv_padding(7, 2, 2) == ((3, 3), (3, 3))
    # padding is a static attribute: an abstract model has it (nnx.eval_shape, nothing compiled;
    # the eager build compiled every initializer: 18.1 s CPU in isolation, now 0.9 s)
    model = nnx.eval_shape(lambda: nnx_resnet.resnet20(rngs=nnx.Rngs(0)))
    convs = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)]
    assert len(convs) == 21 and all(isinstance(c.padding, tuple) for c in convs)


# ------------------------------------------------------------------------------- gotchas


class TorchStrided(nn.Module):
    """``(N, 2, 8, 8)`` -> conv1 (3x3, stride 2, padding 1) -> ``(N, 4, 4, 4)``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False)

    def forward(self, x):
        return self.conv1(x)


class LinenStrided(fnn.Module):
    """The port: padding from ``linen_resnet.conv_padding`` (the function the zoo uses)."""

    @fnn.compact
    def __call__(self, x):
        pad = linen_resnet.conv_padding(3, 2, 2)
        return fnn.Conv(4, (3, 3), strides=(2, 2), padding=pad, use_bias=False, name="conv1")(x)


def test_gotcha_stride_two_same_padding(monkeypatch):
    torch.manual_seed(0)
    tm = TorchStrided()
    variables = {
        "params": {"conv1": {"kernel": layout.conv_kernel_to_flax(tm.conv1.weight.detach().numpy())}}
    }
    x = np.random.default_rng(0).normal(size=(2, 2, 8, 8)).astype(np.float32)
    assert localize(ModelPair(tm, LinenStrided(), variables), x).passed
    monkeypatch.setattr(linen_resnet, "conv_padding", lambda k, s, d: "SAME")
    rep = localize(ModelPair(tm, LinenStrided(), variables), x)
    # same output shape (4x4), shifted window: pads (0, 1) instead of (1, 1)
    assert rep.first_divergent.name == "conv1" and rep.first_divergent.shape == (2, 4, 4, 4), rep.format()
    assert rep.first_divergent.rel_l2 > 0.1


class TorchMLP(nn.Module):
    """``(N, 6)`` -> fc1 -> ln (eps 1e-6, no affine) -> act (GELU) -> fc2 -> ``(N, 3)``."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.ln = nn.LayerNorm(8, eps=1e-6, elementwise_affine=False)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.ln(self.fc1(x))))


class Gelu(fnn.Module):
    """A parameter-free module around ``linen_vit.gelu`` so that localize can see it."""

    @fnn.compact
    def __call__(self, x):
        return linen_vit.gelu(x)


class LinenMLP(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        x = fnn.Dense(8, name="fc1")(x)
        x = fnn.LayerNorm(epsilon=linen_vit.LN_EPSILON, use_scale=False, use_bias=False, use_fast_variance=False, name="ln")(x)  # fmt: skip
        return fnn.Dense(3, name="fc2")(Gelu(name="act")(x))


def mlp_pair(x_scale: float):
    torch.manual_seed(0)
    tm = TorchMLP()
    dense = lambda m: {"kernel": m.weight.detach().numpy().T, "bias": m.bias.detach().numpy()}
    variables = {"params": {"fc1": dense(tm.fc1), "fc2": dense(tm.fc2)}}
    x = (x_scale * np.random.default_rng(0).normal(size=(4, 6))).astype(np.float32)
    return tm, variables, x


def test_gotcha_gelu_tanh_approximation(monkeypatch):
    tm, variables, x = mlp_pair(1.0)
    assert localize(ModelPair(tm, LinenMLP(), variables), x).passed
    monkeypatch.setattr(linen_vit, "GELU_APPROXIMATE", True)  # jax.nn.gelu's own default
    rep = localize(ModelPair(tm, LinenMLP(), variables), x)
    assert rep.first_divergent.name == "act", rep.format()
    assert rep.row("ln").passed and rep.row("act").rel_l2 > 1e-5


def test_gotcha_layernorm_eps(monkeypatch):
    """eps enters as 1/sqrt(var + eps): the gap is ~(eps_a - eps_b) / (2 var), visible above the
    1e-5 tolerance only for small-variance inputs (var ~1e-4 here: gap ~5e-2)."""
    tm, variables, x = mlp_pair(0.01)
    assert localize(ModelPair(tm, LinenMLP(), variables), x).passed
    monkeypatch.setattr(linen_vit, "LN_EPSILON", 1e-5)  # torch nn.LayerNorm's default
    rep = localize(ModelPair(tm, LinenMLP(), variables), x)
    assert rep.first_divergent.name == "ln", rep.format()
    assert rep.row("fc1").passed


class TorchPool(nn.Module):
    """``(N, 2, 6, 6)`` -> pool (3x3 average, stride 1, padding 1, count_include_pad=False)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)

    def forward(self, x):
        return self.pool(x)


class AvgPool(fnn.Module):
    count_include_pad: bool

    @fnn.compact
    def __call__(self, x):
        return fnn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=self.count_include_pad)


class LinenPool(fnn.Module):
    count_include_pad: bool = False

    @fnn.compact
    def __call__(self, x):
        return AvgPool(self.count_include_pad, name="pool")(x)


def test_gotcha_count_include_pad():
    x = np.random.default_rng(0).normal(size=(2, 2, 6, 6)).astype(np.float32) + 1.0
    assert localize(ModelPair(TorchPool(), LinenPool(False), {"params": {}}), x).passed
    rep = localize(ModelPair(TorchPool(), LinenPool(True), {"params": {}}), x)  # Flax's default
    assert rep.first_divergent.name == "pool", rep.format()
    # only the border differs: interior windows have no padding to count
    assert 0.3 < rep.first_divergent.outside < 0.9


class TorchEmbed(nn.Module):
    """Token ids ``(N, 5)`` int64 -> embedding (padding_idx 0) ``(N, 5, 4)`` -> flatten -> fc ``(N, 3)``."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(7, 4, padding_idx=0)
        self.fc = nn.Linear(20, 3)

    def forward(self, ids):
        return self.fc(self.embedding(ids).flatten(1))


class LinenEmbed(fnn.Module):
    stop_padding_gradient: bool = True

    @fnn.compact
    def __call__(self, ids):
        emb = fnn.Embed(7, 4, name="embedding")(ids)
        if self.stop_padding_gradient:  # torch's padding_idx: that row gets no gradient
            emb = jnp.where((ids == 0)[..., None], jax.lax.stop_gradient(emb), emb)
        return fnn.Dense(3, name="fc")(emb.reshape(ids.shape[0], -1))


def test_gotcha_embedding_padding_idx_gets_no_gradient():
    torch.manual_seed(0)
    tm = TorchEmbed()
    params = {
        "embedding": {"embedding": tm.embedding.weight.detach().numpy()},
        "fc": {"kernel": tm.fc.weight.detach().numpy().T, "bias": tm.fc.bias.detach().numpy()},
    }
    to_torch = lambda g: {
        "embedding.weight": g["embedding"]["embedding"],
        "fc.weight": g["fc"]["kernel"].T,
        "fc.bias": g["fc"]["bias"],
    }
    ids = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 6, 0]], np.int64)  # 0 = padding
    y = np.array([0, 2], np.int64)
    kw = {"variables": {"params": params}, "param_map": to_torch, "call_kwargs": lambda t: {}}
    eval_mode = GradientOptions(mode="eval")
    assert localize_gradients(ModelPair(tm, LinenEmbed(True), **kw), ids, y, eval_mode).passed
    rep = localize_gradients(ModelPair(tm, LinenEmbed(False), **kw), ids, y, eval_mode)
    assert rep.first_divergent.name == "embedding.weight", rep.format()
    assert tm.embedding.weight[0].abs().max() == 0  # torch also initialises the padding row to 0


class TorchDeconv(nn.Module):
    """``(N, 2, 4, 4)`` -> deconv (ConvTranspose2d k4, stride 2, padding 1) -> ``(N, 3, 8, 8)``."""

    def __init__(self):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(2, 3, 4, stride=2, padding=1, bias=False)

    def forward(self, x):
        return self.deconv(x)


class LinenDeconv(fnn.Module):
    padding: object

    @fnn.compact
    def __call__(self, x):
        return fnn.ConvTranspose(
            3, (4, 4), strides=(2, 2), padding=self.padding, use_bias=False, name="deconv"
        )(x)


def deconv_kernel_to_flax(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose weight ``(I, O, kH, kW)`` -> Flax ``(kH, kW, I, O)``, spatially flipped
    (Flax's default ``transpose_kernel=False`` runs a plain dilated convolution)."""
    return np.ascontiguousarray(np.flip(w.transpose(2, 3, 0, 1), (0, 1)))


def test_gotcha_conv_transpose_padding():
    """torch ``padding=p`` removes p rows from each side of the full output; Flax's ``padding``
    pads the stride-dilated input, so the same layer needs ``k - 1 - p`` = 2 per side."""
    torch.manual_seed(0)
    tm = TorchDeconv()
    variables = {"params": {"deconv": {"kernel": deconv_kernel_to_flax(tm.deconv.weight.detach().numpy())}}}
    x = np.random.default_rng(0).normal(size=(2, 2, 4, 4)).astype(np.float32)
    assert localize(ModelPair(tm, LinenDeconv(((2, 2), (2, 2))), variables), x).passed
    rep = localize(ModelPair(tm, LinenDeconv(((1, 1), (1, 1))), variables), x)  # torch's number copied
    assert rep.first_divergent.name == "deconv" and "shape (2, 6, 6, 3)" in rep.first_divergent.note, (
        rep.format()
    )


def test_resnet20_1d_trains_on_mnist1d_on_the_cpu():
    """One pass over 1600 MNIST-1D signals (batch 32, SGD 0.05 momentum 0.9) lowers the loss
    and lifts test accuracy well above chance (0.1)."""
    from parity.data import iterate_batches, load
    from torch_impl.train import evaluate, make_optimizer, train_step

    ds = load("mnist1d")
    torch.manual_seed(0)
    model = torch_resnet.resnet20_1d()
    optimizer = make_optimizer(model)
    model.train()
    batches = list(iterate_batches(ds.x_train[:1600], ds.y_train[:1600], 32, seed=0, epoch=0))
    losses = [
        float(train_step(model, optimizer, torch.from_numpy(x), torch.from_numpy(y))) for x, y in batches
    ]
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    model.eval()
    _, accuracy = evaluate(model, ds.x_test, ds.y_test)
    assert accuracy > 0.25
