"""Leaf torch layers as Flax layers: the constructor with torch's hyper-parameters written out
(epsilon, momentum ``1 - m``, ``use_bias``, explicit padding pairs, ``use_fast_variance=False``)
and how the layer is called (the layout it needs, and the mode argument in Linen).

Stateless layers (activations, pooling, ``Flatten``) are not Flax modules: they become the
function the op translations (:mod:`parity.port._ops`) write for the same torch function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from parity.layout import conv_transpose_padding
from parity.port._values import Raw


@dataclass
class Ctor:
    """A constructor call: ``func(*args, **kwargs)``; ``args``/``kwargs`` hold ``(name, value)``
    pairs (the name is what a varying value is called when it becomes a class parameter);
    values are literals, :class:`Raw`, nested Ctors or lists of them. ``instance``: a custom
    class instance whose variant and arguments are filled in when the classes are known."""

    func: str
    args: list[tuple[str, Any]] = field(default_factory=list)
    kwargs: list[tuple[str, Any]] = field(default_factory=list)
    instance: Any = None


@dataclass(frozen=True)
class Leaf:
    """A leaf layer: its constructor, the layout its input needs (``'cl'``, ``'torch'``) and
    its call kind (``'plain'``, ``'bn'``, ``'dropout'``, ``'mha'``)."""

    ctor: Ctor | None
    layout: str = "torch"
    call: str = "plain"
    problem: str | None = None


def _conv(m: nn.Module, style: str) -> Leaf:
    dims = len(m.kernel_size)
    if m.padding_mode != "zeros":
        return Leaf(None, problem=f"padding_mode={m.padding_mode!r}")
    if isinstance(m.padding, str):  # 'valid' or 'same' (stride 1): explicit pairs, torch's split
        pads = [(0, 0)] * dims
        if m.padding == "same":
            total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
            pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in m.padding]
    head = [("in_features", m.in_channels)] if style == "nnx" else []
    ns = "nnx" if style == "nnx" else "nn"
    args = [*head, ("out_features" if style == "nnx" else "features", m.out_channels)]
    kwargs = [("kernel_size", tuple(m.kernel_size))]
    kwargs.append(("strides", tuple(m.stride)))
    kwargs.append(("padding", tuple(pads)))
    if any(d != 1 for d in m.dilation):
        kwargs.append(("kernel_dilation", tuple(m.dilation)))
    if m.groups != 1:
        kwargs.append(("feature_group_count", m.groups))
    kwargs.append(("use_bias", m.bias is not None))
    return Leaf(Ctor(f"{ns}.Conv", args, kwargs), layout="cl")


def _conv_transpose(m: nn.modules.conv._ConvTransposeNd, style: str) -> Leaf:
    """Flax ``ConvTranspose`` (``transpose_kernel=False``; the converter flips the kernel) with
    explicit padding pairs ``(d*(k-1) - p, d*(k-1) - p + output_padding)`` per axis."""
    if m.padding_mode != "zeros" or m.groups != 1:
        return Leaf(None, problem=f"padding_mode={m.padding_mode!r} or groups={m.groups} (Flax has neither)")
    pads = conv_transpose_padding(m.kernel_size, m.padding, m.dilation, m.output_padding)
    head = [("in_features", m.in_channels)] if style == "nnx" else []
    ns = "nnx" if style == "nnx" else "nn"
    args = [*head, ("out_features" if style == "nnx" else "features", m.out_channels)]
    kwargs = [("kernel_size", tuple(m.kernel_size)), ("strides", tuple(m.stride)), ("padding", tuple(pads))]
    if any(d != 1 for d in m.dilation):
        kwargs.append(("kernel_dilation", tuple(m.dilation)))
    kwargs.append(("use_bias", m.bias is not None))
    return Leaf(Ctor(f"{ns}.ConvTranspose", args, kwargs), layout="cl")


def _linear(m: nn.Linear, style: str) -> Leaf:
    if style == "nnx":
        return Leaf(
            Ctor(
                "nnx.Linear",
                [("in_features", m.in_features), ("out_features", m.out_features)],
                [("use_bias", m.bias is not None)],
            )
        )
    return Leaf(Ctor("nn.Dense", [("features", m.out_features)], [("use_bias", m.bias is not None)]))


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, style: str) -> Leaf:
    if m.momentum is None or not m.track_running_stats:
        return Leaf(None, problem="BatchNorm with momentum=None or track_running_stats=False")
    head = [("num_features", m.num_features)] if style == "nnx" else []
    kwargs = [("momentum", round(1.0 - m.momentum, 12)), ("epsilon", m.eps)]
    if not m.affine:
        kwargs += [("use_scale", False), ("use_bias", False)]
    kwargs.append(("use_fast_variance", False))
    ns = "nnx" if style == "nnx" else "nn"
    layout = "cl" if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) else "any"
    return Leaf(Ctor(f"{ns}.BatchNorm", head, kwargs), layout=layout, call="bn")


def _layer_norm(m: nn.LayerNorm, style: str) -> Leaf:
    """Over ``k`` trailing axes: ``reduction_axes`` and ``feature_axes`` ``(-k, ..., -1)``. NNX
    would create its scale and bias flat (``num_features``, the product): the generated
    ``torch_shaped`` initializers give them torch's (and Linen's) shape, which Flax reshapes
    onto the feature axes the same way, and the converter copies torch's weights as they are."""
    affine = m.elementwise_affine
    bias = affine and m.bias is not None
    kwargs = [("epsilon", m.eps), ("use_scale", affine), ("use_bias", bias), ("use_fast_variance", False)]
    k, shape = len(m.normalized_shape), tuple(m.normalized_shape)
    if k > 1:
        axes = tuple(range(-k, 0))
        kwargs += [("reduction_axes", axes), ("feature_axes", axes)]
    if k > 1 and style == "nnx":  # torch's shape for the scale and bias, not NNX's flat one
        kwargs += [
            (f"{name}_init", Raw(f"torch_shaped(nnx.initializers.{init}, {shape})"))
            for name, init, on in (("scale", "ones", affine), ("bias", "zeros", bias))
            if on
        ]
    if style == "nnx":
        return Leaf(Ctor("nnx.LayerNorm", [("num_features", math.prod(m.normalized_shape))], kwargs))
    return Leaf(Ctor("nn.LayerNorm", [], kwargs))


