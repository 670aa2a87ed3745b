""" "Probable cause": which known porting gotcha makes one diverging torch layer match its port.

When a layer's row fails, :func:`probable_cause` recomputes that torch layer in float64 with
each gotcha that applies to its type (a dispatch table, :data:`GOTCHAS`, one small function per
gotcha) and names the one whose output matches the port's: "epsilon 1e-06 in the port, 1e-05
in torch". Torch side only: it needs the torch module, its input and the port's output
already in torch layout (NCHW, (N, L, D), ...), never the Flax model.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parity.defaults import FLOAT32_REL_TOL, FLOAT64_REL_TOL
from parity.harness.metrics import rel_l2

__all__ = ["EPSILONS", "GOTCHAS", "Cause", "probable_cause"]

#: Epsilons a port commonly carries: Flax LayerNorm/GroupNorm/RMSNorm default (1e-6), Flax
#: BatchNorm and torch default (1e-5), Keras BatchNorm (1e-3), BERT-style LayerNorm (1e-12).
EPSILONS: tuple[float, ...] = (1e-6, 1e-5, 1e-3, 1e-12)
#: A float32 port output carries its own rounding (~1e-7 relative per layer), so a gotcha can
#: only be recognised when it explains the difference down to the float32 scale
#: (FLOAT32_REL_TOL) *and* leaves at most a tenth of the unexplained difference: a candidate
#: that only halves a difference is not the cause.
SEPARATION: float = 10.0
#: Two gotchas whose residuals lie within this factor of each other (plus 1e-3 * tol, float64
#: rounding) cannot be told apart on this input: the best is named, the others listed as
#: alternatives (``'SAME'`` padding and ``ceil_mode=True`` give the same pool on an odd size).
AMBIGUITY: float = 2.0

Output = Literal["output", "running_mean"]


@dataclass(frozen=True)
class Cause:
    """The gotcha that makes the torch layer reproduce the port's output.

    ``what``: the setting ("epsilon", "gelu approximate", "padding", ...); ``port`` / ``torch``:
    its value in the port and in the torch layer; ``rel_l2``: relative L2 difference between
    the port's output and the torch layer with the gotcha applied (float64); ``layer``: the
    torch layer's name (filled by the caller, else ``""``); ``note``: a detail, e.g. a convention;
    ``alternatives``: other gotchas that explain the output as well on this input.
    """

    layer: str
    what: str
    port: Any
    torch: Any
    rel_l2: float
    note: str = ""
    alternatives: tuple[str, ...] = ()

    def __str__(self) -> str:
        text = _describe(self.what, self.port, self.torch)
        details = [self.note] if self.note else []
        details += [f"or {alt}" for alt in self.alternatives]
        if details:
            text += f" ({'; '.join(details)})"
        return f"{self.layer}: {text}" if self.layer else text


def _describe(what: str, port: Any, torch_value: Any) -> str:
    return f"{what} {_fmt(port)} in the port, {_fmt(torch_value)} in torch"


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class _Try:
    """One gotcha applied: its description and a thunk giving the faulty torch result."""

    what: str
    port: Any
    torch: Any
    result: Callable[[], np.ndarray]
    note: str = ""


@dataclass(frozen=True)
class _Layer:
    """The diverged layer as the gotchas see it: a float64 copy, its float64 inputs, the mode
    and the quantity compared (the output, or a BatchNorm's running mean after the pass)."""

    module: nn.Module
    args: tuple[Any, ...]
    train: bool
    output: Output

    def variant(self, **attrs: Any) -> nn.Module:
        """A fresh copy of the float64 module with ``attrs`` set."""
        m = copy.deepcopy(self.module)
        for k, v in attrs.items():
            setattr(m, k, v)
        return m

    def run(
        self, module: nn.Module | None = None, args: tuple | None = None, train: bool | None = None
    ) -> np.ndarray:
        """The compared quantity (numpy, float64) of ``module`` (a copy of the layer) on ``args``."""
        m = copy.deepcopy(self.module) if module is None else module
        m.train(self.train if train is None else train)
        with torch.no_grad():
            out = m(*(self.args if args is None else args))
        if self.output == "running_mean":
            return m.running_mean.detach().numpy().copy()
        return _first_tensor(out).detach().numpy().copy()


def _first_tensor(out: Any) -> torch.Tensor:
    """The layer's main output: the tensor itself, or the first of a tuple (MultiheadAttention)."""
    return out[0] if isinstance(out, (tuple, list)) else out


# --- normalisation ------------------------------------------------------------------------


def _epsilon(layer: _Layer) -> Iterator[_Try]:
    """LayerNorm/GroupNorm/BatchNorm/RMSNorm epsilon: each of :data:`EPSILONS` not torch's."""
    eps = layer.module.eps
    for value in EPSILONS:
        if eps is None or not math.isclose(value, eps, rel_tol=1e-9):
            yield _Try("epsilon", value, eps, lambda v=value: layer.run(layer.variant(eps=v)))


def _bn_statistics(layer: _Layer) -> Iterator[_Try]:
    """The mode bug itself: the port normalises by batch statistics where torch uses running
    ones (eval), or by running statistics where torch uses the batch's (train)."""
    m = layer.module
    if layer.output != "output" or not m.track_running_stats or m.running_mean is None:
        return
    port, ref = ("batch", "running") if not layer.train else ("running", "batch")
    yield _Try("normalisation statistics", port, ref, lambda: layer.run(train=not layer.train), "mode flag")


def _bn_unbiased_variance(layer: _Layer) -> Iterator[_Try]:
    """Train mode: the port normalises by the unbiased batch variance (torch: biased)."""
    if not layer.train or layer.output != "output":
        return
    m, x = layer.module, layer.args[0]

    def result() -> np.ndarray:
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, unbiased=True, keepdim=True)
        y = (x - mean) / torch.sqrt(var + m.eps)
        if m.affine:
            y = y * m.weight.detach().reshape(shape) + m.bias.detach().reshape(shape)
        return y.numpy()

    yield _Try("batch variance", "unbiased", "biased", result)


