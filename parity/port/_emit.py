"""Writing the port: instances grouped into Flax classes (one per torch class, a variant per
distinct forward or structure; hyper-parameters that differ between instances become
constructor arguments), the file's header, helpers, imports and factory; ruff-formatted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

from torch import nn

from parity.port._build import Builder, Instance, is_digit_container
from parity.port._layers import LEAVES, STATELESS, Ctor, lookup
from parity.port._values import Raw, literal

_TIED = {
    style: f'''
class TiedHead({base}):
    """A bias-free Linear whose weight is an embedding table (tied in torch): the logits
    are ``embed.attend(x)``, ``x @ table.T``, with the embedding's own parameter."""

    def __call__(self, x: jax.Array, embed: {embed}) -> jax.Array:
        return embed.attend(x)
'''
    for style, base, embed in (("nnx", "nnx.Module", "nnx.Embed"), ("linen", "nn.Module", "nn.Embed"))
}

_HELPERS = {
    "keep_table_dtype": '''
def keep_table_dtype(arrays, dtype=None, inexact=True):
    """``nnx.Embed``'s dtype promotion, off: a lookup keeps the table's dtype (``nnx.Embed``
    would fix float32 at construction, and a float64 port would compute in float32)."""
    return arrays
''',
    "torch_shaped": '''
def torch_shaped(init, shape):
    """``init`` at torch's ``shape``: ``nnx.LayerNorm`` over several axes would hold its scale
    and bias flat; Flax reshapes either onto the feature axes, torch's weights copy as they are."""
    return lambda key, _, dtype=jnp.float32: init(key, shape, dtype)
''',
    "not_translated": '''
def not_translated(op: str, where: str) -> jax.Array:
    """Marks code ``parity port`` could not translate: write it by hand."""
    raise NotImplementedError(f"{op} at {where}: not translated by parity port")
''',
    "attention": '''
def attention(query, key, value, mask=None, dtype=None, **_):
    """Softmax attention written out, ``(N, L, heads, d)`` -> ``(N, L, heads, d)``: NNX's
    default (``jax.nn.dot_product_attention``) keeps its softmax in float32 under x64."""
    weights = dot_product_attention_weights(query, key, mask=mask, dtype=dtype)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value)
