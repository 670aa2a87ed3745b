"""The checker behind :mod:`parity.lint` (see the package docstring for the rules and the method)."""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "RULES",
    "Finding",
    "iter_python_files",
    "lint_file",
    "lint_paths",
    "lint_source",
]

#: rule code -> one-line description
RULES: dict[str, str] = {
    "MODE000": "file could not be parsed; nothing else is checked in it",
    "MODE001": "model left in eval mode inside a training loop (eval() reached from the loop "
    "is not undone by train() before the next training step)",
    "MODE002": "inference after load_state_dict()/torch.load() without eval(), in a file "
    "with no training step",
}


@dataclass(frozen=True, order=True)
class Finding:
    """One reported problem; ``line`` and ``col`` are 1-based."""

    path: str
    line: int
    col: int
    code: str
    message: str

    def format(self) -> str:
        """Return the ``path:line:col: CODE message`` line printed by the CLI."""
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"


# --------------------------------------------------------------------------- constants

#: one fact about an object's mode: ("default",), ("train",), ("unknown",) or
#: ("eval", line, col) where (line, col) is the eval call site.
Fact = tuple
Value = str | tuple | None  # an object id, a tuple of values, or nothing known
_FuncNode = ast.FunctionDef | ast.AsyncFunctionDef
_Args = list[tuple[Value, ast.expr | None]]  # positional arguments: (value, expression)
_Kws = dict[str, tuple[Value, ast.expr]]  # keyword arguments

_DEFAULT: frozenset[Fact] = frozenset({("default",)})
_TRAIN: Fact = ("train",)
_UNKNOWN: Fact = ("unknown",)

_MAX_LOOP_PASSES = 3  # a loop body is interpreted at least twice, at most this often
_MAX_CALL_DEPTH = 16  # inlined calls deeper than this are treated as opaque
_STEP_BUDGET = 20_000  # interpreted statements per entry point before giving up on it
_FILE_BUDGET = 200_000  # interpreted statements per file before skipping the remaining entries

#: methods that return their receiver (``model = model.to(device)`` keeps the object)
_SELF_RETURNING = frozenset(
    {
        "to",
        "cuda",
        "cpu",
        "float",
        "half",
        "double",
        "bfloat16",
        "type",
        "apply",
        "share_memory",
        "to_empty",
        "requires_grad_",
        "train",
        "eval",
    }
)
#: attributes that lead back to the wrapped model (DataParallel / torch.compile)
_WRAPPER_ATTRS = frozenset({"module", "_orig_mod"})
#: callables that wrap a model without changing whose mode ``eval()`` sets
_WRAPPER_CALLS = frozenset(
    {"DataParallel", "DistributedDataParallel", "DDP", "FullyShardedDataParallel", "FSDP"}
)
#: method names never resolved by the "only one class in this file defines it" heuristic
_COMMON_METHODS = frozenset(
    {
        "forward",
        "train",
        "eval",
        "parameters",
        "named_parameters",
        "state_dict",
        "load_state_dict",
        "to",
        "cuda",
        "cpu",
        "zero_grad",
        "modules",
        "children",
        "apply",
        "step",
        "backward",
        "update",
        "reset",
        "item",
        "append",
        "add",
        "log",
        "get",
        "save",
    }
)
#: builtins whose arguments are not "used" by an unknown callee (for MODE002)
_PURE_BUILTINS = frozenset(
    {
        "print",
        "len",
        "isinstance",
        "issubclass",
        "type",
        "id",
        "str",
        "repr",
        "hasattr",
        "getattr",
        "range",
        "enumerate",
        "zip",
        "sum",
        "min",
        "max",
        "abs",
        "round",
        "sorted",
        "list",
        "tuple",
        "dict",
        "set",
        "int",
        "float",
        "bool",
        "iter",
        "next",
        "format",
    }
)

#: functions that read a state dict from disk or the network (MODE002)
_CHECKPOINT_LOADERS = frozenset({"load", "load_file", "load_state_dict_from_url", "load_url"})

_NOQA_RE = re.compile(
    r"#\s*noqa(?::\s*(?P<codes>[A-Za-z]+[0-9]+(?:\s*,\s*[A-Za-z]+[0-9]+)*))?", re.IGNORECASE
)


class _BudgetExceeded(Exception):
    """Raised when one entry point interprets too many statements."""


# --------------------------------------------------------------------------- small helpers


def _src(node: ast.AST, limit: int = 60) -> str:
    """Source text of ``node`` (re-generated), shortened for messages."""
    try:
        text = ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every parsed node
        text = type(node).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _last_name(node: ast.AST) -> str:
    """The last identifier of an expression (``self.opt_g`` -> ``opt_g``), or ''."""
    while isinstance(node, (ast.Subscript, ast.Call)):
        node = node.value if isinstance(node, ast.Subscript) else node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _is_optimizer(node: ast.AST) -> bool:
    """Whether ``node.step()`` is an optimizer (or grad-scaler) step, not a scheduler's."""
    name = _last_name(node).lower()
    if "sched" in name or name.startswith("lr"):
        return False
    return "opt" in name or "scaler" in name


def _is_step_call(node: ast.Call) -> bool:
    """``x.backward()`` / ``accelerator.backward(loss)`` / ``optimizer.step()``."""
    func = node.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr.endswith("backward"):
        return True
    return func.attr == "step" and _is_optimizer(func.value)


def _is_autograd_call(node: ast.Call) -> bool:
    """``torch.autograd.grad(...)`` / ``torch.autograd.backward(...)``: gradients are taken."""
    dotted = _dotted(node.func) or ""
    return dotted.endswith(("autograd.grad", "autograd.backward"))


