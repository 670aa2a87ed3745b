"""One torch module instance's ``forward`` as the body of a Flax ``__call__``.

:class:`Body` walks the ``torch.fx`` graph of the instance (its submodules traced as leaves):
every node becomes one statement named after the node. Tensors carry their layout
(:mod:`parity.port._values`); a conversion is written once per tensor where an op needs the
other layout. Submodule calls go back to the builder (:mod:`parity.port._build`).
"""

from __future__ import annotations

import keyword
import math
import operator
import re
from typing import Any

import torch
from torch import fx

import parity.port._ops as _ops
from parity.port._names import assigned, drop_unused, inline_return, is_free, mentions, merge_reads, rename
from parity.port._values import Value, cl_order, index_literal, is_tensor, jax_axis, literal

RESERVED = {
    *("self", "jax", "jnp", "nn", "nnx", "partial", "train", "rngs", "math"),
    *("attention", "not_translated", "keep_table_dtype", "dot_product_attention_weights", "TiedHead"),
    "torch_shaped",
}
_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)')
_CONVERTED = {3: "ncw", 4: "nchw", 5: "ncdhw"}
_CL_NAMES = {3: "nwc", 4: "nhwc", 5: "ndhwc"}


def var_name(name: str) -> str:
    """A Python identifier for an fx node name that names nothing else in the generated code."""
    name = re.sub(r"\W", "_", name)
    return f"{name}_" if name in RESERVED or keyword.iskeyword(name) else name


def _stem(expr: str) -> str:
    """A name for a value derived from ``expr`` (``self.pos[...]`` -> ``pos``)."""
    return re.sub(r"\W+", "_", re.sub(r"^self\.|\[\.\.\.\]$", "", expr)).strip("_")


def user_line(stack: str | None) -> str:
    """``file.py:LINE`` of the last frame outside torch in an fx node's stack trace."""
    frames = [(f, n) for f, n in _FILE_LINE.findall(stack or "") if "/torch/" not in f]
    return f"{frames[-1][0].rsplit('/', 1)[-1]}:{frames[-1][1]}" if frames else ""