''',
}


# ------------------------------------------------------------------ constructors
def _init_entries(b: Builder, inst: Instance) -> list[tuple[str, Any]]:
    """``[(attribute, constructor)]`` of one instance, in torch's registration order."""
    out = []
    for name, p in inst.module.named_parameters(recurse=False):
        shape = tuple(p.shape)
        if b.style == "nnx":
            out.append((name, Ctor("nnx.Param", [("", Ctor("jnp.zeros", [("shape", shape)]))])))
        else:
            args = [("", Raw(repr(name))), ("", Raw("nn.initializers.zeros")), ("shape", shape)]
            out.append((name, Ctor("self.param", args)))
    for name, child in inst.module.named_children():
        if name in inst.tied:  # the head shares the embedding module: no weights of its own
            out.append((name, Ctor("TiedHead")))
            continue
        ctor = _child_ctor(b, child, f"{inst.name}.{name}".strip("."))
        if ctor is not None:
            out.append((name, ctor))
    return out


def _child_ctor(b: Builder, child: nn.Module, full: str) -> Any:
    if lookup(STATELESS, child) is not None:
        return None
    leaf = lookup(LEAVES, child)
    if leaf is not None:
        return leaf(child, b.style).ctor
    if is_digit_container(child):
        elements = b.sequential.get(id(child))
        items = []
        for i, (key, sub) in enumerate(child.named_children()):
            item = _child_ctor(b, sub, f"{full}.{key}")
            if item is None and elements is not None:
                item = elements[i]
            items.append(item)
        if b.style == "linen":
            return items
        if elements is not None:
            return Ctor("nnx.Sequential", [(str(i), v) for i, v in enumerate(items)])
        return Ctor("nnx.List", [("", items)])
    inst = b.instances.get(id(child)) or b.instance(child, full, [])
    return Ctor("", instance=inst)


def _walk(value: Any, path: str, style: str, slots: list, params: dict | None) -> str:
    """Source of a constructor value; literals are recorded in ``slots`` as ``(name, value)``
    and written as their parameter's name when ``params`` (slot index -> name) has them."""
    if isinstance(value, Ctor):
        if value.instance is not None:
            inst = value.instance
            kwargs = list(inst.arg_values.items())
            func = inst.variant
        else:
            kwargs, func = value.kwargs, value.func
        parts = [
            _walk(v, f"{path}_{n}".rstrip("_"), style, slots, params)
            for n, v in (value.args if value.instance is None else [])
        ]
        parts += [f"{n}={_walk(v, f'{path}_{n}', style, slots, params)}" for n, v in kwargs]
        if style == "nnx" and (value.instance is not None or _takes_rngs(func)):
            parts.append("rngs=rngs")
        return f"{func}({', '.join(parts)})"
    if isinstance(value, list):
        return (
            "[" + ", ".join(_walk(v, f"{path}_{i}", style, slots, params) for i, v in enumerate(value)) + "]"
        )
    if isinstance(value, Raw) or value is None or isinstance(value, str):
        return literal(value)
    k = len(slots)
    slots.append((path, value))
    return params[k] if params and k in params else literal(value)


def _takes_rngs(func: str) -> bool:
    return func.startswith("nnx.") and func not in ("nnx.Sequential", "nnx.List", "nnx.Param")


# ------------------------------------------------------------------ variants
def _group(b: Builder) -> tuple[list[tuple[str, list[Instance], dict]], dict]:
    """``[(variant name, instances, {slot index: parameter name})]`` deepest classes first.

    Instances of one torch class share a Flax class when their forwards and their
    constructors' structure are the same; the variant with the most instances is named after
    the torch class, another after the attribute it adds (``BasicBlockWithDownsample``)."""
    entries = {id(i): _init_entries(b, i) for i in list(b.order)}
    while len(entries) < len(b.order):  # submodules no forward called, translated just now
        entries.update({id(i): _init_entries(b, i) for i in b.order if id(i) not in entries})
    order = sorted(b.order, key=lambda i: -len(i.name.split(".")) if i.name else 0)
    families: dict[str, list[tuple[tuple, list[Instance]]]] = {}
    created: list[list[Instance]] = []
    anything = {k: "?" for k in range(10_000)}
    for inst in order:
        text = "\n".join(f"{a} = {_walk(c, a, b.style, [], anything)}" for a, c in entries[id(inst)])
        key = (tuple(inst.lines), (*inst.args, *inst.keywords), text, tuple(inst.in_cl), inst.needs_train)
        family = families.setdefault(inst.class_name, [])
        match = next((g for g in family if g[0] == key), None)
        if match is None:
            match = (key, [])
            family.append(match)
            created.append(match[1])
        match[1].append(inst)
        inst.variant = f"{inst.class_name}#{family.index(match)}"  # final names below
    used: set[str] = set()
    for family in families.values():
        ranked = sorted((g for _, g in family), key=len, reverse=True)
        for group in ranked:
            name = _variant_name(group[0], ranked[0][0] if group is not ranked[0] else None, entries, used)
            used.add(name)
            for inst in group:
                inst.variant = name
    return [(g[0].variant, g, _parameters(b, g, entries)) for g in created], entries


def _variant_name(inst: Instance, main: Instance | None, entries: dict, used: set) -> str:
    base = inst.class_name
    if main is not None:
        have = {a for a, _ in entries[id(main)]}
        extra = [a for a, _ in entries[id(inst)] if a not in have]
        if extra:
            base += "With" + "".join(p.capitalize() for p in extra[0].split("_"))
    name, k = base, 2
    while name in used:
        name, k = f"{base}{k}", k + 1
    return name


def _parameters(b: Builder, insts: list[Instance], entries: dict) -> dict[int, str]:
    """Slots whose value differs between the instances become parameters (one per distinct
    column of values); each instance's ``arg_values`` get its values."""
    table = []
    for inst in insts:
        slots: list = []
        for a, c in entries[id(inst)]:
            _walk(c, a, b.style, slots, None)
        table.append(slots)
    params: dict[int, str] = {}
    columns: dict[str, str] = {}
    for k in range(len(table[0])):
        column = tuple(repr(row[k][1]) for row in table)
        if len(set(column)) == 1:
            continue
        if column not in columns:
            name = re.sub(r"\W", "_", table[0][k][0]).strip("_")
            while name in columns.values():
                name += "_"
            columns[column] = name
        params[k] = columns[column]
    for inst, row in zip(insts, table, strict=True):
        inst.arg_values = {params[k]: row[k][1] for k in sorted(params)}
    return params


# ------------------------------------------------------------------ classes
def _annotation(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return type(v).__name__
    if isinstance(v, tuple):
        return "tuple"
    return "Any"


def _class_source(b: Builder, name: str, insts: list[Instance], params: dict, entries: dict) -> str:
    inst = insts[0]
    torch_cls = type(inst.module)
    names = ", ".join(i.name or "the root" for i in insts[:3]) + (", ..." if len(insts) > 3 else "")
    doc = f"Port of ``{torch_cls.__module__}.{torch_cls.__name__}`` ({names})."
    doc = '"""' + _wrap(doc, 80).replace("\n", "\n    ") + '"""'
    fields = [(p, _annotation(v)) for p, v in inst.arg_values.items()]
    slots: list = []
    own = {k: f"self.{v}" if b.style == "linen" else v for k, v in params.items()}  # Linen: fields
    assigns = [f"self.{a} = {_walk(c, a, b.style, slots, own)}" for a, c in entries[id(inst)]]
    args = ", ".join(f"{a}: jax.Array" for a in inst.args)
    keywords = [f"{a}: jax.Array" for a in inst.keywords]  # keyword-only, as the caller passes them
    ret = "tuple" if inst.returns_tuple else "jax.Array"
    lines = inst.lines or [f"return not_translated('a forward nobody called', {name!r})"]
    if b.style == "nnx":
        sig = "".join(f"{p}: {t}, " for p, t in fields)
        init = assigns or ["del rngs  # no layers"]
        head = [
            f"class {name}(nnx.Module):",
            f"    {doc}",
            "",
            f"    def __init__(self, {sig}*, rngs: nnx.Rngs) -> None:",
        ]
        head += [f"        {s}" for s in init]
        star = f", *, {', '.join(keywords)}" if keywords else ""
        call = f"    def __call__(self, {args}{star}) -> {ret}:"
    else:
        head = [f"class {name}(nn.Module):", f"    {doc}", ""] + [f"    {p}: {t}" for p, t in fields]
        if assigns:
            head += ["", "    def setup(self) -> None:"] + [f"        {s}" for s in assigns]
        keywords += ["train: bool"] if inst.needs_train or inst.is_root else []
        mode = f", *, {', '.join(keywords)}" if keywords else ""
        call = f"    def __call__(self, {args}{mode}) -> {ret}:"
    if inst.namespace:  # an nn.ModuleDict: its modules are called through it, it is never called
        return "\n".join(head)
    body = [w for s in lines for w in (_comment(s) if s.startswith("# ") else [s])]
    return "\n".join([*head, "", call, *(f"        {s}" for s in body)])


def _comment(line: str) -> list[str]:
    """A long comment as several ``#`` lines within the line length."""
    return ["# " + part for part in _wrap(line[2:], 76).splitlines()]


def _header(b: Builder, root: Instance, classes: list[str]) -> str:
    cls = type(root.module)
    style = "NNX" if b.style == "nnx" else "Linen"
    layers = sum(1 for m in root.module.modules() if lookup(LEAVES, m) is not None)
    if b.channels_last:
        layout = (
            "channels-last: the port takes image-like input NHWC (N, *spatial, C), the layout "
            "Flax's Conv and pooling use; the caller moves torch's NCHW input once (parity "
            "check does), and a tensor goes back to channels-first only where an op needs "
            "torch's axis order (marked 'back to torch's channels-first')."
        )
    else:
        layout = (
            "torch's axis order: the input has no spatial layers to feed (tokens, "
            "features), so every axis argument stays as in torch."
        )
    if b.style == "nnx":
        mode = (
            "BatchNorm and Dropout carry their own mode: model.train() / model.eval(), or "
            "nnx.view(model, ...) for an evaluation view sharing the weights."
        )
    else:
        mode = (
            "every BatchNorm (use_running_average=not train) and Dropout (deterministic=not "
            "train) gets the explicit train argument; apply with mutable=['batch_stats'] "
            "and a 'dropout' rng when train=True."
        )
    stubs = (
        (
            f"{len(b.stubs)} place(s) raise NotImplementedError (search not_translated): "
            + "; ".join(s.op for s in b.stubs)
        )
        if b.stubs
        else "none, everything was translated."
    )
    text = f"""Flax {style} port of ``{cls.__module__}.{cls.__name__}``, written by ``parity port``.

Converted: {len(classes)} class(es) ({", ".join(classes)}) from the torch module tree, with
torch's attribute names; {layers} layer(s) with torch's hyper-parameters written out; each
forward translated from a torch.fx trace of its class.

Layout: {layout}

Mode: {mode}

Not translated: {stubs}
"""
    return '"""' + "\n".join(_wrap(line) for line in text.splitlines()) + '"""'


def _wrap(line: str, width: int = 88) -> str:
    out, cur = [], ""
    for word in line.split(" "):
        if cur and len(cur) + 1 + len(word) > width:
            out.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}" if cur else word
    return "\n".join([*out, cur])


def _imports(body: str, style: str) -> list[str]:
    out = ["from functools import partial"] if "partial(" in body else []
    out += ["", "import jax"] if out else ["import jax"]
    if "jnp." in body:
        out.append("import jax.numpy as jnp")
    if "math." in body:
        out.insert(0, "import math")
    out.append("from flax import nnx" if style == "nnx" else "import flax.linen as nn")
    if "dot_product_attention_weights" in body:
        out.append("from flax.nnx.nn.attention import dot_product_attention_weights")
    return out


def render(b: Builder, root: Instance) -> str:
    """The whole ``model.py``."""
    groups, entries = _group(b)
    classes = [_class_source(b, name, insts, params, entries) for name, insts, params in groups]
    text = "\n".join(classes)
    known = {**_HELPERS, "TiedHead": _TIED[b.style]}
    helpers = [known[h].strip() for h in sorted(known) if re.search(rf"\b{h}\b", text)]
    if b.style == "nnx":
        factory = (
            'def make() -> nnx.Module:\n    """The port, fresh Flax weights (parity check converts '
            f'torch\'s into it)."""\n    return {root.variant}(rngs=nnx.Rngs(0))'
        )
    else:
        factory = (
            'def make() -> nn.Module:\n    """The port (Linen: init it, or convert torch\'s weights '
            f'into it)."""\n    return {root.variant}()'
        )
    body = "\n\n\n".join([*helpers, *classes, factory])
    names = [name for name, _, _ in groups]
    source = "\n".join([_header(b, root, names), "", *_imports(body, b.style), "", "", body, ""])
    return _ruff_format(source)


def _ruff_format(source: str) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ruff", "format", "--isolated", "-"],
            input=source,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return source
    return done.stdout if done.returncode == 0 else source