def _is_main_guard(test: ast.expr) -> bool:
    """``if __name__ == "__main__":``"""
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _decorator_names(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = []
    for dec in node.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        names.append(_last_name(target))
    return names


def _flatten(value: Value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from _flatten(item)


def _unique(values: list[Value]) -> Value:
    if not values:
        return None
    first = values[0]
    return first if all(v == first for v in values[1:]) else None


def _function_locals(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[set[str], set[str], set[str]]:
    """(local names, ``global`` names, ``nonlocal`` names) of a function body."""
    names: set[str] = set()
    glob: set[str] = set()
    nonloc: set[str] = set()
    args = node.args
    for a in args.posonlyargs + args.args + args.kwonlyargs:
        names.add(a.arg)
    if args.vararg:
        names.add(args.vararg.arg)
    if args.kwarg:
        names.add(args.kwarg.arg)

    def visit(n: ast.AST) -> None:
        for child in ast.iter_child_nodes(n):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(child.name)
                continue
            if isinstance(child, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                continue
            if isinstance(child, ast.Global):
                glob.update(child.names)
            elif isinstance(child, ast.Nonlocal):
                nonloc.update(child.names)
            elif isinstance(child, ast.Name) and isinstance(child.ctx, (ast.Store, ast.Del)):
                names.add(child.id)
            elif isinstance(child, ast.ExceptHandler) and child.name:
                names.add(child.name)
            elif isinstance(child, (ast.Import, ast.ImportFrom)):
                for alias in child.names:
                    names.add((alias.asname or alias.name).split(".")[0])
            visit(child)

    for stmt in node.body:
        visit(ast.Module(body=[stmt], type_ignores=[]))
    return names - glob - nonloc, glob, nonloc


def _direct_defs(body: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """Function and class definitions in ``body``, also inside if/for/with/try, not in defs."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield stmt
            continue
        for field_name in ("body", "orelse", "finalbody"):
            yield from _direct_defs(getattr(stmt, field_name, []) or [])
        for handler in getattr(stmt, "handlers", []) or []:
            yield from _direct_defs(handler.body)
        for case in getattr(stmt, "cases", []) or []:
            yield from _direct_defs(case.body)


# --------------------------------------------------------------------------- abstract state


class _State:
    """Mode facts per object, forward calls since the last step, and loaded models."""

    __slots__ = ("loaded", "modes", "pending")

    def __init__(
        self,
        modes: dict[str, frozenset[Fact]] | None = None,
        pending: dict[str, tuple[int, str, frozenset[Fact]]] | None = None,
        loaded: dict[str, tuple[int, str]] | None = None,
    ) -> None:
        self.modes = modes if modes is not None else {}
        self.pending = pending if pending is not None else {}
        self.loaded = loaded if loaded is not None else {}

    def copy(self) -> _State:
        return _State(dict(self.modes), dict(self.pending), dict(self.loaded))

    def replace(self, other: _State) -> None:
        self.modes, self.pending, self.loaded = dict(other.modes), dict(other.pending), dict(other.loaded)

    def mode(self, oid: str) -> frozenset[Fact]:
        """Facts for ``oid``; a sub-module without its own facts follows its parent."""
        key = oid
        while True:
            facts = self.modes.get(key)
            if facts is not None:
                return facts
            cut = key.rfind(".")
            if cut <= 0:
                return _DEFAULT
            key = key[:cut]

    def set_mode(self, oid: str, facts: frozenset[Fact]) -> None:
        """``train()``/``eval()`` are recursive: sub-modules lose their own facts."""
        prefix = oid + "."
        for key in [k for k in self.modes if k.startswith(prefix)]:
            del self.modes[key]
        self.modes[oid] = facts

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _State)
            and self.modes == other.modes
            and self.pending == other.pending
            and self.loaded == other.loaded
        )

    __hash__ = None  # type: ignore[assignment]


def _join(states: Iterable[_State | None]) -> _State | None:
    """Union of the states that can be reached (None = unreachable)."""
    live = [s for s in states if s is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0].copy()
    keys: set[str] = set()
    for s in live:
        keys.update(s.modes)
    modes = {k: frozenset().union(*(s.mode(k) for s in live)) for k in keys}
    pending: dict[str, tuple[int, str, frozenset[Fact]]] = {}
    loaded: dict[str, tuple[int, str]] = {}
    for s in live:
        for k, (line, text, facts) in s.pending.items():
            old = pending.get(k)
            if old is None:
                pending[k] = (line, text, facts)
            else:
                pending[k] = min((line, text), old[:2]) + (old[2] | facts,)
        for k, v in s.loaded.items():
            if k not in loaded or v < loaded[k]:
                loaded[k] = v
    return _State(modes, pending, loaded)


# --------------------------------------------------------------------------- interpreter


FuncRef = tuple  # (FunctionDef node, defining frame, class name or None)


class _Frame:
    """One activation: the module body, or an inlined function call."""

    def __init__(self, node: ast.AST, parent: _Frame | None, name: str, cls: str | None = None) -> None:
        self.node = node
        self.parent = parent
        self.name = name
        self.cls = cls
        self.self_val: str | None = None
        self.env: dict[str, Value] = {}
        self.consts: dict[str, bool] = {}
        self.funcs: dict[str, FuncRef] = {}
        self.locals: set[str] = set()
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.returns: list[tuple[_State, Value]] = []
        self.loops: list[_Loop] = []
        self.finally_stack: list[Callable[[_State], _State | None]] = []


class _Loop:
    """A running loop: where it is, and which eval sites ran inside it (with the call chain)."""

    def __init__(self, line: int, depth: int, finally_depth: int) -> None:
        self.line = line
        self.depth = depth
        self.finally_depth = finally_depth
        self.seen: dict[tuple[int, int], tuple[tuple[int, str], ...]] = {}
        self.breaks: list[_State] = []
        self.continues: list[_State] = []


class _CallRecord:
    __slots__ = ("label", "line", "node")

    def __init__(self, node: ast.AST, line: int, label: str) -> None:
        self.node, self.line, self.label = node, line, label


class _ClassInfo:
    def __init__(self, node: ast.ClassDef) -> None:
        self.node = node
        self.bases = [_last_name(b) for b in node.bases]
        self.methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {
            s.name: s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
        }


class _Analyzer:
    """Interprets one parsed module and collects MODE001/MODE002 findings."""

    def __init__(self, tree: ast.Module, path: str) -> None:
        self.tree = tree
        self.path = path
        self.module = _Frame(tree, None, "<module>")
        self.classes: dict[str, _ClassInfo] = {}
        self.method_owners: dict[str, list[str]] = {}
        self.alias: dict[str, str] = {}
        self.obj_class: dict[str, str] = {}
        self.frozen: set[str] = set()
        self.trained: set[str] = set()
        self.defs_cache: dict[ast.AST, list] = {}
        self.param_owner: dict[str, str] = {}
        self.sites: dict[tuple[int, int], tuple[str, str]] = {}
        self.entered: set[ast.AST] = set()
        self.stack: list[_CallRecord] = []
        self.loops: list[_Loop] = []
        self.no_grad = 0
        self.steps = 0
        self.total_steps = 0
        self.locals_cache: dict[ast.AST, tuple[set[str], set[str], set[str]]] = {}
        self.candidates: dict[tuple, tuple[Finding, str]] = {}
        self.has_training = any(
            isinstance(n, ast.Call) and (_is_step_call(n) or _is_autograd_call(n)) for n in ast.walk(tree)
        )

    # ------------------------------------------------------------------ driver

    def analyse(self) -> list[Finding]:
        for d in _direct_defs(self.tree.body):
            if isinstance(d, ast.ClassDef):
                info = _ClassInfo(d)
                self.classes.setdefault(d.name, info)
                for meth in info.methods:
                    self.method_owners.setdefault(meth, []).append(d.name)
            else:
                self.module.funcs.setdefault(d.name, (d, self.module, None))
        self._entry(lambda: self._block(self.tree.body, self.module, _State()))
        # Functions and methods the module body never reached are analysed on their own.
        for _name, (fnode, _, _) in sorted(self.module.funcs.items(), key=lambda kv: kv[1][0].lineno):
            if fnode not in self.entered:
                self._entry(lambda f=fnode: self._call_entry(f, None, None))
        for cname, info in self.classes.items():
            for fnode in info.methods.values():
                if fnode not in self.entered:
                    self_val = f"self@{cname}"
                    self.obj_class[self_val] = cname
                    self._entry(lambda f=fnode, c=cname, s=self_val: self._call_entry(f, c, s))
        out = []
        for finding, oid in self.candidates.values():
            if finding.code == "MODE001" and (oid in self.frozen or oid not in self.trained):
                continue
            out.append(finding)
        return sorted(out)

    def _entry(self, fn: Callable[[], object]) -> None:
        if self.total_steps > _FILE_BUDGET:
            return
        self.stack, self.loops, self.no_grad, self.steps = [], [], 0, 0
        try:
            fn()
        except (_BudgetExceeded, RecursionError):
            pass
        self.total_steps += self.steps

    def _call_entry(self, fnode: _FuncNode, cls: str | None, self_val: str | None) -> None:
        call = ast.Call(func=ast.Name(id=fnode.name, ctx=ast.Load()), args=[], keywords=[])
        ast.copy_location(call, fnode)
        ref = (fnode, self.module, cls)
        self._inline(ref, call, self.module, _State(), [], {}, self_val, label=fnode.name)

    # ------------------------------------------------------------------ names

    def _locals_of(self, fnode: _FuncNode) -> tuple[set[str], set[str], set[str]]:
        cached = self.locals_cache.get(fnode)
        if cached is None:
            cached = self.locals_cache[fnode] = _function_locals(fnode)
        return cached

    def _lookup(self, fr: _Frame, name: str) -> Value:
        if name in fr.globals:
            return self.module.env.get(name, f"global:{name}")
        f: _Frame | None = fr
        while f is not None:
            if name in f.env:
                return f.env[name]
            if f is not self.module and name in f.locals and name not in f.nonlocals:
                return f"unbound:{name}"
            f = f.parent
        return f"global:{name}"

    def _lookup_const(self, fr: _Frame, name: str) -> bool | None:
        f: _Frame | None = fr
        while f is not None:
            if name in f.env or name in f.consts:
                return f.consts.get(name)
            f = f.parent
        return None

    def _lookup_func(self, fr: _Frame, name: str) -> FuncRef | None:
        f: _Frame | None = fr
        while f is not None:
            if name in f.env:
                return None
            if name in f.funcs:
                return f.funcs[name]
            f = f.parent
        return None

    def _bind(self, fr: _Frame, name: str, value: Value, const: bool | None = None) -> None:
        target = fr
        if name in fr.globals:
            target = self.module
        elif name in fr.nonlocals:
            f = fr.parent
            while f is not None and f is not self.module and name not in f.env and name not in f.locals:
                f = f.parent
            target = f or self.module
        target.env[name] = value
        if const is None:
            target.consts.pop(name, None)
        else:
            target.consts[name] = const

    def _const_bool(self, node: ast.AST | None, fr: _Frame) -> bool | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name):
            return self._lookup_const(fr, node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self._const_bool(node.operand, fr)
            return None if inner is None else not inner
        return None

    def _resolve_static(self, node: ast.AST, fr: _Frame) -> str | None:
        """Object id of a Name/Attribute chain without evaluating calls."""
        if isinstance(node, ast.Name):
            value = self._lookup(fr, node.id)
            return value if isinstance(value, str) else None
        if isinstance(node, ast.Attribute):
            base = self._resolve_static(node.value, fr)
            if base is None:
                return None
            if node.attr in _WRAPPER_ATTRS:
                return base
            path = f"{base}.{node.attr}"
            return self.alias.get(path, path)
        return None

    @staticmethod
    def _fresh(node: ast.AST, tag: str = "new") -> str:
        return f"{tag}@{getattr(node, 'lineno', 0)}:{getattr(node, 'col_offset', 0)}"

    def _new_object(self, node: ast.AST, st: _State) -> str:
        """A new object at an allocation site: forget what the previous one there was doing."""
        oid = self._fresh(node)
        if oid in st.modes or oid in st.pending or oid in st.loaded:
            st.set_mode(oid, _DEFAULT)
            st.pending.pop(oid, None)
            st.loaded.pop(oid, None)
        return oid

    # ------------------------------------------------------------------ statements

    def _block(self, stmts: list[ast.stmt], fr: _Frame, st: _State | None) -> _State | None:
        for stmt in stmts:
            if st is None:
                return None
            st = self._stmt(stmt, fr, st)
        return st

    def _stmt(self, s: ast.stmt, fr: _Frame, st: _State) -> _State | None:
        self.steps += 1
        if self.steps > _STEP_BUDGET:
            raise _BudgetExceeded
        if isinstance(s, ast.Expr):
            self._expr(s.value, fr, st)
            return st
        if isinstance(s, ast.Assign):
            value = self._expr(s.value, fr, st)
            const = self._const_bool(s.value, fr)
            for target in s.targets:
                self._assign(target, value, fr, st, const)
            return st
        if isinstance(s, ast.AnnAssign):
            if s.value is not None:
                value = self._expr(s.value, fr, st)
                self._assign(s.target, value, fr, st, self._const_bool(s.value, fr))
            return st
        if isinstance(s, ast.AugAssign):
            self._expr(s.value, fr, st)
            return st
        if isinstance(s, ast.If):
            const = self._const_bool(s.test, fr) if isinstance(s.test, ast.Constant) else None
            if _is_main_guard(s.test) or const is True:
                return self._block(s.body, fr, st)
            if const is False:
                return self._block(s.orelse, fr, st)
            self._expr(s.test, fr, st)
            then, other = st.copy(), st
            self._refine(s.test, fr, then, other)
            return _join([self._block(s.body, fr, then), self._block(s.orelse, fr, other)])
        if isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            return self._loop(s, fr, st)
        if isinstance(s, (ast.With, ast.AsyncWith)):
            return self._with(s, fr, st)
        if isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
            return self._try(s, fr, st)  # type: ignore[arg-type]
        if isinstance(s, ast.Return):
            value = self._expr(s.value, fr, st) if s.value is not None else None
            self._return(fr, st, value)
            return None
        if isinstance(s, (ast.Break, ast.Continue)):
            self._jump(fr, st, isinstance(s, ast.Break))
            return None
        if isinstance(s, ast.Raise):
            if s.exc is not None:
                self._expr(s.exc, fr, st)
            return None
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            fr.env.pop(s.name, None)
            fr.funcs[s.name] = (s, fr, None)
            return st
        if isinstance(s, ast.Global):
            fr.globals.update(s.names)
            return st
        if isinstance(s, ast.Nonlocal):
            fr.nonlocals.update(s.names)
            return st
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            for alias in s.names:
                if alias.name != "*":
                    name = (alias.asname or alias.name).split(".")[0]
                    self._bind(fr, name, f"import:{name}")
            return st
        if isinstance(s, ast.Match):
            self._expr(s.subject, fr, st)
            outs = [self._block(case.body, fr, st.copy()) for case in s.cases]
            return _join(outs + [st])
        if isinstance(s, ast.Assert):
            self._expr(s.test, fr, st)
            return st
        return st

    def _refine(self, test: ast.expr, fr: _Frame, then: _State, other: _State) -> None:
        """``if model.training:`` / ``if not model.training:`` tell which mode each branch has."""
        negate = False
        while isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            test, negate = test.operand, not negate
        if not (isinstance(test, ast.Attribute) and test.attr == "training"):
            return
        oid = self._resolve_static(test.value, fr)
        if oid is None:
            return
        training, evaluating = (other, then) if negate else (then, other)
        facts = training.mode(oid)
        kept = frozenset(f for f in facts if f[0] != "eval")
        training.set_mode(oid, kept or frozenset({_TRAIN}))
        evals = frozenset(f for f in facts if f[0] == "eval")
        evaluating.set_mode(oid, evals or frozenset({_UNKNOWN}))

    def _assign(
        self, target: ast.expr, value: Value, fr: _Frame, st: _State, const: bool | None = None
    ) -> None:
        if isinstance(target, ast.Name):
            self._bind(fr, target.id, value if value is not None else self._new_object(target, st), const)
        elif isinstance(target, ast.Attribute):
            base = self._expr(target.value, fr, st)
            if not isinstance(base, str):
                return
            if target.attr == "requires_grad" and const is False and base in self.param_owner:
                self.frozen.add(self.param_owner[base])
            path = f"{base}.{target.attr}"
            self.alias[path] = value if isinstance(value, str) else self._new_object(target, st)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elts = target.elts
            if (
                isinstance(value, tuple)
                and len(value) == len(elts)
                and not any(isinstance(e, ast.Starred) for e in elts)
            ):
                for elt, val in zip(elts, value):
                    self._assign(elt, val, fr, st)
            else:
                for elt in elts:
                    self._assign(elt, None, fr, st)
        elif isinstance(target, ast.Starred):
            self._assign(target.value, None, fr, st)
        elif isinstance(target, ast.Subscript):
            self._expr(target.value, fr, st)
            self._expr(target.slice, fr, st)

    def _return(self, fr: _Frame, st: _State, value: Value) -> None:
        state = self._through_finally(fr, st.copy(), 0)
        if state is not None:
            fr.returns.append((state, value))

    def _jump(self, fr: _Frame, st: _State, is_break: bool) -> None:
        if not fr.loops:
            return
        loop = fr.loops[-1]
        state = self._through_finally(fr, st.copy(), loop.finally_depth)
        if state is not None:
            (loop.breaks if is_break else loop.continues).append(state)

    def _through_finally(self, fr: _Frame, st: _State | None, floor: int) -> _State | None:
        """Run the pending ``finally:`` blocks (innermost first) down to ``floor``."""
        saved = fr.finally_stack
        try:
            for index in range(len(saved) - 1, floor - 1, -1):
                if st is None:
                    break
                fr.finally_stack = saved[:index]
                st = saved[index](st)
        finally:
            fr.finally_stack = saved
        return st

    def _loop(self, s: ast.For | ast.AsyncFor | ast.While, fr: _Frame, st: _State) -> _State | None:
        is_while = isinstance(s, ast.While)
        infinite = is_while and isinstance(s.test, ast.Constant) and bool(s.test.value)
        owner = None
        if not is_while:
            self._expr(s.iter, fr, st)
            it = s.iter
            if (
                isinstance(it, ast.Call)
                and isinstance(it.func, ast.Attribute)
                and it.func.attr in ("parameters", "named_parameters")
            ):
                owner = self._resolve_static(it.func.value, fr)
        loop = _Loop(s.lineno, len(self.stack), len(fr.finally_stack))
        entry = st
        tails: list[_State] = []
        breaks: list[_State] = []
        start = entry.copy()
        for _ in range(_MAX_LOOP_PASSES):
            loop.breaks, loop.continues = [], []
            cur = start.copy()
            if is_while:
                self._expr(s.test, fr, cur)
            else:
                self._assign(s.target, None, fr, cur)
                if owner is not None:
                    tgt = s.target
                    if isinstance(tgt, ast.Tuple) and len(tgt.elts) == 2:
                        tgt = tgt.elts[1]
                    if isinstance(tgt, ast.Name):
                        param = self._lookup(fr, tgt.id)
                        if isinstance(param, str):
                            self.param_owner[param] = owner
            fr.loops.append(loop)
            self.loops.append(loop)
            try:
                end = self._block(s.body, fr, cur)
            finally:
                fr.loops.pop()
                self.loops.pop()
            tail = _join([end, *loop.continues])
            breaks.extend(loop.breaks)
            if tail is not None:
                tails.append(tail)
            new_start = _join([start, tail])
            if new_start == start:
                break
            start = new_start  # type: ignore[assignment]
        normal = None if infinite else _join([entry, *tails])
        if s.orelse and normal is not None:
            normal = self._block(s.orelse, fr, normal)
        return _join([normal, *breaks])

    def _with(self, s: ast.With | ast.AsyncWith, fr: _Frame, st: _State) -> _State | None:
        restore: dict[str, frozenset[Fact]] = {}
        no_grad = 0
        for item in s.items:
            ce = item.context_expr
            value: Value = None
            last = _last_name(ce.func).lower() if isinstance(ce, ast.Call) else ""
            if isinstance(ce, ast.Call) and (
                last in ("no_grad", "inference_mode")
                or (last == "set_grad_enabled" and ce.args and self._const_bool(ce.args[0], fr) is False)
            ):
                no_grad += 1
            elif isinstance(ce, ast.Call) and "eval" in last:
                # Heuristic: a context manager named like eval_mode(model) restores the mode.
                for arg in [*ce.args, *(k.value for k in ce.keywords)]:
                    for oid in _flatten(self._expr(arg, fr, st)):
                        restore.setdefault(oid, st.mode(oid))
                        st.set_mode(oid, frozenset({_UNKNOWN}))
            else:
                value = self._expr(ce, fr, st)
            if item.optional_vars is not None:
                self._assign(item.optional_vars, None if no_grad else value, fr, st)

        def leave(state: _State) -> _State:
            for oid, facts in restore.items():
                state.set_mode(oid, facts)
            return state

        if restore:
            fr.finally_stack.append(leave)
        self.no_grad += no_grad
        try:
            end = self._block(s.body, fr, st)
        finally:
            self.no_grad -= no_grad
            if restore:
                fr.finally_stack.pop()
        return leave(end) if end is not None else None

    def _try(self, s: ast.Try, fr: _Frame, st: _State) -> _State | None:
        final = s.finalbody
        if final:
            fr.finally_stack.append(lambda state: self._block(final, fr, state))
        try:
            body_end = self._block(s.body, fr, st.copy())
            handler_start = _join([st, body_end])
            outs: list[_State | None] = []
            for handler in s.handlers:
                hs = handler_start.copy()  # type: ignore[union-attr]
                if handler.type is not None:
                    self._expr(handler.type, fr, hs)
                if handler.name:
                    self._bind(fr, handler.name, self._fresh(handler))
                outs.append(self._block(handler.body, fr, hs))
            if s.orelse and body_end is not None:
                body_end = self._block(s.orelse, fr, body_end)
        finally:
            if final:
                fr.finally_stack.pop()
        after = _join([body_end, *outs])
        if final and after is not None:
            after = self._block(final, fr, after)
        return after

    # ------------------------------------------------------------------ expressions

    def _expr(self, node: ast.AST | None, fr: _Frame, st: _State) -> Value:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return self._lookup(fr, node.id)
        if isinstance(node, ast.Attribute):
            base = self._expr(node.value, fr, st)
            if not isinstance(base, str):
                return None
            if node.attr in _WRAPPER_ATTRS:
                return base
            path = f"{base}.{node.attr}"
            return self.alias.get(path, path)
        if isinstance(node, ast.Call):
            return self._call(node, fr, st)
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(self._expr(e, fr, st) for e in node.elts)
        if isinstance(node, ast.NamedExpr):
            value = self._expr(node.value, fr, st)
            self._assign(node.target, value, fr, st, self._const_bool(node.value, fr))
            return value
        if isinstance(node, ast.Subscript):
            base = self._expr(node.value, fr, st)
            self._expr(node.slice, fr, st)
            idx = node.slice
            if isinstance(base, tuple) and isinstance(idx, ast.Constant) and isinstance(idx.value, int):
                if -len(base) <= idx.value < len(base):
                    return base[idx.value]
            return None
        if isinstance(node, ast.Await):
            return self._expr(node.value, fr, st)
        if isinstance(node, ast.Lambda):
            return None
        if isinstance(node, ast.IfExp):
            self._expr(node.test, fr, st)
            a = self._expr(node.body, fr, st)
            b = self._expr(node.orelse, fr, st)
            return a if a == b else None
        if isinstance(node, ast.Starred):
            self._expr(node.value, fr, st)
            return None
        self._visit_children(node, fr, st)
        return None

    def _visit_children(self, node: ast.AST, fr: _Frame, st: _State) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child, fr, st)
            elif isinstance(child, ast.comprehension):
                self._expr(child.iter, fr, st)
                for cond in child.ifs:
                    self._expr(cond, fr, st)
            elif isinstance(child, ast.AST):
                self._visit_children(child, fr, st)

    def _args(self, node: ast.Call, fr: _Frame, st: _State) -> tuple[_Args, _Kws]:
        pos: _Args = []
        kws: _Kws = {}
        starred = False
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self._expr(arg.value, fr, st)
                starred = True
            elif not starred:
                pos.append((self._expr(arg, fr, st), arg))
            else:
                self._expr(arg, fr, st)
        for kw in node.keywords:
            value = self._expr(kw.value, fr, st)
            if kw.arg is not None:
                kws[kw.arg] = (value, kw.value)
        self._training_evidence(node, fr, pos, kws)
        return pos, kws

    def _training_evidence(self, node: ast.Call, fr: _Frame, pos: _Args, kws: _Kws) -> None:
        """Objects whose parameters are handed to a call (an optimizer) are trained models."""
        callee = _last_name(node.func)
        if callee in _PURE_BUILTINS:
            return
        if "optim" in callee.lower():
            for value, _ in [*pos, *kws.values()]:
                self.trained.update(_flatten(value))
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            for sub in ast.walk(arg):
                if (
                    isinstance(sub, ast.Call)
                    and isinstance(sub.func, ast.Attribute)
                    and sub.func.attr in ("parameters", "named_parameters")
                ):
                    oid = self._resolve_static(sub.func.value, fr)
                    if oid is not None:
                        self.trained.add(oid)

    @staticmethod
    def _touch(pos: _Args, kws: _Kws, st: _State) -> None:
        """Objects handed to code we cannot see may have been put in eval mode (MODE002)."""
        for value, _ in [*pos, *kws.values()]:
            for oid in _flatten(value):
                st.loaded.pop(oid, None)

    def _call(self, node: ast.Call, fr: _Frame, st: _State) -> Value:
        func = node.func
        if isinstance(func, ast.Attribute):
            return self._method_call(node, func, fr, st)
        if isinstance(func, ast.Name):
            name = func.id
            pos, kws = self._args(node, fr, st)
            ref = self._lookup_func(fr, name)
            if ref is not None:
                return self._inline(ref, node, fr, st, pos, kws, None, label=f"{name}()")
            if name in self.classes and self._lookup(fr, name) == f"global:{name}":
                return self._instantiate(name, node, fr, st, pos, kws)
            if name in _WRAPPER_CALLS:
                return pos[0][0] if pos else None
            if name in _PURE_BUILTINS or name == "super":
                return None
            callee = self._lookup(fr, name)
            if isinstance(callee, str):
                self._forward(callee, node, func, st, direct=True)
            self._touch(pos, kws, st)
            return None
        # Calls of calls, subscripts, lambdas: evaluate the parts.
        self._expr(func, fr, st)
        pos, kws = self._args(node, fr, st)
        self._touch(pos, kws, st)
        return None

    def _method_call(self, node: ast.Call, func: ast.Attribute, fr: _Frame, st: _State) -> Value:
        meth = func.attr
        dotted = _dotted(func) or ""
        # super().method(...)
        if (
            isinstance(func.value, ast.Call)
            and isinstance(func.value.func, ast.Name)
            and func.value.func.id == "super"
        ):
            pos, kws = self._args(node, fr, st)
            ref = self._mro_lookup(fr.cls, meth, skip_first=True) if fr.cls else None
            if ref is not None:
                return self._inline(ref, node, fr, st, pos, kws, fr.self_val, label=f"super().{meth}()")
            if meth in ("train", "eval") and fr.self_val is not None:
                self._set_mode(fr.self_val, self._mode_fact(meth, node, fr), node, fr, st)
            return None
        if dotted in ("torch.compile",) or meth in _WRAPPER_CALLS:
            pos, kws = self._args(node, fr, st)
            return pos[0][0] if pos else None
        if meth == "prepare" and "accelerator" in dotted.lower():
            # Accelerate's prepare(model, optimizer, ...) returns its arguments, wrapped.
            pos, kws = self._args(node, fr, st)
            values = tuple(v for v, _ in pos)
            return values[0] if len(values) == 1 else values
        if dotted == "torch.load":
            self._args(node, fr, st)
            oid = self._new_object(node, st)
            st.loaded[oid] = (node.lineno, "torch.load()")
            return oid
        recv = self._expr(func.value, fr, st)
        pos, kws = self._args(node, fr, st)
        rid = recv if isinstance(recv, str) else None
        if rid is not None:
            cls = self.obj_class.get(rid)
            ref = self._mro_lookup(cls, meth) if cls else None
            if (
                ref is None
                and cls is None
                and isinstance(func.value, ast.Name)
                and not rid.startswith("import:")
                and meth not in _COMMON_METHODS
                and not meth.startswith("__")
            ):
                owners = self.method_owners.get(meth, [])
                if len(owners) == 1:
                    ref = self._mro_lookup(owners[0], meth)
            if ref is not None:
                return self._inline(ref, node, fr, st, pos, kws, rid, label=f"{_src(func)}()")
        if meth in ("eval", "train") and rid is not None and len(node.args) <= 1:
            fact = self._mode_fact(meth, node, fr)
            if fact == _TRAIN:
                self.trained.add(rid)
            self._set_mode(rid, fact, node, fr, st)
            return rid
        if _is_step_call(node):
            self._step(st)
            return None
        if rid is None:
            self._touch(pos, kws, st)
            return None
        if meth == "load_state_dict":
            if node.args and self._from_checkpoint(node.args[0], fr, st):
                st.loaded[rid] = (node.lineno, "load_state_dict()")
            return None
        if meth == "requires_grad_":
            arg = (
                node.args[0]
                if node.args
                else next((k.value for k in node.keywords if k.arg == "requires_grad"), None)
            )
            if arg is not None and self._const_bool(arg, fr) is False:
                self.frozen.add(rid)
            return rid
        if meth in _SELF_RETURNING:
            return rid
        if meth == "zero_grad":
            self.trained.add(rid)
            return None
        if meth == "forward":
            self._forward(rid, node, func.value, st, direct=True)
            return None
        # An attribute that holds a known model, called directly: self.model(x).
        path = f"{rid}.{meth}"
        target = self.alias.get(path, path)
        if path in self.alias or target in st.modes or target in st.loaded:
            self._forward(target, node, func, st, direct=True)
        self._touch(pos, kws, st)
        return None

    def _from_checkpoint(self, arg: ast.expr, fr: _Frame, st: _State) -> bool:
        """Whether a state dict comes from a file (torch.load & co.), not from another model."""
        for sub in ast.walk(arg):
            if isinstance(sub, ast.Call) and _last_name(sub.func) in _CHECKPOINT_LOADERS:
                return True
            if isinstance(sub, ast.Name) and self._lookup(fr, sub.id) in st.loaded:
                return True
        return False

    def _mode_fact(self, meth: str, node: ast.Call, fr: _Frame) -> Fact:
        if meth == "eval":
            return ("eval", node.lineno, node.col_offset)
        arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "mode"), None)
        if arg is None:
            return _TRAIN
        const = self._const_bool(arg, fr)
        if const is True:
            return _TRAIN
        if const is False:
            return ("eval", node.lineno, node.col_offset)
        return _UNKNOWN  # train(was_training): a restore we cannot evaluate

    def _set_mode(self, oid: str, fact: Fact, node: ast.Call, fr: _Frame, st: _State) -> None:
        if fact[0] == "eval":
            site = (node.lineno, node.col_offset)
            self.sites.setdefault(site, (_src(node), fr.name))
            for loop in self.loops:
                loop.seen.setdefault(site, tuple((c.line, c.label) for c in self.stack[loop.depth :]))
            # An eval does not undo an earlier eval: both still need a train() afterwards.
            earlier = frozenset(f for f in st.mode(oid) if f[0] == "eval")
            st.set_mode(oid, earlier | {fact})
            return
        st.set_mode(oid, frozenset({fact}))

    def _forward(self, oid: str, node: ast.Call, callee: ast.AST, st: _State, direct: bool) -> None:
        if not self.no_grad:
            evals = frozenset(f for f in st.mode(oid) if f[0] == "eval")
            if evals:  # only a forward pass that may run in eval mode matters
                old = st.pending.get(oid)
                if old is None:
                    st.pending[oid] = (node.lineno, _src(callee), evals)
                else:
                    st.pending[oid] = old[:2] + (old[2] | evals,)
        if direct and not self.has_training and oid in st.loaded and st.mode(oid) == _DEFAULT:
            line, how = st.loaded[oid]
            name = _src(callee)
            self._add(
                ("MODE002", oid),
                oid,
                node.lineno,
                node.col_offset,
                "MODE002",
                f"`{name}` runs inference after {how} (line {line}) without `{name}.eval()`; "
                "Dropout and BatchNorm stay in training mode",
            )

    def _step(self, st: _State) -> None:
        for oid, (fline, ftext, at_forward) in sorted(st.pending.items()):
            # Eval at the forward pass and still not undone at the step (a forward pass in a
            # validation loop without no_grad(), followed by train(), is not a finding).
            for fact in sorted(at_forward & st.mode(oid)):
                site = (fact[1], fact[2])
                loop = next((lp for lp in reversed(self.loops) if site in lp.seen), None)
                if loop is None:
                    continue
                text, func = self.sites[site]
                chain = loop.seen[site]
                where = f" in {func}()" if func != "<module>" else ""
                via = ""
                if chain:
                    via = ", reached via " + " -> ".join(f"{label} at line {ln}" for ln, label in chain)
                self._add(
                    ("MODE001", site),
                    oid,
                    site[0],
                    site[1],
                    "MODE001",
                    f"`{ftext}` is left in eval mode inside the training loop at line {loop.line}: "
                    f"`{text}` at {self.path}:{site[0]}{where}{via} is not undone by "
                    f"`{ftext}.train()` before the training step at line {fline}",
                )
        st.pending.clear()

    def _add(self, key: tuple, oid: str, line: int, col: int, code: str, message: str) -> None:
        if key not in self.candidates:
            self.candidates[key] = (Finding(self.path, line, col + 1, code, message), oid)

    # ------------------------------------------------------------------ calls into this file

    def _mro_lookup(self, cls: str | None, meth: str, skip_first: bool = False) -> FuncRef | None:
        order: list[str] = []
        todo = [cls] if cls else []
        while todo:
            name = todo.pop(0)
            if name in order or name not in self.classes:
                continue
            order.append(name)
            todo.extend(self.classes[name].bases)
        for name in order[1:] if skip_first else order:
            fnode = self.classes[name].methods.get(meth)
            if fnode is not None:
                return (fnode, self.module, name)
        return None

    def _instantiate(
        self, cname: str, node: ast.Call, fr: _Frame, st: _State, pos: _Args, kws: _Kws
    ) -> Value:
        oid = self._new_object(node, st)
        self.obj_class[oid] = cname
        init = self._mro_lookup(cname, "__init__")
        if init is not None:
            self._inline(init, node, fr, st, pos, kws, oid, label=f"{cname}()")
        return oid

    def _inline(
        self,
        ref: FuncRef,
        call: ast.Call,
        caller: _Frame,
        st: _State,
        pos: _Args,
        kws: _Kws,
        self_val: str | None,
        label: str,
    ) -> Value:
        fnode, def_frame, cls = ref
        if len(self.stack) >= _MAX_CALL_DEPTH or any(c.node is fnode for c in self.stack):
            return None  # recursion or too deep: opaque
        self.entered.add(fnode)
        frame = _Frame(fnode, def_frame, fnode.name, cls)
        frame.locals, frame.globals, frame.nonlocals = (set(x) for x in self._locals_of(fnode))
        defs = self.defs_cache.get(fnode)
        if defs is None:
            defs = self.defs_cache[fnode] = list(_direct_defs(fnode.body))
        for d in defs:
            if not isinstance(d, ast.ClassDef):
                frame.funcs[d.name] = (d, frame, None)
        decorators = _decorator_names(fnode)
        self._bind_params(
            frame, fnode, caller, def_frame, st, pos, kws, None if "staticmethod" in decorators else self_val
        )
        no_grad = int(any(d in ("no_grad", "inference_mode") for d in decorators))
        self.stack.append(_CallRecord(fnode, call.lineno, label))
        self.no_grad += no_grad
        try:
            end = self._block(fnode.body, frame, st)
        finally:
            self.no_grad -= no_grad
            self.stack.pop()
        result = _join([end, *(s for s, _ in frame.returns)])
        if result is not None:
            st.replace(result)
        values = [v for _, v in frame.returns] + ([None] if end is not None else [])
        return _unique(values)

    def _bind_params(
        self,
        frame: _Frame,
        fnode: ast.FunctionDef | ast.AsyncFunctionDef,
        caller: _Frame,
        def_frame: _Frame,
        st: _State,
        pos: _Args,
        kws: _Kws,
        self_val: str | None,
    ) -> None:
        a = fnode.args
        params = a.posonlyargs + a.args
        values = list(pos)
        if self_val is not None:
            frame.self_val = self_val
            values.insert(0, (self_val, None))
        bound: dict[str, tuple[Value, ast.expr | None]] = {}
        for param, val in zip(params, values):
            bound[param.arg] = val
        names = {p.arg for p in params} | {p.arg for p in a.kwonlyargs}
        for key, val in kws.items():
            if key in names:
                bound[key] = val
        defaults: dict[str, ast.expr] = {}
        for param, default in zip(params[len(params) - len(a.defaults) :], a.defaults):
            defaults[param.arg] = default
        for param, default in zip(a.kwonlyargs, a.kw_defaults):
            if default is not None:
                defaults[param.arg] = default
        for param in [*params, *a.kwonlyargs]:
            name = param.arg
            if name in bound:
                value, node = bound[name]
                const = self._const_bool(node, caller) if node is not None else None
            elif name in defaults:
                value = self._expr(defaults[name], def_frame, st.copy())
                const = self._const_bool(defaults[name], def_frame)
            else:
                value, const = None, None
            frame.env[name] = value if value is not None else f"param@{fnode.lineno}:{name}"
            if const is not None:
                frame.consts[name] = const
        for extra in (a.vararg, a.kwarg):
            if extra is not None:
                frame.env[extra.arg] = f"param@{fnode.lineno}:{extra.arg}"


# --------------------------------------------------------------------------- public API


def _noqa_lines(source: str) -> dict[int, frozenset[str] | None]:
    """Line -> codes suppressed there (None: every code) from ``# noqa`` comments."""
    out: dict[int, frozenset[str] | None] = {}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - parsed sources tokenize
        return out
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        match = _NOQA_RE.search(tok.string)
        if match is None:
            continue
        codes = match.group("codes")
        line = tok.start[0]
        if codes is None:
            out[line] = None
        elif out.get(line, frozenset()) is not None:
            found = {c.strip().upper() for c in codes.split(",")}
            out[line] = frozenset(out.get(line) or frozenset()) | found
    return out


def _selected(code: str, select: Sequence[str] | None) -> bool:
    return code == "MODE000" or not select or any(code.startswith(s) for s in select)


def lint_source(source: str, path: str = "<string>", select: Sequence[str] | None = None) -> list[Finding]:
    """Check one module's source text; ``select`` keeps only codes with those prefixes.

    A syntax error gives a single ``MODE000`` finding.  ``# noqa`` / ``# noqa: MODE001``
    on the reported line suppresses a finding.
    """
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None) or 1
        col = getattr(exc, "offset", None) or 1
        msg = getattr(exc, "msg", None) or str(exc)
        return [Finding(path, line, col, "MODE000", f"syntax error: {msg}")]
    findings = _Analyzer(tree, path).analyse()
    noqa = _noqa_lines(source)
    out = []
    for f in findings:
        if not _selected(f.code, select):
            continue
        if f.line in noqa and (noqa[f.line] is None or f.code in noqa[f.line]):  # type: ignore[operator]
            continue
        out.append(f)
    return out


def lint_file(path: str | os.PathLike[str], select: Sequence[str] | None = None) -> list[Finding]:
    """Check one file (read with the encoding its coding cookie declares)."""
    name = str(path)
    try:
        with tokenize.open(path) as fh:
            source = fh.read()
    except (SyntaxError, UnicodeDecodeError) as exc:
        return [Finding(name, 1, 1, "MODE000", f"could not decode file: {exc}")]
    return lint_source(source, name, select)


def iter_python_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files given, and ``*.py`` under directories given, in a deterministic order.

    Directories are walked recursively in sorted order, skipping hidden directories and
    ``__pycache__``.  Raises ``FileNotFoundError`` for a path that does not exist.
    """
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(str(raw))
        if path.is_dir():
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
                found.extend(Path(root) / f for f in sorted(files) if f.endswith(".py"))
            candidates = sorted(found, key=lambda f: f.relative_to(path).parts)
        else:
            candidates = [path]
        for file in candidates:
            if file not in seen:
                seen.add(file)
                yield file


def lint_paths(paths: Iterable[str | os.PathLike[str]], select: Sequence[str] | None = None) -> list[Finding]:
    """Check files and directory trees; findings grouped per file in walk order."""
    out: list[Finding] = []
    for file in iter_python_files(paths):
        out.extend(lint_file(file, select))
    return out
