"""The generator's driver: record each submodule's inputs, translate each instance's forward
(:mod:`parity.port._graph`), answer the submodule calls and attribute reads of a forward,
then group instances into classes and write the file (:mod:`parity.port._emit`).
"""

from __future__ import annotations

import copy
import dis
import inspect
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from parity.errors import ParityError
from parity.port import Stub
from parity.port._graph import Body, user_line
from parity.port._layers import LEAVES, SEQUENTIAL_FUNCTIONS, STATELESS, lookup
from parity.port._names import LocalNames
from parity.port._ops import FUNCS, METHODS
from parity.port._values import Raw, Value, is_tensor

_CONTAINERS = (nn.Sequential, nn.ModuleList)


class PortError(ParityError):
    """Arguments ``build_port`` cannot work with (one line)."""


class _LeafTracer(fx.Tracer):
    """Traces one module's own forward: every submodule is a leaf call."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.proxy_buffer_attributes = True  # a mask buffer sliced by a traced size stays traceable

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True

    def to_bool(self, obj: fx.Proxy) -> bool:
        """``assert`` on a traced value (``assert t <= block_size``) holds: the port drops the
        check; any other ``if`` on a traced value stays untraceable."""
        frame = inspect.currentframe()
        caller = frame.f_back.f_back if frame and frame.f_back else None
        if caller is not None and _asserts_at(caller):
            return True
        return super().to_bool(obj)


def _asserts_at(frame: Any) -> bool:
    """The frame's current instruction is the jump of an ``assert`` (it raises AssertionError
    when the test is false)."""
    insts = list(dis.get_instructions(frame.f_code))
    cur = next((i for i, ins in enumerate(insts) if ins.offset >= frame.f_lasti), len(insts))
    if cur + 1 >= len(insts):
        return False
    return "IF_TRUE" in insts[cur].opname and insts[cur + 1].opname == "LOAD_ASSERTION_ERROR"


def _defaults(module: nn.Module, given: int, keywords: dict | None = None) -> dict[str, Any] | None:
    """The default values of ``forward``'s parameters after the ``given`` positional inputs
    (``targets=None``) but the ``keywords`` inputs: the port is called with the inputs only, so
    they are constants."""
    params = list(inspect.signature(module.forward).parameters.values())[given:]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    out = {
        p.name: p.default
        for p in params
        if p.kind in kinds and p.default is not p.empty and p.name not in (keywords or {})
    }
    return out or None


@dataclass
class Instance:
    """One torch module instance and its translated ``__call__``."""

    module: nn.Module
    name: str
    class_name: str
    is_root: bool = False
    in_cl: list[bool] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    keywords: list[str] = field(default_factory=list)  # the root's keyword-only inputs
    lines: list[str] = field(default_factory=list)
    out_cl: list[bool] = field(default_factory=list)
    returns_tuple: bool = False
    needs_train: bool = False
    tied: dict[str, str] = field(default_factory=dict)  # torch Linear attr -> Embed attr
    variant: str = ""
    arg_values: dict[str, Any] = field(default_factory=dict)
    namespace: bool = False  # an nn.ModuleDict: attributes only, no __call__


class _ModeDependent(Exception):
    """The forward traces differently in train and eval mode (it reads ``self.training``)."""


def _trace_both_modes(
    module: nn.Module, given: int | None = None, keywords: dict | None = None
) -> tuple[fx.Graph, dict]:
    """The fx graph of ``module``'s forward and ``{node: forward's local name for it}``; raises
    :class:`_ModeDependent` when tracing it in train mode and in eval mode gives two graphs: a
    Flax port needs the mode as an argument or a module flag there, which a trace cannot say."""
    modes = {m: m.training for m in module.modules()}
    try:
        concrete = _defaults(module, given, keywords) if given is not None else None
        graphs = [_LeafTracer().trace(module.train(True), concrete)]
        with LocalNames(type(module).forward) as local:
            graphs.append(_LeafTracer().trace(module.train(False), concrete))
    finally:
        for m, mode in modes.items():
            m.training = mode
    if str(graphs[0]) != str(graphs[1]):
        pairs = zip(graphs[0].nodes, graphs[1].nodes, strict=False)
        first = next((a for a, c in pairs if a.format_node() != c.format_node()), None)
        raise _ModeDependent(
            "its train and eval traces differ", user_line(first.stack_trace if first else None)
        )
    return graphs[1], local.names


def is_digit_container(m: nn.Module) -> bool:
    """A ``ModuleList``, or a ``Sequential`` whose children are numbered (a Flax list)."""
    if isinstance(m, nn.ModuleList):
        return True
    return isinstance(m, nn.Sequential) and all(k.isdigit() for k, _ in m.named_children())


class Builder:
    """State shared by every instance's translation."""

    def __init__(self, model: nn.Module, inputs: tuple, style: str, kwargs: dict | None = None) -> None:
        self.model, self.style, self.kwargs = model, style, kwargs or {}
        self.recorded, self.recorded_kw, self.copies = _record_inputs(model, inputs, self.kwargs)
        self.channels_last = _wants_channels_last(model, inputs)
        self.flatten_linears = _flatten_linears(model, inputs)
        self.instances: dict[int, Instance] = {}
        self.order: list[Instance] = []
        self.stubs: list[Stub] = []
        self.notes: list[str] = []
        self.sequential: dict[int, list] = {}  # NNX containers written as nnx.Sequential

    def add_stub(self, op: str, where: str, message: str) -> None:
        if all((s.op, s.where) != (op, where) for s in self.stubs):  # once per class and line
            self.stubs.append(Stub(op, where, message))

    # ------------------------------------------------------------ instances
    def instance(self, module: nn.Module, name: str, in_cl: list[bool]) -> Instance:
        """The translated instance (translated on first use, with these input layouts)."""
        if id(module) in self.instances:
            return self.instances[id(module)]
        cls = type(module).__name__
        if isinstance(module, (nn.Sequential, nn.ModuleDict)):  # a class named for its attribute
            cls = "".join(p.capitalize() for p in name.rsplit(".", 1)[-1].split("_")) or cls
        inst = Instance(module, name, cls, is_root=module is self.model, in_cl=list(in_cl))
        self.instances[id(module)] = inst
        if isinstance(module, nn.ModuleDict):  # a namespace: its modules as attributes, no call
            inst.namespace = True
            self.order.append(inst)
            return inst
        body = Body(self, inst)
        try:
            recorded, keywords = self.recorded.get(id(module)), self.recorded_kw.get(id(module), {})
            given = None if recorded is None else len(recorded)
            graph, body.source_names = _trace_both_modes(module, given, keywords)
        except Exception as e:  # data-dependent control flow, unsupported Python: a stub class
            self._untraceable(inst, body, e)
        else:
            _propagate_shapes(self.copies.get(id(module)), graph, recorded, keywords)
            body.run(graph, in_cl, self._keyword_layouts(module))
            inst.lines = body.lines
        self.order.append(inst)
        return inst

    def _keyword_layouts(self, module: nn.Module) -> dict[str, bool]:
        """The root's keyword inputs and whether each is channels-last (as positional ones)."""
        if module is not self.model:
            return {}
        return {
            k: self.channels_last and v.dim() >= 3 and v.is_floating_point() for k, v in self.kwargs.items()
        }

    def _untraceable(self, inst: Instance, body: Body, e: Exception) -> None:
        tb = traceback.extract_tb(e.__traceback__)
        frames = [f for f in tb if "/torch/" not in f.filename and f.filename != __file__]
        line = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
        line = e.args[1] if isinstance(e, _ModeDependent) else line
        op = "data-dependent control flow" if isinstance(e, fx.proxy.TraceError) else type(e).__name__
        op = "forward reads self.training" if isinstance(e, _ModeDependent) else op
        where = f"{inst.class_name}.forward" + (f" ({line})" if line else "")
        why = f"torch.fx cannot trace it ({(str(e).splitlines() or [''])[0][:80]})"
        if isinstance(e, _ModeDependent):
            why = "its train and eval traces differ (a mode the port must take as a module or argument)"
        message = f"{op} at {where}: {why}; write it by hand"
        self.add_stub(op, where, message)
        inst.args = ["x"]
        inst.lines = [f"# TODO(parity port): {message}", f"return not_translated({op!r}, {where!r})"]
        inst.out_cl = [False]

    # ------------------------------------------------------------ forward nodes
    def get_attr(self, body: Body, target: str) -> Any:
        owner_path, _, attr = target.rpartition(".")
        owner = body.inst.module.get_submodule(owner_path) if owner_path else body.inst.module
        tensor = getattr(owner, attr)
        if owner_path:
            return body.stub(f"self.{target}", "a submodule's tensor used directly")
        if isinstance(tensor, nn.Parameter):  # read where it is used, as a person writes it
            read = f"self.{attr}[...]" if self.style == "nnx" else f"self.{attr}"
            return Value(read, shape=tuple(tensor.shape), fixed=True)
        expr = constant_source(tensor)
        if expr is None:
            return body.stub(
                f"buffer {attr}", f"a constant of shape {tuple(tensor.shape)} is too large to write"
            )
        self.notes.append(f"{body.inst.name or '(root)'}.{attr}: constant buffer written as {expr}")
        v = body.emit(expr)
        v.shape = tuple(tensor.shape)
        return v

    def call_module(self, body: Body, target: str, args: list, kwargs: dict) -> Any:
        module = body.inst.module.get_submodule(target)
        full = f"{body.inst.name}.{target}".strip(".")
        tied = _tied_embedding(body.inst.module, target, module)
        if tied is not None:
            body.inst.tied[target] = tied
            owner = f"{body.inst.name}." if body.inst.name else ""
            self.notes.append(
                f"{full}.weight is tied to {owner}{tied}.weight: written as {tied}.attend (TiedHead)"
            )
            return body.emit(f"self.{target}({body.torch(args[0])}, self.{tied})")
        src = attr_source(target, self.style, self.sequential_parents(body.inst.module, target))
        value, _ = self.call_child(body, module, full, src, args, kwargs)
        return value

    def sequential_parents(self, owner: nn.Module, target: str) -> list[bool]:
        parts, out, m = target.split("."), [], owner
        for p in parts[:-1]:
            m = m.get_submodule(p)
            out.append(id(m) in self.sequential)
        return out

    def call_child(self, body: Body, module: nn.Module, full: str, src: str, args: list, kwargs: dict):
        """``(value, element)``: the call's result, and what the module is as an element of an
        ``nnx.Sequential`` (``None``: it cannot be one)."""
        stateless = lookup(STATELESS, module)
        if stateless is not None:
            return self._stateless(body, module, stateless, args)
        leaf = lookup(LEAVES, module)
        if leaf is not None:
            return self._leaf(body, module, leaf(module, self.style), src, args, kwargs)
        if is_digit_container(module):
            return self._container(body, module, full, src, args)
        child = self.instance(module, full, [bool(is_tensor(a) and a.cl) for a in args])
        call = [
            literal_arg(body, a, cl) for a, cl in zip(args, child.in_cl + [False] * len(args), strict=False)
        ]
        if kwargs:
            return body.stub(f"{child.class_name}(... keyword arguments)"), None
        if self.style == "linen" and child.needs_train:
            call.append("train=train")
            body.inst.needs_train = True
        expr = f"{src}({', '.join(call)})"
        if child.returns_tuple:
            v = body.emit(expr, kind="seq")
            v.items = [Value(f"{v}[{i}]", cl=c) for i, c in enumerate(child.out_cl)]
            return v, None
        v = body.emit(expr, cl=child.out_cl[0] if child.out_cl else False)
        return v, Raw("")

    def _stateless(self, body: Body, module: nn.Module, entry, args: list):
        op, kw = entry(module)
        handler = METHODS.get(op) or FUNCS.get(getattr(torch.nn.functional, op, None))
        saved, body.node_target_name = body.node_target_name, lambda: op
        try:
            value = handler(body, args[0], **kw)
        finally:
            body.node_target_name = saved
        fn = SEQUENTIAL_FUNCTIONS.get(op)
        if op == "gelu":
            fn = f"partial(jax.nn.gelu, approximate={kw['approximate'] == 'tanh'})"
        return value, (Raw(fn) if fn else None)

    def _leaf(self, body: Body, module: nn.Module, leaf, src: str, args: list, kwargs: dict):
        kind = type(module).__name__
        if leaf.ctor is None:
            return body.stub(f"nn.{kind}", leaf.problem), None
        if leaf.call == "mha":
            return self._attention(body, module, src, args, kwargs), None
        if len(args) > 1 or kwargs:  # ConvTranspose's output_size, a mask: not translated
            return body.stub(f"nn.{kind} called with more than its input"), None
        x = args[0]
        before = body.conversions
        x = (
            body.cl(x)
            if leaf.layout == "cl" or leaf.call == "bn"
            else body.torch(x)
            if leaf.layout == "torch"
            else x
        )
        mode = ""
        if self.style == "linen" and leaf.call in ("bn", "dropout"):
            body.inst.needs_train = True
            mode = ", use_running_average=not train" if leaf.call == "bn" else ", deterministic=not train"
        v = body.emit(f"{src}({x}{mode})", cl=bool(is_tensor(x) and x.cl))
        return v, (leaf.ctor if body.conversions == before else None)

    def _attention(self, body: Body, module: nn.MultiheadAttention, src: str, args: list, kwargs: dict):
        names = ["query", "key", "value", "key_padding_mask", "need_weights", "attn_mask"]
        given = {**dict(zip(names, args, strict=False)), **kwargs}
        if any(given.get(k) is not None for k in ("key_padding_mask", "attn_mask")) or given.get("is_causal"):
            return body.stub("nn.MultiheadAttention with a mask")
        qkv = [body.torch(given[k]) for k in ("query", "key", "value")]
        if not module.batch_first:
            qkv = [body.emit(f"jnp.swapaxes({t}, 0, 1)", name=body.fresh(f"{t}_nlc")) for t in qkv]
        mode = ""
        if self.style == "linen" and module.dropout:
            mode, body.inst.needs_train = ", deterministic=not train", True
        out = body.emit(f"{src}({', '.join(map(str, qkv))}{mode})")
        if not module.batch_first:
            out = body.emit(f"jnp.swapaxes({out}, 0, 1)", name=body.fresh(f"{out}_lnc"))
        weights = "the attention weights (need_weights=True)"
        return Value(out.expr, "seq", items=[out, _NoWeights(body, weights)])

    def _container(self, body: Body, module: nn.Module, full: str, src: str, args: list):
        """A numbered container called as a whole: its elements in order (one nnx.Sequential
        call in NNX when every element can be an element of one)."""
        if not args:
            return body.stub(f"{type(module).__name__} called without arguments"), None
        start, before, x, elements = len(body.lines), body.conversions, args[0], []
        base = body.prefix or body.node.name
        for key, child in module.named_children():
            body.prefix = f"{base}_{key}"
            try:
                x, element = self.call_child(body, child, f"{full}.{key}", f"{src}[{key}]", [x], {})
            finally:
                body.prefix = ""
            elements.append(element)
        if x is None:
            return body.stub("empty nn.Sequential"), None
        simple = all(e is not None for e in elements) and body.conversions == before
        if self.style == "nnx" and isinstance(module, nn.Sequential) and simple:
            self.sequential[id(module)] = elements
            body.names.difference_update({line.split(" = ", 1)[0] for line in body.lines[start:]})
            del body.lines[start:]
            return body.emit(f"{src}({args[0]})", cl=bool(is_tensor(x) and x.cl), name=body.fresh(base)), None
        if simple and len(elements) > 1 and all(e == Raw("") for e in elements):  # blocks: a loop
            mode = ", train=train" if "train=train" in body.lines[start] else ""
            body.names.difference_update({line.split(" = ", 1)[0] for line in body.lines[start:]})
            del body.lines[start:]
            name, item = body.fresh(base), body.loop_var()
            call = f"{item}({name}{mode})"
            body.lines += [f"{name} = {args[0]}", f"for {item} in {src}:", f"    {name} = {call}"]
            return Value(name, cl=bool(is_tensor(x) and x.cl), shape=x.shape), None
        last = body.lines[-1]
        if last.startswith(f"{x} = ") and isinstance(
            x, Value
        ):  # the last element's value gets the node's name
            name = body.fresh(base)
            body.lines[-1] = f"{name} = {last.split(' = ', 1)[1]}"
            x = Value(name, x.kind, x.cl, x.shape, x.items)
        return x, None

    def flatten_consumer(self, body: Body) -> str | None:
        """The Linear (full name) a flatten in ``body`` feeds through element-wise ops, when the
        converter permutes that Linear's rows for a channels-last flatten."""
        seen, todo = set(), list(body.node.users)
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "call_module":
                full = f"{body.inst.name}.{n.target}".strip(".")
                if full in self.flatten_linears:
                    return full
                m = body.inst.module.get_submodule(n.target)
                if lookup(STATELESS, m) is None and not isinstance(
                    m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)
                ):
                    continue
            elif n.op not in ("call_function", "call_method"):
                continue
            todo += list(n.users)
        return None


