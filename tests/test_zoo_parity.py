"""The reference zoo at every parity level, through the general converter.

Uses ``parity.convert.torch_to_flax(state_dict, torch_model, flax_target)`` (Linen variables
from ``module.init`` -> ``{'params', 'batch_stats'}``; an NNX module -> updated in place and
returned) and ``parity.convert.flax_to_torch(flax_source, torch_model)`` -> a state dict.
Marked ``slow`` (about 2.5 minutes on the idle 2-core box, mostly Flax op-by-op localisation):
``python -m pytest -m slow`` runs it, and so does CI.

Levels, each for Linen and NNX: eval forward and train forward layer by layer with BN running
statistics (``localize``), per-parameter gradients (``localize_gradients``), a 20-step
trajectory (``trajectory``, dropout on with shared masks for the ViT), and bit-exact round trips.
Tolerance: 1e-5 relative L2 per tensor, the project's float32 bound (docs/HARNESS.md).

Configurations are tiny versions of the zoo's (same definitions, fewer and narrower blocks) so
the file runs in seconds on a 2-core CPU: a CIFAR-stem BasicBlock ResNet, an ImageNet-stem
(7x7 stride 2, max-pool) Bottleneck ResNet, a 1-D ResNet on 40-sample signals, ``vit_tiny``.

Attention gotchas (need ``nn.MultiheadAttention`` converted): q/k/v order, head layout, mask
polarity, each localised to the layer that reads the attention output (``dropout``): localize
observes torch *leaf* modules, and ``nn.MultiheadAttention`` is not one (``out_proj`` is a child
it never calls).
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
from parity import convert
from parity.harness.compare import rel_l2
from parity.harness.localize import LocalizeOptions, ModelPair, leaf_modules, localize, localize_gradients
from parity.harness.trajectory import trajectory
from torch_impl import resnet as torch_resnet
from torch_impl import vit as torch_vit

pytestmark = pytest.mark.slow

TOL = 1e-5
#: name -> (ResNet arguments, torch input shape NCHW / NCW)
RESNETS = {
    "basic_cifar": (
        dict(block="basic", layers=(1, 1, 1), widths=(4, 8, 16), stem="cifar", num_classes=10),
        (4, 3, 8, 8),
    ),
    "bottleneck_imagenet": (
        dict(block="bottleneck", layers=(1, 1), widths=(4, 8), stem="imagenet", num_classes=10),
        (4, 3, 16, 16),
    ),
    "basic_1d": (
        dict(block="basic", layers=(1, 1, 1), widths=(4, 8, 16), stem="cifar", dims=1, num_classes=10),
        (4, 1, 40),
    ),
}
FRAMEWORKS = ["linen", "nnx"]


def linen_name(torch_name: str) -> str:
    """torch ``layer1.0.conv1`` -> the Linen list-attribute path ``layer1_0.conv1``."""
    parts: list[str] = []
    for p in torch_name.split("."):
        if p.isdigit():
            parts[-1] += f"_{p}"
        else:
            parts.append(p)
    return ".".join(parts)


class Port:
    """A torch model and its converted Flax port, with the maps the harness needs."""

    def __init__(self, torch_model: nn.Module, flax_model, framework: str, x: np.ndarray) -> None:
        self.torch, self.framework = torch_model, framework
        sd = torch_model.state_dict()
        if framework == "linen":
            xf = jnp.asarray(np.moveaxis(x, 1, -1))
            self.flax = flax_model
            self.variables = convert.torch_to_flax(
                sd, torch_model, flax_model.init(jax.random.key(0), xf, train=False)
            )
            names = leaf_modules(torch_model)
            self.layer_map = {n: linen_name(n) for n in names}
        else:
            self.flax = convert.torch_to_flax(sd, torch_model, flax_model)
            self.variables, self.layer_map = None, None

    @property
    def pair(self) -> ModelPair:
        return ModelPair(
            self.torch, self.flax, self.variables, layer_map=self.layer_map or {}, param_map=self.param_map
        )

    def param_map(self, tree) -> dict[str, np.ndarray]:
        """A Flax params-shaped tree (gradients, parameters, moments) -> ``{torch name: array}``."""
        if self.framework == "linen":
            # the ViT has no BatchNorm, so its variables have no batch_stats collection
            sd = convert.flax_to_torch({**self.variables, "params": tree}, self.torch)
        else:
            model = nnx.clone(self.flax)
            state = nnx.state(model, nnx.Param)
            nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, tree))
            nnx.update(model, state)
            sd = convert.flax_to_torch(model, self.torch)
        return {n: np.asarray(sd[n]) for n, _ in self.torch.named_parameters()}


def resnet_port(name: str, framework: str, seed: int = 0) -> tuple[Port, np.ndarray]:
    config, shape = RESNETS[name]
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    torch.manual_seed(seed)
    tm = torch_resnet.ResNet(**config, in_channels=shape[1])
    if framework == "linen":
        fm = linen_resnet.ResNet(**config)
    else:
        fm = nnx_resnet.ResNet(**config, in_channels=shape[1], rngs=nnx.Rngs(seed))
    return Port(tm, fm, framework, x), x


def vit_port(framework: str, dropout: float = 0.1, seed: int = 0) -> tuple[Port, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(4, 3, 8, 8)).astype(np.float32)
    torch.manual_seed(seed)
    tm = torch_vit.vit_tiny(dropout=dropout)
    if framework == "linen":
        fm = linen_vit.vit_tiny(dropout=dropout)
    else:
        fm = nnx_vit.vit_tiny(dropout=dropout, rngs=nnx.Rngs(seed))
    return Port(tm, fm, framework, x), x


def labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, 10, size=n).astype(np.int64)


def flax_logits(port: Port, x: np.ndarray, train: bool = False) -> np.ndarray:
    xf = jnp.asarray(np.moveaxis(x, 1, -1))
    if port.framework == "linen":
        return np.asarray(port.flax.apply(port.variables, xf, train=False))
    model = nnx.clone(port.flax)
    model.eval()
    return np.asarray(model(xf))


# ----------------------------------------------------------------------------------- ResNet


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", sorted(RESNETS))
def test_resnet_forward_in_both_modes(name, framework):
    port, x = resnet_port(name, framework)
    for mode in ("eval", "train"):  # train also compares every BN's running mean and variance
        rep = localize(port.pair, x, LocalizeOptions(mode=mode))
        assert rep.passed, rep.format()
        assert len([r for r in rep.rows if r.kind == "output"]) >= 8
    assert any(r.kind == "running_var" for r in rep.rows)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", ["basic_cifar", "bottleneck_imagenet"])
def test_resnet_gradients(name, framework):
    port, x = resnet_port(name, framework)
    rep = localize_gradients(port.pair, x, labels(len(x)))
    assert rep.passed, rep.format()
    assert len(rep.rows) == len(list(port.torch.parameters()))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resnet_trajectory_20_steps(framework):
    port, _ = resnet_port("basic_cifar", framework)
    rng = np.random.default_rng(3)
    batches = [(rng.normal(size=(4, 3, 8, 8)).astype(np.float32), labels(4, k)) for k in range(20)]
    rep = trajectory(port.pair, batches)
    assert rep.passed and len(rep.rows) == 20, rep.format()


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", sorted(RESNETS))
def test_resnet_round_trip_is_bit_exact(name, framework):
    port, _ = resnet_port(name, framework)
    back = convert.flax_to_torch(port.variables if framework == "linen" else port.flax, port.torch)
    original = port.torch.state_dict()
    assert list(back) == list(original)
    for k, v in original.items():
        assert np.array_equal(np.asarray(back[k]), v.numpy()), k


def test_gotcha_stride_two_same_padding_in_resnet(monkeypatch):
    """'SAME' at stride 2 pads (0, 1): shapes agree, values do not, from the first stride-2 3x3."""
    port, x = resnet_port("basic_cifar", "linen")
    same = lambda kernel, stride, dims: "SAME" if stride == 2 else ((kernel // 2, kernel // 2),) * dims
    monkeypatch.setattr(linen_resnet, "conv_padding", same)
    rep = localize(port.pair.replace(flax=linen_resnet.ResNet(**RESNETS["basic_cifar"][0])), x)
    first = rep.first_divergent
    assert (first.name, first.flax_name) == ("layer2.0.conv1", "layer2_0.conv1"), rep.format()
    assert rep.row("layer2.0.downsample.0").passed  # a 1x1 kernel needs no padding either way


# -------------------------------------------------------------------------------------- ViT


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_vit_eval_forward(framework):
    port, x = vit_port(framework)
    port.torch.eval()
    expected = port.torch(torch.from_numpy(x)).detach().numpy()
    assert rel_l2(flax_logits(port, x), expected) <= TOL


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_vit_gradients_in_train_mode_without_dropout(framework):
    port, x = vit_port(framework, dropout=0.0)
    rep = localize_gradients(port.pair, x, labels(len(x)))
    assert rep.passed, rep.format()
    assert rep.row("encoder.layers.encoder_layer_0.self_attention.in_proj_weight").rel_l2 <= TOL


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_vit_trajectory_without_dropout(framework):
    port, _ = vit_port(framework, dropout=0.0)
    rng = np.random.default_rng(3)
    batches = [(rng.normal(size=(4, 3, 8, 8)).astype(np.float32), labels(4, k)) for k in range(20)]
    rep = trajectory(port.pair, batches)  # sgd, the default
    assert rep.passed and len(rep.rows) == 20, rep.format()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_vit_trajectory_with_shared_dropout_masks(framework):
    """Dropout on token activations ``(N, S, D)``: torch's masks reach Flax unmoved (the same
    layout in both frameworks), the patch embedding's map is compared channels-last."""
    port, _ = vit_port(framework, dropout=0.1)
    rng = np.random.default_rng(3)
    batches = [(rng.normal(size=(4, 3, 8, 8)).astype(np.float32), labels(4, k)) for k in range(20)]
    rep = trajectory(port.pair, batches)  # sgd, the default
    assert rep.passed and len(rep.rows) == 20, rep.format()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_vit_layers_in_train_mode_with_shared_dropout_masks(framework):
    """Every layer, dropout on: token rows ``(N, S, D)`` compared as they are, the patch
    embedding's ``(N, D, 2, 2)`` map channels-last."""
    port, x = vit_port(framework, dropout=0.1)
    rep = localize(port.pair, x, LocalizeOptions(mode="train"))
    assert rep.passed, rep.format()
    assert rep.row("encoder.dropout").shape == (4, 5, 16) and rep.row("conv_proj").shape == (4, 2, 2, 16)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_vit_round_trip_is_bit_exact(framework):
    port, _ = vit_port(framework)
    back = convert.flax_to_torch(port.variables if framework == "linen" else port.flax, port.torch)
    original = port.torch.state_dict()
    assert list(back) == list(original)
    for k, v in original.items():
        assert np.array_equal(np.asarray(back[k]), v.numpy()), k