def _group_norm(m: nn.GroupNorm, style: str) -> Leaf:
    kwargs = [
        ("num_groups", m.num_groups),
        ("epsilon", m.eps),
        ("use_scale", m.affine),
        ("use_bias", m.affine),
    ]
    kwargs.append(("use_fast_variance", False))
    if style == "nnx":
        return Leaf(Ctor("nnx.GroupNorm", [("num_features", m.num_channels)], kwargs), layout="cl")
    return Leaf(Ctor("nn.GroupNorm", [], kwargs), layout="cl")


def _embedding(m: nn.Embedding, style: str) -> Leaf:
    if m.max_norm is not None:
        return Leaf(None, problem="Embedding with max_norm")
    args = [("num_embeddings", m.num_embeddings), ("features", m.embedding_dim)]
    if style == "linen":
        return Leaf(Ctor("nn.Embed", args))
    # nnx.Embed fixes its dtype to the table's at construction (float32): keep the table's
    # dtype at call time instead, so the port computes in float64 when its weights are float64
    return Leaf(Ctor("nnx.Embed", args, [("promote_dtype", Raw("keep_table_dtype"))]))


def _dropout(m: nn.Dropout, style: str) -> Leaf:
    ns = "nnx" if style == "nnx" else "nn"
    return Leaf(Ctor(f"{ns}.Dropout", [("rate", m.p)]), layout="any", call="dropout")