class _NoWeights(Value):
    def __init__(self, body: Body, what: str) -> None:
        super().__init__("None", "py")


def literal_arg(body: Body, a: Any, cl: bool) -> str:
    if not is_tensor(a):
        return repr(a) if not isinstance(a, Value) else a.expr
    return str(body.cl(a) if cl else body.torch(a))


def attr_source(target: str, style: str, sequential: list[bool]) -> str:
    """``self.blocks[0].attn`` for target ``blocks.0.attn`` (``.layers[0]`` inside an NNX
    ``nnx.Sequential``)."""
    out = "self"
    for i, part in enumerate(target.split(".")):
        if part.isdigit():
            out += f".layers[{part}]" if i and sequential[i - 1] else f"[{part}]"
        else:
            out += f".{part}"
    return out


def _tied_embedding(owner: nn.Module, target: str, module: nn.Module) -> str | None:
    """The ``nn.Embedding`` of ``owner`` (a child, or inside an ``nn.ModuleDict`` child:
    ``transformer.wte``) whose weight ``module`` (a bias-free Linear) shares."""
    if not isinstance(module, nn.Linear) or module.bias is not None or "." in target:
        return None
    for name, child in owner.named_modules():
        if isinstance(child, nn.Embedding) and child.weight is module.weight:
            parents = [owner.get_submodule(name.rsplit(".", 1)[0])] if "." in name else []
            if all(isinstance(m, nn.ModuleDict) for m in parents) and name.count(".") <= 1:
                return name
    return None