# ----------------------------------------------------------------------- attention gotchas

S, D, HEADS = 4, 8, 2


class TorchAttention(nn.Module):
    """Flattened tokens ``(N, S*D)`` -> causal self_attention -> mean over tokens ``(N, D)`` ->
    dropout -> head ``(N, 3)``. The mask is torch's polarity: ``True`` = masked out."""

    def __init__(self):
        super().__init__()
        self.self_attention = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.dropout = nn.Dropout(0.0)
        self.head = nn.Linear(D, 3)

    def forward(self, x):
        t = x.view(x.shape[0], S, D)
        masked_out = torch.triu(torch.ones(S, S, dtype=torch.bool), diagonal=1)
        y, _ = self.self_attention(t, t, t, attn_mask=masked_out, need_weights=False)
        return self.head(self.dropout(y.mean(1)))


class LinenAttention(fnn.Module):
    """The port; ``torch_mask=True`` is the fault: torch's mask passed as Flax's (True = attend)."""

    torch_mask: bool = False

    @fnn.compact
    def __call__(self, x, *, train: bool):
        t = x.reshape(x.shape[0], S, D)
        masked_out = jnp.triu(jnp.ones((S, S), bool), k=1)
        mask = masked_out if self.torch_mask else ~masked_out  # Flax: True = attend
        attn = fnn.MultiHeadDotProductAttention(
            num_heads=HEADS, qkv_features=D, out_features=D, name="self_attention"
        )
        y = attn(t, t, t, mask=mask[None, None], deterministic=not train)
        y = fnn.Dropout(0.0, name="dropout")(y.mean(1), deterministic=not train)
        return fnn.Dense(3, name="head")(y)


