"""Translations of torch functions and tensor methods (``call_function`` / ``call_method``
nodes of a ``torch.fx`` graph) into ``jax.numpy`` source.

Each handler takes the translator (:class:`parity.port._graph.Body`) and the op's torch
arguments (tensors as :class:`~parity.port._values.Value`) with torch's parameter names, and
returns the result's Value. Handlers place tensors in the layout they need (``b.torch(v)``,
``b.cl(v)``); an op a handler cannot express returns ``b.stub(...)``.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F

from parity.port._values import is_tensor, jax_axis, literal

FUNCS: dict = {}
METHODS: dict = {}


def op(*targets):
    """Register a handler for torch functions (callables) and tensor methods (strings)."""

    def deco(fn):
        for t in targets:
            (METHODS if isinstance(t, str) else FUNCS)[t] = fn
        return fn

    return deco


# ---------------------------------------------------------------- element-wise
UNARY = {
    "relu": "jax.nn.relu",
    "sigmoid": "jax.nn.sigmoid",
    "tanh": "jnp.tanh",
    "silu": "jax.nn.silu",
    "relu6": "jax.nn.relu6",
    "hardswish": "jax.nn.hard_swish",
    "exp": "jnp.exp",
    "log": "jnp.log",
    "sqrt": "jnp.sqrt",
    "rsqrt": "jax.lax.rsqrt",
    "abs": "jnp.abs",
    "sin": "jnp.sin",
    "cos": "jnp.cos",
    "erf": "jax.scipy.special.erf",
    "neg": "jnp.negative",
    "logical_not": "jnp.logical_not",
}


def _unary(name: str):
    def handler(b, input, inplace=False):
        return b.emit(f"{UNARY[name]}({input})", like=input)

    return handler


for _name in UNARY:
    op(*(f for f in (getattr(torch, _name, None), getattr(F, _name, None)) if f is not None), _name)(
        _unary(_name)
    )
op(torch.sigmoid, F.sigmoid, "sigmoid")(_unary("sigmoid"))
op(operator.neg)(_unary("neg"))


@op(F.gelu, "gelu")
def gelu(b, input, approximate="none"):
    return b.emit(f"jax.nn.gelu({input}, approximate={approximate == 'tanh'})", like=input)


@op(F.leaky_relu)
def leaky_relu(b, input, negative_slope=0.01, inplace=False):
    return b.emit(f"jax.nn.leaky_relu({input}, negative_slope={negative_slope!r})", like=input)


@op(F.elu)
def elu(b, input, alpha=1.0, inplace=False):
    return b.emit(f"jax.nn.elu({input}, alpha={alpha!r})", like=input)


@op(F.softplus)
def softplus(b, input, beta=1.0, threshold=20.0):
    if beta != 1.0:
        return b.stub("F.softplus(beta != 1)")
    # torch returns x itself above `threshold`; log1p(exp(x)) differs there by < exp(-threshold)
    return b.emit(f"jax.nn.softplus({input})", like=input)


_BINARY = {
    operator.add: "+",
    operator.sub: "-",
    operator.mul: "*",
    operator.truediv: "/",
    operator.floordiv: "//",
    operator.mod: "%",
    operator.pow: "**",
    operator.matmul: "@",
    operator.eq: "==",
    operator.ne: "!=",
    operator.lt: "<",
    operator.le: "<=",
    operator.gt: ">",
    operator.ge: ">=",
    operator.and_: "&",
    operator.or_: "|",
    torch.add: "+",
    torch.sub: "-",
    torch.mul: "*",
    torch.div: "/",
    torch.pow: "**",
    torch.matmul: "@",
    torch.bmm: "@",
    torch.eq: "==",
    torch.ne: "!=",
    torch.lt: "<",
    torch.gt: ">",
    "add": "+",
    "sub": "-",
    "mul": "*",
    "div": "/",
    "pow": "**",
    "matmul": "@",
    "bmm": "@",
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "gt": ">",
    "le": "<=",
    "ge": ">=",
}


def _binary(sym: str):
    def handler(b, input, other, alpha=1, rounding_mode=None):
        if alpha != 1 or rounding_mode is not None:
            return b.stub(f"{sym} with alpha/rounding_mode")
        x, y = b.same_layout(input, other) if sym != "@" else (b.torch(input), b.torch(other))
        if not is_tensor(x) and not is_tensor(y):
            return b.emit(f"{literal(x)} {sym} {literal(y)}", kind="int")
        like = x if is_tensor(x) else y
        return b.emit(f"{literal(x)} {sym} {literal(y)}", like=like)

    return handler


for _target, _sym in _BINARY.items():
    op(_target)(_binary(_sym))


@op(math.sqrt)
def _math_sqrt(b, x):
    """``math.sqrt`` of a traced size (``math.sqrt(k.size(-1))``): a Python float again."""
    if is_tensor(x):
        return b.stub("math.sqrt of a tensor")
    return b.emit(f"math.sqrt({literal(x)})", kind="int")


@op(torch.maximum, torch.minimum, "maximum", "minimum")
def _extremum(b, input, other):
    x, y = b.same_layout(input, other)
    fn = "jnp.maximum" if b.node_target_name() == "maximum" else "jnp.minimum"
    return b.emit(f"{fn}({x}, {literal(y)})", like=x)


@op(torch.clamp, "clamp", "clip")
def clamp(b, input, min=None, max=None):
    return b.emit(f"jnp.clip({input}, {literal(min)}, {literal(max)})", like=input)


@op(torch.where)
def where(b, condition, input, other):
    c, x = b.same_layout(condition, input)
    c, y = b.same_layout(c, other)
    x, _ = b.same_layout(x, y)
    return b.emit(f"jnp.where({c}, {literal(x)}, {literal(y)})", like=c)


@op("masked_fill")
def masked_fill(b, input, mask, value):
    x, m = b.same_layout(input, mask)
    return b.emit(f"jnp.where({m}, {literal(value)}, {x})", like=x)


@op(torch.tril, torch.triu, "tril", "triu")
def tril(b, input, diagonal=0):
    x = b.torch(input)
    fn = "jnp.triu" if b.node_target_name() == "triu" else "jnp.tril"
    return b.emit(f"{fn}({x}, k={diagonal})" if diagonal else f"{fn}({x})", like=x)


# ---------------------------------------------------------------- reductions
def _reduce(fn: str):
    def handler(b, input, dim=None, keepdim=False, dtype=None, **kw):
        if dtype is not None:
            return b.stub(f"{fn}(dtype=...)")
        extra = ""
        if fn in ("jnp.var", "jnp.std"):
            correction = kw.get("correction", 1 if kw.get("unbiased", True) else 0)
            extra = f", ddof={correction}"
        if dim is None:
            return b.emit(f"{fn}({input}{extra})", kind="tensor")
        dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
        x, result_cl = b.reducible(input, dims, keepdim)
        axes = tuple(jax_axis(d, x.rank, x.cl) for d in dims)
        axis = axes[0] if len(axes) == 1 else axes
        keep = ", keepdims=True" if keepdim else ""
        return b.emit(f"{fn}({x}, axis={axis}{keep}{extra})", cl=result_cl)

    return handler


for _fn, _names in {
    "jnp.mean": (torch.mean, "mean"),
    "jnp.sum": (torch.sum, "sum"),
    "jnp.amax": (torch.amax, "amax"),
    "jnp.amin": (torch.amin, "amin"),
    "jnp.var": (torch.var, "var"),
    "jnp.std": (torch.std, "std"),
    "jax.nn.logsumexp": (torch.logsumexp, "logsumexp"),
}.items():
    op(*_names)(_reduce(_fn))


def _softmax(fn: str):
    def handler(b, input, dim=None, _stacklevel=3, dtype=None):
        if dim is None or dtype is not None:
            return b.stub(f"{fn} without dim / with dtype")
        x = input if input.rank is None else input
        return b.emit(f"{fn}({x}, axis={jax_axis(dim, x.rank, x.cl)})", like=x)

    return handler


op(F.softmax, torch.softmax, "softmax")(_softmax("jax.nn.softmax"))
op(F.log_softmax, torch.log_softmax, "log_softmax")(_softmax("jax.nn.log_softmax"))


# ---------------------------------------------------------------- shapes
@op(torch.flatten, "flatten")
def flatten(b, input, start_dim=0, end_dim=-1):
    return b.flatten(input, start_dim, end_dim)


@op(torch.reshape, "reshape", "view")
def reshape(b, input, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 2 and shape[1] == -1 and b.is_batch_size(input, shape[0]):
        return b.flatten(input, 1, -1)
    out = b.node_shape()
    if input.cl and out is not None and len(out) == 2 and input.shape and out[0] == input.shape[0]:
        return b.flatten(input, 1, -1)  # (N, C*S): a flatten, whichever way its sizes are written
    x = b.torch(input)
    return b.emit(f"{x}.reshape({', '.join(literal(s) for s in shape)})")


@op(torch.permute, "permute")
def permute(b, input, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return b.permute(input, [d % input.rank for d in dims])


@op(torch.transpose, "transpose")
def transpose(b, input, dim0, dim1):
    dims = list(range(input.rank))
    a, c = dim0 % input.rank, dim1 % input.rank
    dims[a], dims[c] = dims[c], dims[a]
    return b.permute(input, dims)


@op(torch.unsqueeze, "unsqueeze")
def unsqueeze(b, input, dim):
    x = b.torch(input)
    return b.emit(f"jnp.expand_dims({x}, {dim})")


@op(torch.squeeze, "squeeze")
def squeeze(b, input, dim=None):
    x = b.torch(input)
    if dim is None:
        return b.emit(f"jnp.squeeze({x})")
    dims = dim if isinstance(dim, tuple) else (dim,)
    dims = tuple(d for d in dims if x.shape is None or x.shape[d] == 1)  # torch keeps other sizes
    return b.emit(f"jnp.squeeze({x}, axis={dims})") if dims else b.alias(x)


@op("contiguous", "clone", "detach")
def same(b, input, *args, **kwargs):
    return b.alias(input)


@op("expand")
def expand(b, input, *sizes):
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    x = b.torch(input)
    lead = len(sizes) - x.rank
    kept = [str(d) for d in x.shape] if x.fixed else [f"{x}.shape[{i}]" for i in range(x.rank)]
    dims = [kept[i - lead] if s == -1 else literal(s) for i, s in enumerate(sizes)]
    return b.emit(f"jnp.broadcast_to({x}, ({', '.join(dims)}))")


@op(torch.cat, torch.concat, torch.stack)
def cat(b, tensors, dim=0):
    xs = b.common_layout(list(tensors))
    fn = "jnp.stack" if b.node_target_name() == "stack" else "jnp.concatenate"
    if fn == "jnp.stack" and xs[0].cl:
        xs = [b.torch(x) for x in xs]
    rank = xs[0].rank + (fn == "jnp.stack")
    axis = jax_axis(dim, rank, xs[0].cl)
    return b.emit(f"{fn}([{', '.join(map(str, xs))}], axis={axis})", cl=xs[0].cl)


@op(torch.split, torch.chunk, "split", "chunk")
def split(b, input, split_size_or_sections=None, dim=0, chunks=None, split_size=None):
    x = b.torch(input)
    metas = b.node.meta.get("tensor_meta")
    if isinstance(metas, (tuple, list)) and metas:  # the sizes torch computed (symbolic sizes too)
        sizes = [m.shape[dim] for m in metas]
    else:
        size = x.shape[dim]
        n = split_size_or_sections if split_size_or_sections is not None else chunks or split_size
        if b.node_target_name() == "chunk":
            n = -(-size // n)
        sizes = [n] * (size // n) + ([size % n] if size % n else []) if isinstance(n, int) else list(n)
    cuts = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]
    v = b.emit(f"jnp.split({x}, {cuts}, axis={dim % x.rank})", kind="seq")
    b.seq_len[v.expr] = len(sizes)
    return v


@op("size")
def size(b, input, dim=None):
    shape = b.shape_of(input)
    return shape if dim is None else b.shape_item(shape, dim)


@op("dim")
def ndim(b, input):
    return input.rank


@op("float", "double")
def to_float(b, input):
    kind = "jnp.float32" if b.node_target_name() == "float" else "jnp.float64"
    return b.emit(f"{input}.astype({kind})", like=input)


@op("type_as")
def type_as(b, input, other):
    return b.emit(f"{input}.astype({other}.dtype)", like=input)


# ---------------------------------------------------------------- pooling
def _pool(kind: str, dims: int):
    def handler(b, input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, **kw):
        if ceil_mode or dilation not in (1, (1,) * dims) or kw.get("return_indices"):
            return b.stub(f"{kind}_pool{dims}d with ceil_mode/dilation/return_indices")
        if kw.get("divisor_override") is not None or kw.get("count_include_pad") is False:
            return b.stub(f"{kind}_pool{dims}d with divisor_override/count_include_pad=False")
        return b.pool(input, kind, dims, kernel_size, stride, padding)

    return handler


for _d in (1, 2, 3):
    op(getattr(F, f"max_pool{_d}d"))(_pool("max", _d))
    op(getattr(F, f"avg_pool{_d}d"))(_pool("avg", _d))
    op(getattr(F, f"adaptive_avg_pool{_d}d"))(
        lambda b, input, output_size, _d=_d: b.adaptive(input, output_size, _d)
    )


@op(F.dropout, "dropout")
def dropout(b, input, p=0.5, training=True, inplace=False):
    if not training or p == 0:
        return b.alias(input)
    return b.stub("F.dropout", "a functional dropout has no module to carry its mode: use nn.Dropout")


# ---------------------------------------------------------------- creation
@op(torch.arange)
def arange(b, start, end=None, step=1, dtype=None, device=None, **kw):
    args = [start] if end is None else [start, end]
    args += [step] if step != 1 else []
    text = ", ".join(literal(a) for a in args)
    float_dtype = dtype is not None and dtype.is_floating_point
    return b.emit(f"jnp.arange({text}, dtype=float)" if float_dtype else f"jnp.arange({text})")


@op(F.scaled_dot_product_attention)
def scaled_dot_product_attention(
    b, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    """Written out: ``softmax(q @ k^T * scale + mask) @ v`` (torch's default scale ``d**-0.5``)."""
    if dropout_p or enable_gqa:
        return b.stub("F.scaled_dot_product_attention with dropout_p or enable_gqa")
    q, k, v = (b.torch(t) for t in (query, key, value))
    scale_src = literal(scale) if scale is not None else f"{q}.shape[-1] ** -0.5"
    scores = b.emit(f"{q} @ jnp.swapaxes({k}, -1, -2) * {scale_src}", name=b.fresh("scores"))
    if is_causal:
        causal = f"jnp.tril(jnp.ones(({q}.shape[-2], {k}.shape[-2]), dtype=bool))"
        scores = b.emit(f"jnp.where({causal}, {scores}, -jnp.inf)", name=b.fresh("masked"))
    if attn_mask is not None:
        mask = b.torch(attn_mask)
        masked = f"jnp.where({mask}, {scores}, -jnp.inf)" if _is_bool(mask) else f"{scores} + {mask}"
        scores = b.emit(masked, name=b.fresh("masked"))
    weights = b.emit(f"jax.nn.softmax({scores}, axis=-1)", name=b.fresh("weights"))
    return b.emit(f"{weights} @ {v}")


def _is_bool(v) -> bool:
    return getattr(v, "dtype", None) == "torch.bool"


@op(torch.einsum)
def einsum(b, equation, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    xs = ", ".join(str(b.torch(x)) for x in operands)
    return b.emit(f"jnp.einsum({equation!r}, {xs})")


@op(torch.ones_like, torch.zeros_like)
def ones_like(b, input, dtype=None, **kw):
    if dtype is not None:
        return b.stub(f"torch.{b.node_target_name()}(dtype=...)")
    return b.emit(f"jnp.{b.node_target_name()}({input})", like=input)