def constant_source(t: torch.Tensor) -> str | None:
    """Source of a constant buffer: zeros, ones, a triangular mask, a range, or a short literal."""
    t = t.detach().cpu()
    shape = tuple(t.shape)
    dtype = ", dtype=bool" if t.dtype == torch.bool else ""
    ones = torch.ones_like(t)
    if t.numel() and torch.equal(t, torch.zeros_like(t)):
        return f"jnp.zeros({shape}{dtype})"
    if t.numel() and torch.equal(t, ones):
        return f"jnp.ones({shape}{dtype})"
    if t.dim() >= 2 and t.numel():
        for fn in ("tril", "triu"):
            if torch.equal(t, getattr(torch, fn)(ones)):
                return f"jnp.{fn}(jnp.ones({shape}{dtype}))"
    if t.dim() == 1 and not t.is_floating_point() and torch.equal(t, torch.arange(len(t), dtype=t.dtype)):
        return f"jnp.arange({len(t)})"
    if t.numel() <= 64:
        return f"jnp.asarray({t.tolist()!r}{dtype})"
    return None


def _record_inputs(model: nn.Module, inputs: tuple, kwargs: dict) -> tuple[dict, dict, dict]:
    """``({id(module): args of its first call}, {id(module): its keyword tensors}, {id(module):
    its copy})`` from one eval-mode pass of a private copy: on the ``meta`` device (shapes only,
    no arithmetic) when the model runs there, else on the real tensors."""
    for device in ("meta", None):
        copied = copy.deepcopy(model).eval()
        xs = inputs if device is None else tuple(x.to(device) for x in inputs)
        kw = kwargs if device is None else {k: v.to(device) for k, v in kwargs.items()}
        copied = copied if device is None else copied.to(device)
        copies = dict(zip((id(m) for m in model.modules()), copied.modules(), strict=True))
        seen: dict[int, tuple] = {}
        seen_kw: dict[int, dict] = {}
        originals = {id(c): m for m, c in zip(model.modules(), copied.modules(), strict=True)}
        hooks = [
            c.register_forward_pre_hook(_recorder(seen, seen_kw, originals[id(c)]), with_kwargs=True)
            for c in copied.modules()
        ]
        try:
            with torch.no_grad():
                copied(*xs, **kw)
            return seen, seen_kw, copies
        except Exception as e:  # user code (or an op the meta device lacks: run it for real)
            if device is None:
                why = f"{type(e).__name__}: {e}".splitlines()[0]
                raise PortError(f"{type(model).__name__} fails on the example input: {why}") from None
        finally:
            for h in hooks:
                h.remove()
    raise AssertionError("unreachable")