def attention_port():
    torch.manual_seed(0)
    tm = TorchAttention()
    x = np.random.default_rng(0).normal(size=(2, S * D)).astype(np.float32)
    init = LinenAttention().init(jax.random.key(0), jnp.asarray(x), train=False)
    return tm, convert.torch_to_flax(tm.state_dict(), tm, init), x


def with_attention(variables: dict, **replace) -> dict:
    params = dict(variables["params"])
    params["self_attention"] = {**params["self_attention"], **replace}
    return {"params": params, "batch_stats": variables.get("batch_stats", {})}


def test_attention_port_matches():
    tm, variables, x = attention_port()
    assert localize(ModelPair(tm, LinenAttention(), variables), x).passed


def test_gotcha_qkv_split_order():
    tm, variables, x = attention_port()
    att = variables["params"]["self_attention"]
    wrong = with_attention(variables, query=att["value"], value=att["query"])  # rows read v, k, q
    rep = localize(ModelPair(tm, LinenAttention(), wrong), x)
    assert rep.first_divergent.name == "dropout", rep.format()  # the layer reading self_attention


def test_gotcha_head_layout():
    """Each of q, k, v ``(D, heads, D/heads)`` built with the head index varying fastest."""
    tm, variables, x = attention_port()
    att = variables["params"]["self_attention"]
    interleave = lambda k: np.asarray(k).reshape(D, D // HEADS, HEADS).transpose(0, 2, 1)
    wrong = with_attention(
        variables,
        **{q: {**att[q], "kernel": interleave(att[q]["kernel"])} for q in ("query", "key", "value")},
    )
    rep = localize(ModelPair(tm, LinenAttention(), wrong), x)
    assert rep.first_divergent.name == "dropout", rep.format()


def test_gotcha_attention_mask_polarity():
    tm, variables, x = attention_port()
    rep = localize(ModelPair(tm, LinenAttention(torch_mask=True), variables), x)
    assert rep.first_divergent.name == "dropout", rep.format()
    assert rep.first_divergent.rel_l2 > 0.1
