"""The layer rules: one registry mapping torch module types to how their tensors become Flax leaves.

A rule is a function ``rule(module, ctx) -> list[Transfer]``. Each :class:`Transfer` moves some
of the module's torch tensors (names local to the module, e.g. ``'weight'`` or
``'out_proj.weight'``) to some Flax leaves (local paths with the collection first, e.g.
``'params/kernel'``, ``'batch_stats/mean'``, ``'params/query/kernel'``) and back. Every
transfer only moves elements, so round trips are bit-exact.

Register a rule for your own layer with the decorator::

    from parity.convert import Transfer, register_rule

    @register_rule(MyScale)
    def my_scale(module, ctx):
        return [Transfer(("gain",), ("params/scale",), "copy")]

Rules are looked up along the module's MRO, so a subclass of ``nn.Linear`` uses the Linear rule
unless it has its own. A rule covers the module's whole subtree (``nn.MultiheadAttention``
converts its ``out_proj`` itself); any tensor of that subtree that no transfer names is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from parity import layout
from parity.convert.common import ConversionError

Arrays = list[np.ndarray]


def _copy(xs: Arrays) -> Arrays:
    return [np.array(x, copy=True) for x in xs]


@dataclass(frozen=True)
class Transfer:
    """Torch tensors ``torch`` <-> Flax leaves ``flax`` by ``to_flax`` / ``to_torch`` (``how`` is
    what ``parity map`` shows). ``torch=()``: Flax-only leaves kept from the Flax model (e.g. unused
    running stats); ``flax=()``: torch-only tensors dropped on the way to Flax and rebuilt by
    ``to_torch([])`` on the way back (e.g. ``num_batches_tracked``)."""

    torch: tuple[str, ...]
    flax: tuple[str, ...]
    how: str = "copy"
    to_flax: Callable[[Arrays], Arrays] = _copy
    to_torch: Callable[[Arrays], Arrays] = _copy


@dataclass(frozen=True)
class RuleContext:
    """What a rule may need beyond the module: its name, the flatten feeding it (``(C, *spatial)``
    or ``None``), and the batch count restored into torch BN's ``num_batches_tracked``."""

    name: str
    flatten_shape: tuple[int, ...] | None = None
    num_batches_tracked: int = 0
    extra: dict = field(default_factory=dict)


RuleFn = Callable[[nn.Module, RuleContext], list[Transfer]]
_RULES: dict[type, RuleFn] = {}


def register_rule(*module_types: type) -> Callable[[RuleFn], RuleFn]:
    """Decorator: ``rule`` converts modules of ``module_types`` (replacing any earlier rule)."""

    def deco(rule: RuleFn) -> RuleFn:
        for t in module_types:
            _RULES[t] = rule
        return rule

    return deco


def rename_rule(**names: str) -> RuleFn:
    """A rule that copies each torch tensor to the Flax leaf named for it, for a layer whose
    tensors only differ in name (``gain="scale"``: ``gain`` -> ``params/scale``; give
    ``"batch_stats/mean"`` for another collection). One line in a factory file::

        register_rule(MyRMSNorm)(rename_rule(gain="scale"))
    """
    pairs = [(t, f if "/" in f else f"params/{f}") for t, f in names.items()]
    return lambda module, ctx: [
        Transfer((t,), (f,), f"copy ({t} -> {f.rsplit('/', 1)[1]})") for t, f in pairs
    ]


def rule_for(module: nn.Module) -> RuleFn | None:
    """The rule registered for ``type(module)`` or its nearest base class, or ``None``."""
    for klass in type(module).__mro__:
        if klass in _RULES:
            return _RULES[klass]
    return None


def _transposed(to_flax: Callable[[np.ndarray], np.ndarray], to_torch, how: str, t: str, f: str) -> Transfer:
    return Transfer((t,), (f,), how, lambda xs: [to_flax(xs[0])], lambda xs: [to_torch(xs[0])])


def _bias(module: nn.Module, torch_name: str = "bias", flax_name: str = "params/bias") -> list[Transfer]:
    return [Transfer((torch_name,), (flax_name,))] if getattr(module, "bias", None) is not None else []


@register_rule(nn.Linear)
def linear_rule(module: nn.Linear, ctx: RuleContext) -> list[Transfer]:
    """``weight (out, in)`` -> ``kernel (in, out)``; rows permuted C-first -> C-last after a flatten."""
    fs = ctx.flatten_shape
    how = "transpose" if fs is None else f"transpose + flatten permutation (C={fs[0]}, spatial={fs[1:]})"
    to_flax = lambda w: layout.dense_kernel_to_flax(w, fs)  # noqa: E731
    to_torch = lambda k: layout.dense_kernel_to_torch(k, fs)  # noqa: E731
    return [_transposed(to_flax, to_torch, how, "weight", "params/kernel"), *_bias(module)]


@register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_rule(module: nn.Conv1d, ctx: RuleContext) -> list[Transfer]:
    """``weight (O, I/groups, *k)`` -> ``kernel (*k, I/groups, O)`` (Flax ``feature_group_count``)."""
    how = "transpose OI..->..IO" + (f" (groups={module.groups})" if module.groups > 1 else "")
    w = _transposed(layout.conv_kernel_to_flax, layout.conv_kernel_to_torch, how, "weight", "params/kernel")
    return [w, *_bias(module)]


