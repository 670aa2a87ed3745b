"""Calls into analysed code: method resolution, constructors, and inlining with bound parameters."""

from __future__ import annotations

import ast

from parity.lint._frames import Argument, BoundCallable, CallRecord, ClassInfo, Frame, FuncRef
from parity.lint._scope import UNKNOWN_CONSTANT, root_frame
from parity.lint._state import ModeState, Value, join_states
from parity.lint._syntax import FunctionNode, decorator_names, direct_defs, last_name

MAX_CALL_DEPTH = 16  # inlined calls deeper than this are treated as opaque (and reported: MODE009)
#: statements interpreted in other files' code per checked file; calls into other files after
#: that are treated as calls into unseen code, as single-file analysis does (and reported: MODE009)
CROSS_FILE_BUDGET = 20_000


class InliningMixin:
    """Follows calls to functions, methods and constructors defined in the analysed code."""

    classes: dict[str, ClassInfo]
    class_frames: dict[str, Frame]
    obj_class: dict[str, str]
    entered: set[ast.AST]
    stack: list[CallRecord]
    no_grad: int
    defs_cache: dict[ast.AST, list]
    incomplete: dict[str, int]
    foreign_steps: int
    touches: int
    bindings: int
    summaries: dict[tuple, tuple[ModeState, Value]]
    summaries_used: int
    module: Frame

    def _mro_lookup(self, cls: str | None, meth: str, skip_first: bool = False) -> FuncRef | None:
        """The definition of ``meth`` in ``cls`` or its bases (breadth first, known classes only)."""
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
                return FuncRef(fnode, self.class_frames[name], name)
        return None

    def _instantiate(
        self, cname: str, node: ast.Call, frame: Frame, state: ModeState, positional: list, keywords: dict
    ) -> Value:
        oid = self._new_object(node, state)
        self.touches += 1
        self.obj_class[oid] = cname
        init = self._mro_lookup(cname, "__init__")
        if init is not None:
            self._inline(init, node, frame, state, positional, keywords, oid, label=f"{cname}()")
        return oid

    def _inline(
        self,
        ref: FuncRef,
        call: ast.Call,
        caller: Frame,
        state: ModeState,
        positional: list[Argument],
        keywords: dict[str, Argument],
        self_val: str | None,
        label: str,
    ) -> Value:
        """Interpret ``ref``'s body in a new frame; the caller's state becomes the join of its exits."""
        fnode = ref.node
        if any(record.node is fnode for record in self.stack):
            self.touches += 1  # cut here, followed from elsewhere: not a summary
            return None  # recursion: opaque
        key = self._summary_key(ref, call, caller, state, positional, keywords, self_val)
        if key in self.summaries:
            self.summaries_used += 1
            after, result = self.summaries[key]
            state.replace(after)
            return result
        if self.foreign_steps >= CROSS_FILE_BUDGET and root_frame(ref.frame) is not self.module:
            self.incomplete["cross-file budget"] = self.incomplete.get("cross-file budget", 0) + 1
            self.touches += 1
            self._unknown_call(call, positional, keywords, state)
            return None
        if len(self.stack) >= MAX_CALL_DEPTH:
            self.incomplete["call depth"] = self.incomplete.get("call depth", 0) + 1
            self.touches += 1
            return None
        touches = self.touches
        result = self._run_call(ref, call, caller, state, positional, keywords, self_val, label)
        if key is not None and self.touches == touches:
            self.summaries[key] = (state.copy(), result)
        return result

    def _summary_key(
        self,
        ref: FuncRef,
        call: ast.Call,
        caller: Frame,
        state: ModeState,
        positional: list[Argument],
        keywords: dict[str, Argument],
        self_val: str | None,
    ) -> tuple | None:
        """Everything a call's outcome can depend on (None: never summarised): the function, its
        arguments' values, constants and saved flags, the mode state, the module-level bindings
        and the tables of the analysis (versioned by ``touches``)."""
        if getattr(call, "lint_entry", False):
            return None
        arguments = [*positional, *keywords.values()]
        if not all(value is None or isinstance(value, str) for value, _ in arguments):
            return None  # tuples and collections: not summarised
        constants = tuple(self._constant(expr, caller) if expr is not None else None for _, expr in arguments)
        flags = tuple(
            caller.flags.get(expr.id) if isinstance(expr, ast.Name) else None for _, expr in arguments
        )
        return (
            ref.node,
            ref.frame,
            ref.cls,
            self_val,
            tuple(value for value, _ in positional),
            tuple((name, argument.value) for name, argument in keywords.items()),
            constants,
            flags,
            self.bindings,
            self.touches,
            self.no_grad > 0,
            frozenset(state.modes.items()),
            frozenset(state.pending.items()),
            frozenset(state.loaded.items()),
        )

    def _run_call(
        self,
        ref: FuncRef,
        call: ast.Call,
        caller: Frame,
        state: ModeState,
        positional: list[Argument],
        keywords: dict[str, Argument],
        self_val: str | None,
        label: str,
    ) -> Value:
        fnode = ref.node
        self.entered.add(fnode)
        frame = self._new_frame(ref)
        decorators = decorator_names(fnode)
        bound_self = None if "staticmethod" in decorators else self_val
        self._bind_params(frame, fnode, caller, ref.frame, state, positional, keywords, bound_self)
        if getattr(call, "lint_entry", False):  # callers unseen: defaults do not fix a branch
            frame.param_consts = {
                name: value for name, value in frame.param_consts.items() if name in keywords
            }
        no_grad = int(any(name in ("no_grad", "inference_mode") for name in decorators))
        self.stack.append(CallRecord(fnode, call.lineno, label, self.current.file, call.col_offset))
        self.no_grad += no_grad
        caller_module, self.current = self.current, root_frame(ref.frame)
        self._resolve_imports(self.current)
        try:
            end = self._block(fnode.body, frame, state)
        finally:
            self.no_grad -= no_grad
            self.stack.pop()
            self.current = caller_module
        result = join_states([end, *(exit_state for exit_state, _ in frame.returns)])
        if result is not None:
            state.replace(result)
        values = [value for _, value in frame.returns] + ([None] if end is not None else [])
        if not values:
            return None
        first = values[0]
        return first if all(value == first for value in values[1:]) else None

    def _new_frame(self, ref: FuncRef) -> Frame:
        fnode = ref.node
        frame = Frame(fnode, ref.frame, fnode.name, ref.cls)
        frame.locals, frame.globals, frame.nonlocals = (set(names) for names in self._scope_names(fnode))
        defs = self.defs_cache.get(fnode)
        if defs is None:
            defs = self.defs_cache[fnode] = list(direct_defs(fnode.body))
        for definition in defs:
            if not isinstance(definition, ast.ClassDef):
                frame.funcs[definition.name] = FuncRef(definition, frame, None)
        return frame

    def _bind_params(
        self,
        frame: Frame,
        fnode: FunctionNode,
        caller: Frame,
        def_frame: Frame,
        state: ModeState,
        positional: list[Argument],
        keywords: dict[str, Argument],
        self_val: str | None,
    ) -> None:
        """Map arguments to parameters (defaults for the rest); constants pass through."""
        spec = fnode.args
        params = spec.posonlyargs + spec.args
        values = list(positional)
        if self_val is not None:
            frame.self_val = self_val
            values.insert(0, Argument(self_val, None))
        bound: dict[str, Argument] = {param.arg: value for param, value in zip(params, values)}
        names = {param.arg for param in params} | {param.arg for param in spec.kwonlyargs}
        bound.update((key, value) for key, value in keywords.items() if key in names)
        with_default = params[len(params) - len(spec.defaults) :]
        defaults: dict[str, ast.expr] = {
            param.arg: value for param, value in zip(with_default, spec.defaults)
        }
        for param, value in zip(spec.kwonlyargs, spec.kw_defaults):
            if value is not None:
                defaults[param.arg] = value
        for param in [*params, *spec.kwonlyargs]:
            name = param.arg
            if name in bound:
                value, expr = bound[name]
                const = self._constant(expr, caller) if expr is not None else UNKNOWN_CONSTANT
            elif name in defaults:
                value = self._expr(defaults[name], def_frame, state.copy())
                const = self._constant(defaults[name], def_frame)
            else:
                value, const = None, UNKNOWN_CONSTANT
            frame.env[name] = value if value is not None else f"param@{frame.tag}{fnode.lineno}:{name}"
            if const is not UNKNOWN_CONSTANT:
                frame.consts[name] = const
                frame.param_consts[name] = const
            self._pass_flag(frame, name, expr if name in bound else None, caller)
            passed = self._callable_of(expr, caller) if name in bound and expr is not None else None
            if passed is not None:  # fit(model, loss_function=my_loss): calls of it are followed
                frame.callables[name] = passed
        for extra in (spec.vararg, spec.kwarg):
            if extra is not None:
                frame.env[extra.arg] = f"param@{frame.tag}{fnode.lineno}:{extra.arg}"
        rest = values[len(params) :]
        if spec.vararg is not None and rest and all(value is not None for value, _ in rest):
            frame.env[spec.vararg.arg] = tuple(value for value, _ in rest)  # set_mode("eval", g, d)

    def _pass_flag(self, frame: Frame, name: str, expr: ast.expr | None, caller: Frame) -> None:
        """A saved ``model.training`` flag passed as an argument stays a saved flag."""
        if isinstance(expr, ast.Name) and expr.id in caller.flags:
            frame.flags[name] = caller.flags[expr.id]

    def _callable_of(self, node: ast.expr, frame: Frame) -> BoundCallable | None:
        """The function value of an expression, without evaluating it: a function or method of
        the analysed code (``my_loss``, ``self.compute_loss``, ``losses.my_loss``), or
        ``functools.partial`` of one with the arguments it binds."""
        if isinstance(node, ast.Name):
            held = self._lookup_callable(frame, node.id)
            if held is not None:
                return held
            ref = self._lookup_func(frame, node.id)
            return BoundCallable(ref) if ref is not None else None
        if isinstance(node, ast.Attribute):
            base = self._resolve_static(node.value, frame)
            if base is None:
                return None
            if base.startswith("module:"):
                member = self._module_member(base, node.attr)
                return BoundCallable(member) if isinstance(member, FuncRef) else None
            ref = self._method_ref(base, node.attr, node)
            return BoundCallable(ref, base) if ref is not None else None
        if isinstance(node, ast.Call) and last_name(node.func) == "partial" and node.args:
            inner = self._callable_of(node.args[0], frame)
            if inner is None or any(isinstance(arg, ast.Starred) for arg in node.args):
                return None
            extra = tuple(Argument(self._resolve_static(arg, frame), arg) for arg in node.args[1:])
            keywords = tuple(
                (keyword.arg, Argument(self._resolve_static(keyword.value, frame), keyword.value))
                for keyword in node.keywords
                if keyword.arg is not None
            )
            return inner._replace(positional=inner.positional + extra, keywords=inner.keywords + keywords)
        return None

    def _call_bound(
        self,
        bound: BoundCallable,
        node: ast.Call,
        frame: Frame,
        state: ModeState,
        positional: list[Argument],
        keywords: dict[str, Argument],
        label: str,
    ) -> Value:
        """Call a function value: the arguments it was bound with come first."""
        merged = {**dict(bound.keywords), **keywords}
        arguments = [*bound.positional, *positional]
        return self._inline(bound.ref, node, frame, state, arguments, merged, bound.self_val, label=label)
