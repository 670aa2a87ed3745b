"""Find every ``nn.Linear`` fed by a flattened channels-first feature map.

torch flattens ``(N, C, *spatial)`` as ``c*S + s`` (``S`` the spatial size), a channels-last
Flax port as ``s*C + c``; such a Linear's weight columns must be permuted, not just transposed
(:func:`parity.layout.dense_kernel_to_flax`). The permutation depends on ``C`` and ``S`` only,
not on how ``S`` splits into ``H, W``, so ``(C, S)`` is all a rule needs.

Sources, in order of preference:

* ``given``: ``{linear name: (C, *spatial)}`` from the caller (``--flatten LAYER=C,H,W``);
* ``torch.fx`` tracing: a flatten (``torch.flatten(x, 1)``, ``x.flatten(1)``, ``nn.Flatten()``,
  ``x.view(n, -1)``, ``x.reshape(n, -1)``) reaching a Linear through element-wise ops. ``C``
  comes from the nearest module upstream that fixes the channel count (conv, BN, GroupNorm)
  through channel-keeping ops (activations, pooling, residual adds) and ``S = in_features / C``;
  no forward pass is run. Where that walk cannot tell ``C`` and an ``input_shape`` (torch
  layout) is given, a dry run with ``ShapeProp`` gives the shapes.

When tracing is impossible and an ``input_shape`` is given, one eval-mode forward pass with hooks
finds each Linear whose 2-D input has as many features as the previous leaf module's
``(C, *spatial)`` output. Without an input shape, when the first Linear after a convolution takes
``C*S`` features (``S > 1``), detection raises :class:`ConversionError` asking for
``--flatten``: it never guesses.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from parity.convert.common import ConversionError


@dataclass(frozen=True)
class FlattenInfo:
    """``shapes``: ``{linear name: (C, *spatial)}``; ``method``: how they were found (for reports)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    method: str = "none needed"


_ELEMENTWISE_FUNCS = {F.relu, F.gelu, F.silu, F.dropout, torch.relu, torch.tanh, torch.sigmoid, F.elu}
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Softplus,
    nn.Dropout,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.Identity,
)
_CHANNEL_KEEPING_FUNCS = _ELEMENTWISE_FUNCS | {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    operator.add,
    torch.add,
}
#: Pooling modules: channels-first in, channels-first out (also read by
#: :func:`parity.layout.layout_hint`).
POOLING_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_CHANNEL_KEEPING_MODULES = (
    _ELEMENTWISE_MODULES
    + POOLING_MODULES
    + (
        nn.Dropout1d,
        nn.Dropout2d,
        nn.Dropout3d,
    )
)


_CHANNELS_FIRST_MODULES = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    *_CHANNEL_KEEPING_MODULES,
)


def detect_flattens(
    model: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    given: dict[str, tuple[int, ...]] | None = None,
    input_dtype: torch.dtype = torch.float32,
) -> FlattenInfo:
    """``{linear name: (C, *spatial)}`` for every Linear fed by a flattened channels-first map."""
    if given:
        return FlattenInfo(dict(given), "given (--flatten)")
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # any failure of tracing user code
        hooked = _hook_flattens(model, input_shape, input_dtype) if input_shape is not None else None
        if hooked is not None:
            return FlattenInfo(hooked, "forward hooks on --input-shape (torch.fx cannot trace it)")
        if _conv_before_linear(model):
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConversionError(
                f"{type(model).__name__}: torch.fx cannot trace it ({reason[:160]}), so a flatten into a "
                "Linear cannot be detected; give --input-shape (a dry run finds it) or pass "
                "--flatten LAYER=C,H,W (flatten_shapes=...)"
            ) from None
        return FlattenInfo({}, "none (not traceable; no convolution before a Linear)")
    try:
        return FlattenInfo(_linear_flattens(gm, False), "torch.fx (channels from modules)")
    except ConversionError:
        if input_shape is None:
            raise
    from torch.fx.passes.shape_prop import ShapeProp  # a dry run: only when channel tracing fails

    try:
        ShapeProp(gm).propagate(torch.zeros(input_shape, dtype=input_dtype))
    except Exception as e:  # the dry run of user code failed
        raise ConversionError(
            f"{type(model).__name__}: a dry run on {tuple(input_shape)} failed ({type(e).__name__}); "
            "pass --flatten LAYER=C,H,W"
        ) from None
    return FlattenInfo(_linear_flattens(gm, True), "torch.fx + ShapeProp")