class Body:
    """The translation of one instance: ``lines`` of ``__call__``, its ``args`` and layouts."""

    def __init__(self, builder: Any, inst: Any) -> None:
        self.b, self.inst, self.style = builder, inst, builder.style
        self.lines: list[str] = []
        self.env: dict[fx.Node, Any] = {}
        self.node: fx.Node | None = None
        self.converted: dict[tuple[str, bool], Value] = {}
        self.conversions = 0
        self.names: set[str] = set()
        self.prefix = ""  # the name of the statement being written, when not the node's
        self.origin: dict[str, fx.Node | None] = {}  # variable -> the node that wrote it
        self.seq_len: dict[str, int] = {}  # a sequence variable -> its length, when known
        self.source_names: dict[fx.Node, str] = {}  # node -> forward's local name for it
        self.loop_vars: set[str] = set()

    # ------------------------------------------------------------ statements
    def fresh(self, base: str) -> str:
        name, k = var_name(base), 1
        while name in self.names:
            name, k = f"{var_name(base)}_{k}", k + 1
        self.names.add(name)
        self.origin[name] = self.node
        return name

    def loop_var(self) -> str:
        """The variable of a loop over a list of blocks: ``block`` in every loop (each loop's is
        dead after it), unless the body names something else so."""
        name = "block" if "block" not in self.names or "block" in self.loop_vars else self.fresh("block")
        self.names.add(name)
        self.loop_vars.add(name)
        return name

    def node_shape(self) -> tuple[int, ...] | None:
        meta = self.node.meta.get("tensor_meta") if self.node is not None else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def emit(
        self, expr: str, like: Any = None, kind: str = "tensor", cl: bool | None = None, name=None, comment=""
    ) -> Value:
        """``name = expr`` (the current node's name); the Value's layout follows ``like``."""
        if cl is None:
            cl = bool(is_tensor(like) and like.cl)
        name = name or self.fresh(self.prefix or self.node.name)
        if comment:
            self.lines.append(f"# {comment}")
        self.lines.append(f"{name} = {expr}")
        shape = self.node_shape() if kind == "tensor" else None
        v = Value(name, kind, cl and (shape is None or len(shape) >= 3), shape)
        v.dtype = self.node_dtype() if kind == "tensor" else None
        return v

    def node_dtype(self) -> str | None:
        meta = self.node.meta.get("tensor_meta") if self.node is not None else None
        return str(meta.dtype) if meta is not None and hasattr(meta, "dtype") else None

    def alias(self, v: Any) -> Any:
        return v

    def node_target_name(self) -> str:
        t = self.node.target
        return t if isinstance(t, str) else getattr(t, "__name__", str(t))

    def stub(self, op: str, why: str = "") -> Value:
        where = f"{self.inst.class_name}.forward"
        line = user_line(self.node.stack_trace) if self.node is not None else ""
        where += f" ({line})" if line else ""
        message = f"{op} at {where}: {why or 'no translation'}; write it by hand"
        self.b.add_stub(op, where, message)
        return self.emit(f"not_translated({op!r}, {where!r})", comment=f"TODO(parity port): {message}"[:200])

    # ------------------------------------------------------------ layouts
    def torch(self, v: Any) -> Any:
        """``v`` in torch's axis order (a conversion statement the first time)."""
        if not is_tensor(v) or not v.cl:
            return v
        key = (v.expr, False)
        if key not in self.converted:
            name = self.fresh(f"{_stem(v.expr)}_{_CONVERTED.get(v.rank, 'cf')}")
            self.lines.append("# back to torch's channels-first")
            self.lines.append(f"{name} = jnp.moveaxis({v.expr}, -1, 1)")
            self.conversions += 1
            self.converted[key] = Value(name, shape=v.shape)
        return self.converted[key]

    def cl(self, v: Any) -> Any:
        """``v`` channels-last when its rank is >= 3."""
        if not is_tensor(v) or v.cl or v.rank is None or v.rank < 3:
            return v
        key = (v.expr, True)
        if key not in self.converted:
            name = self.fresh(f"{_stem(v.expr)}_{_CL_NAMES.get(v.rank, 'cl')}")
            self.lines.append(f"{name} = jnp.moveaxis({v.expr}, 1, -1)")
            self.conversions += 1
            self.converted[key] = Value(name, cl=True, shape=v.shape)
        return self.converted[key]

    def same_layout(self, a: Any, c: Any) -> tuple[Any, Any]:
        if is_tensor(a) and is_tensor(c) and (a.cl != c.cl or a.rank != c.rank):
            return self.torch(a), self.torch(c)
        return a, c

    def common_layout(self, xs: list) -> list:
        if all(is_tensor(x) and x.cl for x in xs) and len({x.rank for x in xs}) == 1:
            return xs
        return [self.torch(x) for x in xs]

    def reducible(self, x: Value, dims: tuple, keepdim: bool) -> tuple[Value, bool]:
        """``(x, result channels-last)``: ``x`` in a layout where reducing ``dims`` leaves the
        result in torch's order or channels-last."""
        if not x.cl or keepdim:
            return x, x.cl
        gone = {d % x.rank for d in dims}
        left = [a for a in cl_order(x.rank) if a not in gone]
        held = [sorted(left).index(a) for a in left]
        if held == sorted(held):
            return x, False
        if len(held) >= 3 and held == cl_order(len(held)):
            return x, True
        return self.torch(x), False

    # ------------------------------------------------------------ shape ops
    def flatten(self, x: Value, start: int, end: int) -> Value:
        r = x.rank
        s, e = start % r, end % r
        if s == e:
            return x
        if x.cl and s >= 2:  # spatial axes only: contiguous in channels-last too
            dims = [f"{x}.shape[0]", *(f"{x}.shape[{i - 1}]" for i in range(2, s)), "-1"]
            dims += [*(f"{x}.shape[{i - 1}]" for i in range(e + 1, r)), f"{x}.shape[-1]"]
            return self.emit(f"{x}.reshape({', '.join(dims)})", cl=True)
        if x.cl and s == 1 and e == r - 1:
            spatial = math.prod(x.shape[2:]) if x.shape else None
            if spatial == 1:
                return self.emit(f"{x}.reshape({x}.shape[0], -1)")
            linear = self.b.flatten_consumer(self)
            if linear is not None:
                why = f"channels-last flatten order: the converter permutes {linear}'s rows to match"
                return self.emit(f"{x}.reshape({x}.shape[0], -1)", comment=why)
        x = self.torch(x)
        dims = [*(f"{x}.shape[{i}]" for i in range(s)), "-1", *(f"{x}.shape[{i}]" for i in range(e + 1, r))]
        return self.emit(f"{x}.reshape({', '.join(dims)})")

    def permute(self, x: Value, dims: list[int]) -> Value:
        held = cl_order(x.rank) if x.cl else list(range(x.rank))
        perm = [held.index(d) for d in dims]
        if perm == sorted(perm):
            return Value(x.expr, shape=self.node_shape())
        moved = [i for i, p in enumerate(perm) if p != i]
        if len(moved) == 2:
            return self.emit(f"jnp.swapaxes({x}, {moved[0]}, {moved[1]})")
        return self.emit(f"jnp.transpose({x}, {tuple(perm)})")

    def is_batch_size(self, x: Value, v: Any) -> bool:
        return isinstance(v, Value) and v.kind == "int" and v.items == [0]

    def shape_of(self, x: Value) -> Value:
        return Value(f"{x}.shape", "shape", of=x)

    def shape_item(self, shape: Value, i: Any) -> Any:
        x = shape.of
        if not isinstance(i, int):
            x = self.torch(x)
            return self.emit(f"{x}.shape[{index_literal(i)}]", kind="int")
        v = self.emit(f"{x}.shape[{jax_axis(i, x.rank, x.cl)}]", kind="int")
        v.items = [i % x.rank]
        return v

    def pool(self, x: Value, kind: str, dims: int, k, stride, padding) -> Value:
        if x.rank != dims + 2:
            return self.stub(f"{kind}_pool{dims}d on an unbatched input")
        x = self.cl(x)
        pairs = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims  # noqa: E731
        k = pairs(k)
        stride = pairs(stride) if stride not in (None, (), []) else k
        pad = pairs(padding)
        ns = "nnx" if self.style == "nnx" else "nn"
        extra = f", padding={tuple((p, p) for p in pad)}" if any(pad) else ""
        return self.emit(f"{ns}.{kind}_pool({x}, window_shape={k}, strides={stride}{extra})", cl=True)

    def adaptive(self, x: Value, output_size, dims: int) -> Value:
        if x.rank != dims + 2 or x.shape is None:
            return self.stub(f"adaptive_avg_pool{dims}d on an input of unknown or unbatched shape")
        x = self.cl(x)
        size = output_size if isinstance(output_size, (tuple, list)) else (output_size,) * dims
        spatial = x.shape[2:]
        size = tuple(s if o is None else o for o, s in zip(size, spatial, strict=True))
        if all(o == 1 for o in size):
            return self.emit(f"jnp.mean({x}, axis={tuple(range(1, dims + 1))}, keepdims=True)", cl=True)
        if any(s % o for s, o in zip(spatial, size, strict=True)):
            return self.stub(f"adaptive_avg_pool{dims}d", f"{spatial} is not a multiple of {size}")
        window = tuple(s // o for s, o in zip(spatial, size, strict=True))
        ns = "nnx" if self.style == "nnx" else "nn"
        return self.emit(f"{ns}.avg_pool({x}, window_shape={window}, strides={window})", cl=True)

    # ------------------------------------------------------------ nodes
    def run(self, graph: fx.Graph, in_cl: list[bool], keywords: dict[str, bool]) -> None:
        """Translate ``graph``; ``in_cl``: the positional inputs' layouts (channels-last or
        not), ``keywords``: the keyword inputs' (the root's only: keyword-only arguments)."""
        placeholders = 0
        for node in graph.nodes:
            self.node = node
            if node.op == "placeholder" and node.target in keywords:
                self.names.add(node.target)  # the caller's keyword: the name as it is
                self.origin[node.target] = node
                self.inst.keywords.append(node.target)
                cl = keywords[node.target]
                self.env[node] = Value(node.target, cl=cl, shape=self.node_shape(), dtype=self.node_dtype())
            elif node.op == "placeholder":
                if placeholders >= len(in_cl) and _unused(node):  # a default (``targets=None``)
                    continue
                base = str(node.target).lstrip("*")  # the parameter's name (fx renames ``input``)
                name = self.fresh(base if is_free(base, RESERVED) else "x")
                cl = in_cl[placeholders] if placeholders < len(in_cl) else False
                self.inst.args.append(name)
                self.env[node] = Value(name, cl=cl, shape=self.node_shape(), dtype=self.node_dtype())
                placeholders += 1
            elif node.op == "output":
                self.output(node.args[0])
                self.tidy()
            elif node.users:
                self.env[node] = self.translate(node)

    def tidy(self) -> None:
        """Readable names (:mod:`parity.port._names`): shape reads and splits unpacked, the
        forward's own variable names, unrolled loops rolled again, the last value returned."""
        wanted: dict[str, str] = {}
        for node, name in self.source_names.items():  # a value passed on unchanged (``y, _ =
            v = self.env.get(node)  # attn(...)``) takes the name when its writer has none
            writer = self.origin.get(v.expr) if isinstance(v, Value) else None
            if writer is node:
                wanted[v.expr] = name
            elif writer is not None and writer not in self.source_names:
                wanted.setdefault(v.expr, name)
        values = [v for v in self.env.values() if is_tensor(v)] + list(self.converted.values())
        ranks = {v.expr: v.rank for v in values}
        self.lines = drop_unused(merge_reads(self.lines, ranks, self.seq_len, set(wanted)))
        self.lines = rename(self.lines, self.inst.args + self.inst.keywords, wanted, RESERVED)
        self.names = {w for line in self.lines for w in re.findall(r"\b\w+\b", line)}
        self.loop_vars -= assigned(self.lines)  # a loop variable's name the renaming gave a value
        self.reroll()
        self.lines = inline_return(self.lines)

    def reroll(self) -> None:
        """Calls of every block of a list in order, each on the previous one's output (fx
        unrolls ``for block in self.blocks: x = block(x)``), written as that loop again."""
        i = 0
        while i < len(self.lines):
            run = _list_run(self.lines, i)
            if run and run[1] == _list_len(self.inst.module, run[0]):
                attr, n, first_arg, mode = run
                last = self.lines[i + n - 1].split(" = ", 1)[0]
                inner = {line.split(" = ", 1)[0] for line in self.lines[i : i + n - 1]} - {last}
                if not any(mentions(line, v) for line in self.lines[i + n :] for v in inner):
                    item = self.loop_var()
                    loop = [f"{last} = {first_arg}"] if last != first_arg else []
                    loop += [f"for {item} in self.{attr}:", f"    {last} = {item}({last}{mode})"]
                    self.lines[i : i + n] = loop
                    i += len(loop)
                    continue
            i += 1

    def value(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: self.env[n])

    def translate(self, node: fx.Node) -> Any:
        args, kwargs = self.value(node.args), self.value(node.kwargs)
        try:
            if node.op == "get_attr":
                return self.b.get_attr(self, node.target)
            if node.op == "call_module":
                return self.b.call_module(self, node.target, list(args), dict(kwargs))
            if node.target is getattr:
                return self.attribute(*args)
            if node.target is operator.getitem:
                return self.getitem(*args)
            table = _ops.METHODS if node.op == "call_method" else _ops.FUNCS
            handler = table.get(node.target)
            if handler is None:
                return self.stub(_op_name(node))
            return handler(self, *args, **kwargs)
        except Exception as e:  # a translation that does not fit this use: a stub, never a crash
            return self.stub(_op_name(node), f"{type(e).__name__}: {e}"[:120])

    def attribute(self, x: Any, name: str) -> Any:
        if name == "shape":
            return self.shape_of(x)
        if name == "dtype":
            return Value(f"{x}.dtype", "py")
        if name == "ndim":
            return x.rank
        if name == "device":  # only ever passed on (``device=x.device``): JAX places arrays itself
            return None
        if name in ("T", "mT"):
            return self.permute(x, [*range(x.rank - 2), x.rank - 1, x.rank - 2])
        return self.stub(f"tensor attribute .{name}")

    def getitem(self, x: Any, idx: Any) -> Any:
        if isinstance(x, (list, tuple)):
            return x[idx]
        if isinstance(x, Value) and x.kind == "shape":
            return self.shape_item(x, idx)
        if isinstance(x, Value) and x.kind == "seq":
            if x.items and isinstance(idx, int):
                return x.items[idx]
            return self.emit(f"{x}[{index_literal(idx)}]", cl=x.cl)
        x = self.torch(x)
        return self.emit(f"{x}[{index_literal(idx)}]")

    def output(self, result: Any) -> None:
        out = self.value(result)
        flat = list(out) if isinstance(out, (tuple, list)) else [out]
        if self.inst.is_root and not self.b.channels_last:
            flat = [self.torch(v) for v in flat]
        self.inst.out_cl = [bool(is_tensor(v) and v.cl) for v in flat]
        text = ", ".join(literal(v) for v in flat)
        self.lines.append(f"return {text}")
        self.inst.returns_tuple = isinstance(out, (tuple, list))


def _unused(node: fx.Node) -> bool:
    """A placeholder fx fixed to a default value: no users but fx's check that it is that value."""
    return all(getattr(u.target, "__name__", "") == "_assert_is_none" for u in node.users)


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    mod = getattr(t, "__module__", "") or ""
    if mod.startswith("torch.nn.functional"):
        return f"F.{t.__name__}"
    if mod.startswith("torch") or isinstance(t, type(torch.cat)):
        return f"torch.{getattr(t, '__name__', t)}"
    return f"{mod}.{getattr(t, '__name__', t)}".strip(".")


_LIST_CALL = re.compile(r"^(\w+) = self\.([\w.]+)\[(\d+)\]\((\w+)(, train=train)?\)$")


def _list_run(lines: list[str], start: int) -> tuple[str, int, str, str] | None:
    """``(attribute, count, first argument, mode argument)`` of calls ``self.attr[0](a)``,
    ``self.attr[1](<previous>)``, ... starting at ``lines[start]``."""
    m = _LIST_CALL.match(lines[start])
    if m is None or m.group(3) != "0":
        return None
    attr, mode, prev, n = m.group(2), m.group(5) or "", m.group(1), 1
    for line in lines[start + 1 :]:
        k = _LIST_CALL.match(line)
        if k is None or k.group(2) != attr or k.group(3) != str(n) or k.group(4) != prev:
            break
        prev, n = k.group(1), n + 1
    return (attr, n, m.group(4), mode) if n > 1 else None


def _list_len(module: torch.nn.Module, attr: str) -> int:
    """The length of the ``ModuleList`` at ``attr`` (``h`` or ``transformer.h``), else -1."""
    try:
        child = module.get_submodule(attr)
    except AttributeError:
        return -1
    return len(child) if isinstance(child, torch.nn.ModuleList) else -1