def _recorder(seen: dict, seen_kw: dict, original: nn.Module):
    def hook(mod, args, kwargs):
        seen.setdefault(id(original), args)
        seen_kw.setdefault(id(original), {k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})

    return hook


def _propagate_shapes(copied: nn.Module | None, graph: fx.Graph, args: tuple | None, keywords: dict) -> None:
    """Tensor shapes on ``graph``'s nodes, from the recorded call of the module's copy (its
    keyword tensors placed at their parameters, the defaults between)."""
    if args is None or copied is None:
        return
    params = inspect.signature(copied.forward).parameters
    names = [str(n.target).lstrip("*") for n in graph.nodes if n.op == "placeholder"]
    if keywords:
        rest = [keywords.get(n, getattr(params.get(n), "default", None)) for n in names[len(args) :]]
        args = (*args, *rest)
    try:
        with torch.no_grad():
            ShapeProp(fx.GraphModule(copied, graph)).propagate(*args)
    except Exception:  # shapes stay unknown; the ops that need them become stubs
        pass


def _wants_channels_last(model: nn.Module, inputs: tuple) -> bool:
    spatial = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)
    x = inputs[0]
    return x.is_floating_point() and x.dim() >= 3 and any(isinstance(m, spatial) for m in model.modules())


def _flatten_linears(model: nn.Module, inputs: tuple) -> set[str]:
    from parity.convert.flatten import detect_flattens

    try:
        return set(detect_flattens(model, input_shape=tuple(inputs[0].shape)).shapes)
    except Exception:  # no flatten found this way: flattens go through torch's order
        return set()