def _bn_momentum(layer: _Layer) -> Iterator[_Try]:
    """Running mean after a train pass with the momentum misread (``1 - m``: Flax's convention
    given to torch, or the reverse) or Flax's default 0.99 left in (0.01 in torch's)."""
    m = layer.module
    if layer.output != "running_mean" or not layer.train or m.momentum is None:
        return
    note = "torch convention, the batch statistic's weight; Flax's momentum is 1 minus it"
    for value in sorted({round(1.0 - m.momentum, 12), 0.01} - {m.momentum}):
        yield _Try("momentum", value, m.momentum, lambda v=value: layer.run(layer.variant(momentum=v)), note)


# --- activations, attention, kernels ----------------------------------------------------------


def _gelu_approximate(layer: _Layer) -> Iterator[_Try]:
    """GELU exact ('none', torch's default) vs the tanh approximation (Flax's default)."""
    ref = layer.module.approximate
    port = "tanh" if ref == "none" else "none"
    yield _Try("gelu approximate", port, ref, lambda: layer.run(layer.variant(approximate=port)))


def _attention_scale(layer: _Layer) -> Iterator[_Try]:
    """MultiheadAttention scores scaled by something other than ``1/sqrt(head_dim)``: not at
    all, by ``1/sqrt(embed_dim)`` or by ``1/head_dim``. Applied by scaling the query projection."""
    m = layer.module
    if layer.train and m.dropout > 0:
        return
    e, hd = m.embed_dim, m.head_dim
    ref = f"1/sqrt({hd})"
    for label, scale in (("1 (none)", 1.0), (f"1/sqrt({e})", e**-0.5), (f"1/{hd}", 1.0 / hd)):
        if not math.isclose(scale, hd**-0.5):
            yield _Try(
                "attention scale", label, ref, lambda s=scale: layer.run(_scaled_query(m, s * hd**0.5))
            )