def _hook_flattens(model: nn.Module, input_shape, input_dtype) -> dict[str, tuple[int, ...]] | None:
    """``{linear: (C, *spatial)}`` from one eval-mode forward pass with hooks: a Linear whose
    input is ``(N, F)`` after a channels-first module (conv, norm, pooling; activations pass
    through) output ``(N, C, *spatial)`` with ``F = C*S``, ``S > 1``; ``None`` when the pass
    fails. Nothing of the model changes."""
    names = {m: n for n, m in model.named_modules()}
    last: list[tuple[int, ...] | None] = [None]  # the latest channels-first map, None after tokens
    found: dict[str, tuple[int, ...]] = {}

    def hook(module, args, output):
        if isinstance(module, nn.Linear) and args and isinstance(args[0], torch.Tensor):
            shape, cs = tuple(args[0].shape), last[-1]
            if len(shape) == 2 and cs and math.prod(cs) == shape[1] and math.prod(cs[1:]) > 1:
                found[names[module]] = cs
        leaf = not any(True for _ in module.children())
        if not leaf or not isinstance(output, torch.Tensor) or output.dim() < 3:
            return
        if isinstance(module, _ELEMENTWISE_MODULES):
            return  # an activation keeps whatever layout it was given
        channels_first = isinstance(module, _CHANNELS_FIRST_MODULES)
        last.append(tuple(output.shape[1:]) if channels_first else None)  # None: e.g. LayerNorm on tokens

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()(torch.zeros(input_shape, dtype=input_dtype))
    except Exception:  # user code: the dry run only helps when it runs
        return None
    finally:
        for h in handles:
            h.remove()
        model.train(training)
    return found


def _linear_flattens(gm: torch.fx.GraphModule, have_shapes: bool) -> dict[str, tuple[int, ...]]:
    modules = dict(gm.named_modules())
    shapes = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            shape = _flattened_shape(node, modules, have_shapes)
            if shape is not None and math.prod(shape[1:]) > 1:
                shapes[node.target] = shape
    return shapes


def _conv_before_linear(model: nn.Module) -> bool:
    """Whether a Linear registered after a convolution could take its flattened map:
    ``in_features`` a multiple ``C*S`` (``S > 1``) of the latest convolution's ``C`` channels.
    A model whose Linear layers all take ``C`` features (a ConvNeXt's pointwise layers, a
    patch embedding's tokens in a one-layer head) cannot hold such a flatten."""
    channels = None
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            channels = m.out_channels
        elif isinstance(m, nn.Linear) and channels is not None:
            if m.in_features % channels == 0 and m.in_features // channels > 1:
                return True
    return False


def _is_elementwise(node, modules) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], _ELEMENTWISE_MODULES)
    return node.op == "call_function" and node.target in _ELEMENTWISE_FUNCS


def _flatten_input(node, modules):
    """The tensor node that ``node`` flattens from dim 1 to the end, or ``None``."""
    if node.op == "call_module":
        m = modules[node.target]
        return node.args[0] if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1 else None
    start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    if node.op == "call_function" and node.target is torch.flatten:
        return node.args[0] if start == 1 and len(node.args) <= 2 else None
    if node.op == "call_method" and node.target == "flatten":
        return node.args[0] if start == 1 and len(node.args) <= 2 else None
    if node.op == "call_method" and node.target in ("view", "reshape"):
        dims = node.args[1:] if len(node.args) > 2 else tuple(node.args[1]) if len(node.args) == 2 else ()
        return node.args[0] if len(dims) == 2 and dims[1] == -1 else None
    return None


def _flattened_shape(linear_node, modules, have_shapes: bool) -> tuple[int, ...] | None:
    node = linear_node.args[0]
    while _is_elementwise(node, modules):
        node = node.args[0]
    src = _flatten_input(node, modules)
    if src is None:
        return None
    if have_shapes:
        meta = src.meta.get("tensor_meta")
        shape = tuple(meta.shape) if meta is not None else ()
        return tuple(int(d) for d in shape[1:]) if len(shape) >= 3 else None
    channels = _channels_of(src, modules)
    in_features = modules[linear_node.target].in_features
    if channels is None or in_features % channels:
        raise ConversionError(
            f"{linear_node.target}: a flattened map feeds this Linear but its channel count cannot be "
            "traced; give --input-shape or --flatten LAYER=C,H,W"
        )
    return (channels, in_features // channels)


def _channels_of(node, modules) -> int | None:
    """Channel count of a channels-first tensor node, walking up channel-preserving ops."""
    for _ in range(1000):
        if node.op == "call_module":
            m = modules[node.target]
            for attr in ("out_channels", "num_features", "num_channels"):
                if isinstance(getattr(m, attr, None), int):
                    return getattr(m, attr)
            if not isinstance(m, _CHANNEL_KEEPING_MODULES):
                return None
        elif not (node.op == "call_function" and node.target in _CHANNEL_KEEPING_FUNCS):
            return None
        node = node.args[0]
    return None