@register_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose_rule(module: nn.ConvTranspose2d, ctx: RuleContext) -> list[Transfer]:
    """``weight (I, O, *k)`` -> ``kernel (*k, I, O)`` spatially flipped, for Flax ``ConvTranspose``
    with ``transpose_kernel=False`` and the explicit padding of
    :func:`parity.layout.conv_transpose_padding`."""
    if module.groups != 1:
        raise ConversionError(
            f"{ctx.name} ({type(module).__name__}): groups={module.groups} is not supported "
            "(Flax ConvTranspose has no feature groups)"
        )
    how = "transpose IO..->..IO + spatial flip"
    to_f, to_t = layout.conv_transpose_kernel_to_flax, layout.conv_transpose_kernel_to_torch
    return [_transposed(to_f, to_t, how, "weight", "params/kernel"), *_bias(module)]


@register_rule(nn.modules.batchnorm._BatchNorm)
def batch_norm_rule(module: nn.BatchNorm2d, ctx: RuleContext) -> list[Transfer]:
    """``weight``/``bias`` -> ``scale``/``bias`` (when affine); running stats -> ``batch_stats``.

    ``num_batches_tracked`` is dropped (Flax keeps no counter) and rebuilt from
    ``ctx.num_batches_tracked``. With ``track_running_stats=False`` the Flax model's own
    ``batch_stats`` (unused in that configuration) are kept as they are.
    """
    out = []
    if module.affine:
        out += [Transfer(("weight",), ("params/scale",)), Transfer(("bias",), ("params/bias",))]
    if module.track_running_stats:
        count = ctx.num_batches_tracked
        out += [
            Transfer(("running_mean",), ("batch_stats/mean",)),
            Transfer(("running_var",), ("batch_stats/var",)),
            Transfer(
                ("num_batches_tracked",),
                (),
                "dropped (restored as num_batches_tracked)",
                lambda xs: [],
                lambda xs: [np.asarray(count, dtype=np.int64)],
            ),
        ]
    else:
        keep = ("batch_stats/mean", "batch_stats/var")
        out.append(Transfer((), keep, "Flax only, unused (track_running_stats=False): kept", None, None))
    return out


@register_rule(nn.LayerNorm, nn.GroupNorm)
def norm_rule(module: nn.LayerNorm, ctx: RuleContext) -> list[Transfer]:
    """``weight``/``bias`` -> ``scale``/``bias`` (absent when not elementwise-affine)."""
    out = []
    if getattr(module, "weight", None) is not None:
        out.append(Transfer(("weight",), ("params/scale",)))
    return out + _bias(module)


if hasattr(nn, "RMSNorm"):  # torch >= 2.4

    @register_rule(nn.RMSNorm)
    def rms_norm_rule(module: nn.Module, ctx: RuleContext) -> list[Transfer]:
        """``weight`` -> ``scale`` (Flax ``RMSNorm``; absent when not elementwise-affine)."""
        return [Transfer(("weight",), ("params/scale",))] if module.weight is not None else []


@register_rule(nn.Embedding)
def embedding_rule(module: nn.Embedding, ctx: RuleContext) -> list[Transfer]:
    """``weight (num, dim)`` -> ``embedding (num, dim)``."""
    return [Transfer(("weight",), ("params/embedding",))]


@register_rule(nn.MultiheadAttention)
def attention_rule(module: nn.MultiheadAttention, ctx: RuleContext) -> list[Transfer]:
    """Packed ``in_proj_weight (3E, E)`` -> ``query/key/value`` kernels ``(E_in, heads, head_dim)``;
    ``in_proj_bias (3E,)`` -> biases ``(heads, head_dim)``; ``out_proj.weight (E, E)`` -> ``out``
    kernel ``(heads, head_dim, E)``. Separate ``q/k/v_proj_weight`` (``kdim``/``vdim`` != E) map
    one to one. Flax ``MultiHeadDotProductAttention`` / NNX ``MultiHeadAttention`` names."""
    if module.bias_k is not None:
        raise ConversionError(
            f"{ctx.name} (MultiheadAttention): bias_k/bias_v (add_bias_kv=True) have no Flax counterpart"
        )
    h, hd = module.num_heads, module.head_dim
    qkv = ("params/query", "params/key", "params/value")
    split_how = f"split q/k/v + head split (in, {h}, {hd})"
    out = []
    if module.in_proj_weight is not None:
        out.append(
            Transfer(
                ("in_proj_weight",),
                tuple(f"{p}/kernel" for p in qkv),
                split_how,
                lambda xs: [layout.heads_kernel_to_flax(w, h) for w in np.split(xs[0], 3)],
                lambda ks: [np.concatenate([layout.heads_kernel_to_torch(k) for k in ks])],
            )
        )
    else:
        for t, f in zip(("q_proj_weight", "k_proj_weight", "v_proj_weight"), qkv, strict=True):
            out.append(
                Transfer(
                    (t,),
                    (f"{f}/kernel",),
                    f"head split (in, {h}, {hd})",
                    lambda xs: [layout.heads_kernel_to_flax(xs[0], h)],
                    lambda ks: [layout.heads_kernel_to_torch(ks[0])],
                )
            )
    if module.in_proj_bias is not None:
        out.append(
            Transfer(
                ("in_proj_bias",),
                tuple(f"{p}/bias" for p in qkv),
                f"split q/k/v + head split ({h}, {hd})",
                lambda xs: [b.reshape(h, hd).copy() for b in np.split(xs[0], 3)],
                lambda bs: [np.concatenate([b.reshape(-1) for b in bs])],
            )
        )
    out.append(
        Transfer(
            ("out_proj.weight",),
            ("params/out/kernel",),
            f"transpose + head split ({h}, {hd}, out)",
            lambda xs: [np.ascontiguousarray(xs[0].T.reshape(h, hd, -1))],
            lambda ks: [np.ascontiguousarray(ks[0].reshape(h * hd, -1).T)],
        )
    )
    return out + _bias(module.out_proj, "out_proj.bias", "params/out/bias")