def _attention(m: nn.MultiheadAttention, style: str) -> Leaf:
    if not m._qkv_same_embed_dim or m.bias_k is not None:
        return Leaf(None, problem="MultiheadAttention with kdim/vdim or add_bias_kv")
    e, bias = m.embed_dim, m.in_proj_bias is not None
    kwargs = [("use_bias", bias)]
    if m.dropout:
        kwargs.append(("dropout_rate", m.dropout))
    if style == "nnx":
        args = [("num_heads", m.num_heads), ("in_features", e), ("qkv_features", e), ("out_features", e)]
        kwargs += [("decode", False), ("attention_fn", Raw("attention"))]
        return Leaf(Ctor("nnx.MultiHeadAttention", args, kwargs), call="mha")
    args = [("num_heads", m.num_heads)]
    kwargs = [("qkv_features", e), ("out_features", e), *kwargs]
    return Leaf(Ctor("nn.MultiHeadDotProductAttention", args, kwargs), call="mha")


LEAVES = {
    nn.modules.conv._ConvTransposeNd: _conv_transpose,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    nn.Linear: _linear,
    nn.modules.batchnorm._BatchNorm: _batch_norm,
    nn.LayerNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
    nn.Embedding: _embedding,
    nn.Dropout: _dropout,
    nn.MultiheadAttention: _attention,
}

#: stateless layers -> (op name as in :mod:`parity.port._ops`, torch keyword arguments)
STATELESS = {
    nn.ReLU: lambda m: ("relu", {}),
    nn.ReLU6: lambda m: ("relu6", {}),
    nn.SiLU: lambda m: ("silu", {}),
    nn.Sigmoid: lambda m: ("sigmoid", {}),
    nn.Tanh: lambda m: ("tanh", {}),
    nn.Hardswish: lambda m: ("hardswish", {}),
    nn.GELU: lambda m: ("gelu", {"approximate": m.approximate}),
    nn.LeakyReLU: lambda m: ("leaky_relu", {"negative_slope": m.negative_slope}),
    nn.ELU: lambda m: ("elu", {"alpha": m.alpha}),
    nn.Softplus: lambda m: ("softplus", {"beta": m.beta, "threshold": m.threshold}),
    nn.Identity: lambda m: ("contiguous", {}),
    nn.Flatten: lambda m: ("flatten", {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    nn.Softmax: lambda m: ("softmax", {"dim": m.dim}),
    nn.LogSoftmax: lambda m: ("log_softmax", {"dim": m.dim}),
}


def _pooling(kind: str, dims: int):
    def entry(m: nn.Module) -> tuple[str, dict]:
        kw = {
            "kernel_size": m.kernel_size,
            "stride": m.stride,
            "padding": m.padding,
            "ceil_mode": m.ceil_mode,
        }
        if kind == "max":
            kw["dilation"] = m.dilation
        else:
            kw["count_include_pad"] = m.count_include_pad
            kw.update({"divisor_override": m.divisor_override} if dims > 1 else {})
        return f"{kind}_pool{dims}d", kw

    return entry


def _adaptive(dims: int):
    return lambda m: (f"adaptive_avg_pool{dims}d", {"output_size": m.output_size})


for _d in (1, 2, 3):
    STATELESS[getattr(nn, f"MaxPool{_d}d")] = _pooling("max", _d)
    STATELESS[getattr(nn, f"AvgPool{_d}d")] = _pooling("avg", _d)
    STATELESS[getattr(nn, f"AdaptiveAvgPool{_d}d")] = _adaptive(_d)

#: how a stateless layer appears inside an ``nnx.Sequential``, when it is element-wise
SEQUENTIAL_FUNCTIONS = {
    "relu": "jax.nn.relu",
    "relu6": "jax.nn.relu6",
    "silu": "jax.nn.silu",
    "sigmoid": "jax.nn.sigmoid",
    "tanh": "jnp.tanh",
    "hardswish": "jax.nn.hard_swish",
}


def lookup(table: dict, module: nn.Module):
    """The entry of ``table`` for ``type(module)`` or its nearest base class, or ``None``."""
    for klass in type(module).__mro__:
        if klass in table:
            return table[klass]
    return None