def _scaled_query(m: nn.MultiheadAttention, factor: float) -> nn.Module:
    """A copy whose query projection (weight and bias) is multiplied by ``factor``."""
    v = copy.deepcopy(m)
    e = v.embed_dim
    with torch.no_grad():
        if v._qkv_same_embed_dim:
            v.in_proj_weight[:e] *= factor
        else:
            v.q_proj_weight *= factor
        if v.in_proj_bias is not None:
            v.in_proj_bias[:e] *= factor
    return v


def _with_weight(layer: _Layer, weight: torch.Tensor) -> Callable[[], np.ndarray]:
    def result() -> np.ndarray:
        v = copy.deepcopy(layer.module)
        with torch.no_grad():
            v.weight.copy_(weight)
        return layer.run(v)

    return result


def _linear_kernel(layer: _Layer) -> Iterator[_Try]:
    """Linear weight ``(out, in)`` reshaped to ``(in, out)`` instead of transposed; for a
    square weight that is the kernel left untransposed."""
    w = layer.module.weight.detach()
    out_f, in_f = w.shape
    what = "kernel not transposed" if out_f == in_f else "kernel reshaped, not transposed"
    yield _Try(what, "W", "W.T", _with_weight(layer, w.reshape(in_f, out_f).T), "Flax kernel (in, out)")


def _conv_kernel(layer: _Layer) -> Iterator[_Try]:
    """Conv weight ``(O, I, *S)`` moved to Flax's ``(*S, I, O)`` wrongly: reshaped instead of
    transposed, with the spatial axes reversed (numpy's ``w.T``, square kernels), with in and
    out channels swapped (I == O), or flipped spatially (a convolution, not a correlation)."""
    w = layer.module.weight.detach()
    o, i, *s = w.shape
    n = len(s)
    flax_note = f"Flax kernel {'HW'[:n] if n <= 2 else 'DHW'}IO"
    reshaped = w.reshape(*s, i, o).permute(n + 1, n, *range(n))
    yield _Try("kernel", "reshaped", "transposed", _with_weight(layer, reshaped), flax_note)
    if n >= 2 and len(set(s)) == 1:
        swapped = w.permute(0, 1, *reversed(range(2, n + 2)))
        yield _Try(
            "kernel spatial axes", "swapped (w.T)", "in order", _with_weight(layer, swapped), flax_note
        )
    if i == o and layer.module.groups == 1:
        io = w.transpose(0, 1)
        yield _Try("kernel channel axes", "in/out swapped", "in order", _with_weight(layer, io), flax_note)
    flipped = w.flip(list(range(2, n + 2)))
    yield _Try("kernel", "flipped", "as is", _with_weight(layer, flipped), flax_note)


# --- padding and pooling ----------------------------------------------------------------------


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _same_pads(size: Sequence[int], k: Sequence[int], s: Sequence[int], d: Sequence[int]) -> tuple:
    """TF/Flax ``'SAME'`` per spatial axis: ``ceil(L / s)`` outputs, the odd pad at the end."""
    pads = []
    for length, kk, ss, dd in zip(size, k, s, d):
        total = max((-(-length // ss) - 1) * ss + (kk - 1) * dd + 1 - length, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _torch_pads(m: nn.Module, n: int, k: Sequence[int], d: Sequence[int]) -> tuple:
    """The torch layer's own (low, high) pads per spatial axis (``'same'``/``'valid'`` included)."""
    p = m.padding
    if p == "valid":
        return ((0, 0),) * n
    if p == "same":
        return tuple(((kk - 1) * dd // 2, (kk - 1) * dd - (kk - 1) * dd // 2) for kk, dd in zip(k, d))
    return tuple((pp, pp) for pp in _tuple(p, n))


def _flat(pads: tuple) -> list[int]:
    """``F.pad``'s order: last axis first, (low, high) each."""
    return [q for lo_hi in reversed(pads) for q in lo_hi]


def _geometry(layer: _Layer) -> tuple[int, tuple, tuple, tuple, tuple]:
    """``(n spatial axes, kernel, stride, dilation, torch pads)`` of a conv or pool layer."""
    m, x = layer.module, layer.args[0]
    n = x.dim() - 2
    k, s = _tuple(m.kernel_size, n), _tuple(m.stride or m.kernel_size, n)
    d = _tuple(getattr(m, "dilation", 1), n)
    return n, k, s, d, _torch_pads(m, n, k, d)


def _explicit_pads(layer: _Layer, tp: tuple, same: tuple) -> Iterator[tuple[str, tuple]]:
    """The port's candidate paddings that differ from torch's: ``'SAME'`` and ``'VALID'``."""
    for label, pads in (("SAME", same), ("VALID", ((0, 0),) * len(tp))):
        if pads != tp:
            yield label, pads


def _conv_padding(layer: _Layer) -> Iterator[_Try]:
    """Conv padded ``'SAME'`` (TF-style, asymmetric) or ``'VALID'`` in the port where torch pads
    symmetrically, or with zeros where torch pads by ``padding_mode`` (reflect, circular, ...)."""
    n, k, s, d, tp = _geometry(layer)
    m, x = layer.module, layer.args[0]
    if m.padding_mode != "zeros":
        yield _Try(
            "padding mode", "zeros", m.padding_mode, lambda: layer.run(layer.variant(padding_mode="zeros"))
        )
        return
    same = _same_pads(x.shape[2:], k, s, d)
    for label, pads in _explicit_pads(layer, tp, same):

        def result(pads: tuple = pads) -> np.ndarray:
            return layer.run(layer.variant(padding=(0,) * n), (F.pad(x, _flat(pads)),))

        yield _Try("padding", label, f"symmetric {tp}", result, f"{label} pads {pads}")


def _pool_padding(layer: _Layer) -> Iterator[_Try]:
    """Max/avg pool padded ``'SAME'`` or ``'VALID'`` in the port (floor mode) where torch pads
    symmetrically; for avg pools with the pads counted in the divisor (Flax's default) or not;
    and a max pool padded with zeros instead of ``-inf``."""
    n, k, s, d, tp = _geometry(layer)
    x = layer.args[0]
    same = _same_pads(x.shape[2:], k, s, d)
    if isinstance(layer.module, nn.modules.pooling._MaxPoolNd):
        for label, pads in _explicit_pads(layer, tp, same):
            yield _Try(
                "padding",
                label,
                f"symmetric {tp}",
                lambda p=pads: _max_pool(x, p, k, s, d),
                f"{label} pads {pads}",
            )
        if any(p != (0, 0) for p in tp):
            yield _Try("max-pool pad value", "0", "-inf", lambda: _max_pool(x, tp, k, s, d, value=0.0))
        return
    for label, pads in _explicit_pads(layer, tp, same):
        for count, port in ((True, f"{label}, pads counted"), (False, f"{label}, pads not counted")):
            fn = lambda p=pads, c=count: _avg_pool(x, p, k, s, c)  # noqa: E731
            yield _Try("padding", port, f"symmetric {tp}", fn, f"{label} pads {pads}")


def _max_pool(
    x: torch.Tensor, pads: tuple, k: tuple, s: tuple, d: tuple, value: float = -math.inf
) -> np.ndarray:
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[x.dim() - 3]
    return pool(F.pad(x, _flat(pads), value=value), k, s, 0, d).numpy()


def _avg_pool(x: torch.Tensor, pads: tuple, k: tuple, s: tuple, count_pads: bool) -> np.ndarray:
    """Average over windows of ``x`` padded with zeros by ``pads``, dividing by the window size
    (``count_pads``) or by the number of real elements in it."""
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.dim() - 3]
    total = pool(F.pad(x, _flat(pads)), k, s, 0)
    if count_pads:
        return total.numpy()
    return (total / pool(F.pad(torch.ones_like(x), _flat(pads)), k, s, 0)).numpy()


def _pool_modes(layer: _Layer) -> Iterator[_Try]:
    """Pooling ``ceil_mode`` flipped, and for AvgPool ``count_include_pad`` flipped."""
    m = layer.module
    ceil = not m.ceil_mode
    yield _Try("ceil_mode", ceil, m.ceil_mode, lambda: layer.run(layer.variant(ceil_mode=ceil)))
    if isinstance(m, nn.modules.pooling._AvgPoolNd):
        count = not m.count_include_pad
        yield _Try(
            "count_include_pad",
            count,
            m.count_include_pad,
            lambda: layer.run(layer.variant(count_include_pad=count)),
        )


# --- dispatch and judgement -----------------------------------------------------------------

Gotcha = Callable[[_Layer], Iterator[_Try]]

#: The gotchas tried for each torch layer type, looked up along the layer's MRO (so a subclass
#: of ``nn.LayerNorm`` gets LayerNorm's).
GOTCHAS: dict[type, tuple[Gotcha, ...]] = {
    nn.LayerNorm: (_epsilon,),
    nn.GroupNorm: (_epsilon,),
    nn.RMSNorm: (_epsilon,),
    nn.modules.batchnorm._BatchNorm: (_epsilon, _bn_statistics, _bn_unbiased_variance, _bn_momentum),
    nn.GELU: (_gelu_approximate,),
    nn.MultiheadAttention: (_attention_scale,),
    nn.Linear: (_linear_kernel,),
    nn.Conv1d: (_conv_kernel, _conv_padding),
    nn.Conv2d: (_conv_kernel, _conv_padding),
    nn.Conv3d: (_conv_kernel, _conv_padding),
    nn.modules.pooling._MaxPoolNd: (_pool_padding, _pool_modes),
    nn.modules.pooling._AvgPoolNd: (_pool_padding, _pool_modes),
}


def _gotchas_for(module: nn.Module) -> tuple[Gotcha, ...]:
    for cls in type(module).__mro__:
        if cls in GOTCHAS:
            return GOTCHAS[cls]
    return ()


def _as_float64(x: Any) -> Any:
    t = torch.as_tensor(np.asarray(x))
    return t.double() if t.is_floating_point() else t


def _residual(port: np.ndarray, result: np.ndarray) -> float:
    """``rel_l2(port, result)``, infinite when the shapes differ or the result is not finite."""
    result = np.asarray(result)
    if result.shape != port.shape or not np.all(np.isfinite(result)):
        return math.inf
    return rel_l2(port, result)


def _attempt(port: np.ndarray, t: _Try) -> float:
    """The residual of one gotcha; infinite when torch refuses the faulty configuration (a
    ``ceil_mode`` flip that leaves no output, a kernel a layer cannot take)."""
    try:
        return _residual(port, t.result())
    except (RuntimeError, ValueError):
        return math.inf


def _fast_variance(ctx: _Layer, port: np.ndarray, unexplained: float, label: str) -> Cause | None:
    """A train-mode BatchNorm whose difference is within the rounding of ``E[x²] - E[x]²`` on this
    input (Flax's default ``use_fast_variance=True``; torch subtracts the mean first): that
    formula loses about ``u * E[x²] / Var(x)`` relative (``u`` the port's unit roundoff), so
    inputs whose mean is ~3000 times their spread fail the float64 judge (1e-9) in a correct
    port. No faulty torch result reproduces the port's rounding, hence a bound instead of a
    match: ``(2 + log2 n) * u * max over channels of E[x²] / Var(x)``, ``n`` values per channel."""
    m, x = ctx.module, ctx.args[0]
    if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not ctx.train or ctx.output != "output":
        return None
    dims = [d for d in range(x.dim()) if d != 1]
    var = x.var(dim=dims, unbiased=False)
    if x.dim() < 2 or not bool(torch.all(var > 0)):
        return None
    ratio = float(torch.max(x.pow(2).mean(dim=dims) / var))
    n = x.numel() // x.shape[1]
    bound = (2 + math.log2(max(n, 1))) * float(np.finfo(port.dtype).eps) / 2 * ratio
    if unexplained > bound:
        return None
    note = (
        f"E[x²]-E[x]² loses digits when the mean is far above the spread (here E[x²]/Var up to "
        f"{ratio:.1e}, rounding up to {bound:.1e}); set use_fast_variance=False"
    )
    return Cause(label, "use_fast_variance", True, "two-pass variance", unexplained, note)


def probable_cause(
    module: nn.Module,
    x: np.ndarray | Sequence[np.ndarray],
    port_out: np.ndarray,
    *,
    tol: float = FLOAT64_REL_TOL,
    train: bool | None = None,
    output: Output = "output",
    layer: str = "",
) -> Cause | None:
    """The porting gotcha that makes the torch layer ``module`` reproduce ``port_out``, or None.

    ``module``: the torch leaf layer that diverged (never modified; a float64 copy is run).
    ``x``: its input in torch layout (NCHW, (N, L, D), ...; batched), or a tuple of its
    positional inputs (``(query, key, value)``; one array means self-attention for
    ``nn.MultiheadAttention``). ``port_out``: the port's output of that layer in torch layout,
    or with ``output='running_mean'`` a BatchNorm's running mean after one train-mode pass (then
    ``module`` must hold the running statistics from before that pass). ``train``: the mode the
    layer ran in (default ``module.training``). ``layer``: the name put in the :class:`Cause`.

    Judgement: a float64 ``port_out`` matches a gotcha when their relative L2 difference is at
    most ``tol`` (correct ports agree to ~1e-12). A float32 (or narrower) one carries its own
    rounding: it matches when the difference is at most ``FLOAT32_REL_TOL`` and at most
    1/:data:`SEPARATION` of the unexplained difference. None when the layer already matches or
    no gotcha explains it; gotchas that explain it equally well are listed in the cause's
    ``alternatives`` (:data:`AMBIGUITY`). A train-mode BatchNorm that no gotcha explains may
    be Flax's fast variance (:func:`_fast_variance`, a rounding bound rather than a match).
    """
    port = np.asarray(port_out)
    wide = port.dtype == np.float64
    if output == "running_mean" and getattr(module, "running_mean", None) is None:
        raise ValueError(
            f"output='running_mean' needs a layer with running statistics, got {type(module).__name__}"
        )
    args = tuple(_as_float64(a) for a in (x if isinstance(x, tuple) else (x,)))
    if isinstance(module, nn.MultiheadAttention) and len(args) == 1:
        args = args * 3
    base = copy.deepcopy(module).cpu().double()
    ctx = _Layer(base, args, module.training if train is None else bool(train), output)
    unexplained = _residual(port, ctx.run())
    if unexplained <= tol:
        return None
    bound = tol if wide else min(FLOAT32_REL_TOL, unexplained / SEPARATION)
    tries = (t for gotcha in _gotchas_for(module) for t in gotcha(ctx))
    found = sorted(((r, t) for t in tries if (r := _attempt(port, t)) <= bound), key=lambda rt: rt[0])
    if not found:
        return _fast_variance(ctx, port, unexplained, layer)
    r, t = found[0]
    alike = tuple(_describe(u.what, u.port, u.torch) for q, u in found[1:] if q <= AMBIGUITY * r + 1e-3 * tol)
    return Cause(layer, t.what, t.port, t.torch, r, t.note, alike)
