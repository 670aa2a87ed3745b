"""Expressions and calls: value of each expression kind, and the method calls the rules read."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator

from parity.lint._frames import Argument, ClassInfo, Frame, FuncRef
from parity.lint._scope import WRAPPER_ATTRS
from parity.lint._state import LoadSite, ModeState, Value
from parity.lint._syntax import (
    dotted_name,
    is_step_call,
    is_super_call,
    keyword_value,
    last_name,
    source_text,
)

Positional = list[Argument]
Keywords = dict[str, Argument]
ExpressionHandler = Callable[["ExpressionMixin", ast.expr, Frame, ModeState], Value]
MethodHandler = Callable[["ExpressionMixin", ast.Call, tuple[str, ...], Frame, ModeState], Value]

#: methods that return their receiver (``model = model.to(device)`` keeps the object)
SELF_RETURNING = frozenset(
    {"to", "cuda", "cpu", "float", "half", "double", "bfloat16", "type", "apply", "share_memory"}
    | {"to_empty", "requires_grad_", "train", "eval"}
)
#: callables that wrap a model without changing whose mode ``eval()`` sets
WRAPPER_CALLS = frozenset(
    {"DataParallel", "DistributedDataParallel", "DDP", "FullyShardedDataParallel", "FSDP"}
)
#: method names never resolved by the "only one class defines it" heuristic
COMMON_METHODS = frozenset(
    {"forward", "train", "eval", "parameters", "named_parameters", "state_dict", "load_state_dict"}
    | {"to", "cuda", "cpu", "zero_grad", "modules", "children", "apply", "step", "backward", "update"}
    | {"reset", "item", "append", "add", "log", "get", "save", "values", "items"}
)
#: builtins whose arguments are not "used" by an unknown callee (for MODE002)
PURE_BUILTINS = frozenset(
    {"print", "len", "isinstance", "issubclass", "type", "id", "str", "repr", "hasattr", "getattr"}
    | {"range", "enumerate", "zip", "sum", "min", "max", "abs", "round", "sorted", "list", "tuple"}
    | {"dict", "set", "int", "float", "bool", "iter", "next", "format"}
)
#: functions that read a state dict from disk or the network (MODE002)
CHECKPOINT_LOADERS = frozenset({"load", "load_file", "load_state_dict_from_url", "load_url"})


class Members(tuple):
    """The value of a loop variable over a collection: one of these values per iteration."""


def objects(value: Value) -> Iterator[str]:
    """Every object id inside a value (tuples and collections flattened)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, tuple):
        for item in value:
            yield from objects(item)


def _sub_expressions(node: ast.AST) -> tuple[ast.expr, ...]:
    """The expressions below ``node`` that are evaluated, in order: direct expression children,
    a comprehension's iterable and conditions (not its target), and those of other nodes."""
    out: list[ast.expr] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.expr):
            out.append(child)
        elif isinstance(child, ast.comprehension):
            out.append(child.iter)
            out.extend(child.ifs)
        else:
            out.extend(_sub_expressions(child))
    return tuple(out)


def _with_effects(children: tuple[ast.expr, ...]) -> tuple[ast.expr, ...]:
    """The sub-expressions whose evaluation can change anything: those with a call or a ``:=``
    in them.  The others (names, attributes, constants, operators over them) only read, and
    :meth:`ExpressionMixin._visit_children` drops their values, so it skips them."""
    return tuple(child for child in children if any(isinstance(sub, _EFFECTS) for sub in ast.walk(child)))


_EFFECTS = (ast.Call, ast.NamedExpr)


def _parameter_facts(node: ast.Call) -> tuple[bool, tuple[ast.expr, ...]]:
    """What a call says about training, read once per call site: whether the callee is an
    optimizer (its name has ``optim`` in it), and the receivers of the ``.parameters()`` /
    ``.named_parameters()`` calls in its arguments (none for a pure builtin such as ``len``)."""
    callee = last_name(node.func)
    if callee in PURE_BUILTINS:
        return False, ()
    receivers = tuple(
        sub.func.value
        for arg in [*node.args, *(keyword.value for keyword in node.keywords)]
        for sub in ast.walk(arg)
        if isinstance(sub, ast.Call)
        and isinstance(sub.func, ast.Attribute)
        and sub.func.attr in ("parameters", "named_parameters")
    )
    return "optim" in callee.lower(), receivers


class ExpressionMixin:
    """Evaluates expressions to object ids and interprets calls (inlining known definitions)."""

    alias: dict[str, str]
    classes: dict[str, ClassInfo]
    method_owners: dict[str, list[str]]
    parameter_calls: dict[ast.AST, tuple[bool, tuple[ast.expr, ...]]]
    children_cache: dict[ast.AST, tuple[ast.expr, ...]]
    touches: int
    obj_class: dict[str, str]
    trained: set[str]
    frozen: set[str]

    @staticmethod
    def _objects(value: Value) -> Iterator[str]:
        return objects(value)

    def _expr(self, node: ast.AST | None, frame: Frame, state: ModeState) -> Value:
        if node is None:
            return None
        handler = EXPRESSION_HANDLERS.get(type(node))
        if handler is not None:
            return handler(self, node, frame, state)  # type: ignore[arg-type]
        self._visit_children(node, frame, state)
        return None

    def _name_expr(self, node: ast.Name, frame: Frame, state: ModeState) -> Value:
        return self._lookup(frame, node.id)

    def _attribute_expr(self, node: ast.Attribute, frame: Frame, state: ModeState) -> Value:
        base = self._expr(node.value, frame, state)
        if isinstance(base, Members) and node.attr in ("module", "_orig_mod"):
            return base
        if not isinstance(base, str):
            return None
        if node.attr in WRAPPER_ATTRS:
            return base
        path = f"{base}.{node.attr}"
        return self.alias.get(path, path)

    def _element(self, node: ast.expr, frame: Frame, state: ModeState) -> Value:
        """An element of a literal; an unknown call in it (``[Net(), Net()]``) is a new object."""
        value = self._expr(node, frame, state)
        if value is None and isinstance(node, ast.Call):
            return self._new_object(node, state)
        return value

    def _sequence_expr(self, node: ast.Tuple | ast.List | ast.Set, frame: Frame, state: ModeState) -> Value:
        return tuple(self._element(elt, frame, state) for elt in node.elts)

    def _dict_expr(self, node: ast.Dict, frame: Frame, state: ModeState) -> Value:
        for key in node.keys:
            self._expr(key, frame, state)
        return Members(self._element(value, frame, state) for value in node.values)

    def _named_expr(self, node: ast.NamedExpr, frame: Frame, state: ModeState) -> Value:
        value = self._expr(node.value, frame, state)
        self._assign(node.target, value, frame, state, self._constant(node.value, frame))
        return value

    def _subscript_expr(self, node: ast.Subscript, frame: Frame, state: ModeState) -> Value:
        base = self._expr(node.value, frame, state)
        self._expr(node.slice, frame, state)
        index = node.slice
        if isinstance(base, Members):
            return Members(base)  # models[name]: one of the collection's values
        if isinstance(base, tuple) and isinstance(index, ast.Constant) and isinstance(index.value, int):
            if -len(base) <= index.value < len(base):
                return base[index.value]
        return None

    def _await_expr(self, node: ast.Await, frame: Frame, state: ModeState) -> Value:
        return self._expr(node.value, frame, state)

    def _lambda_expr(self, node: ast.Lambda, frame: Frame, state: ModeState) -> Value:
        return None

    def _if_expr(self, node: ast.IfExp, frame: Frame, state: ModeState) -> Value:
        self._expr(node.test, frame, state)
        body = self._expr(node.body, frame, state)
        orelse = self._expr(node.orelse, frame, state)
        return body if body == orelse else None

    def _starred_expr(self, node: ast.Starred, frame: Frame, state: ModeState) -> Value:
        self._expr(node.value, frame, state)
        return None

    def _visit_children(self, node: ast.AST, frame: Frame, state: ModeState) -> None:
        """Evaluate the sub-expressions of an expression with no handler of its own, in order."""
        children = self.children_cache.get(node)
        if children is None:
            children = self.children_cache[node] = _with_effects(_sub_expressions(node))
        for child in children:
            self._expr(child, frame, state)

    def _iteration_value(self, iterable: ast.expr, frame: Frame, state: ModeState) -> Value:
        """The loop variable over a known collection (``for m in [g, d]``, ``models.values()``)."""
        if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute):
            if iterable.func.attr in ("values", "items") and not iterable.args:
                base = self._resolve_collection(iterable.func.value, frame)
                if iterable.func.attr == "items" and base is not None:
                    return Members((None, value) for value in base)
                return base
            return None
        return self._resolve_collection(iterable, frame)

    def _resolve_collection(self, node: ast.expr, frame: Frame) -> Members | None:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            values = [self._lookup(frame, elt.id) if isinstance(elt, ast.Name) else None for elt in node.elts]
            return Members(values)
        if isinstance(node, (ast.Name, ast.Attribute)):
            value = self._lookup(frame, node.id) if isinstance(node, ast.Name) else None
            if isinstance(value, tuple) and value:
                return Members(value)
        return None

    # ------------------------------------------------------------------ arguments

    def _args(self, node: ast.Call, frame: Frame, state: ModeState) -> tuple[Positional, Keywords]:
        """Evaluate the arguments; positional ones after a ``*args`` are not mapped."""
        positional: Positional = []
        keywords: Keywords = {}
        starred = False
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self._expr(arg.value, frame, state)
                starred = True
            elif not starred:
                positional.append(Argument(self._expr(arg, frame, state), arg))
            else:
                self._expr(arg, frame, state)
        for keyword in node.keywords:
            value = self._expr(keyword.value, frame, state)
            if keyword.arg is not None:
                keywords[keyword.arg] = Argument(value, keyword.value)
        self._training_evidence(node, frame, positional, keywords)
        return positional, keywords

    def _training_evidence(
        self, node: ast.Call, frame: Frame, positional: Positional, keywords: Keywords
    ) -> None:
        """Objects whose parameters are handed to a call (an optimizer) are trained models."""
        facts = self.parameter_calls.get(node)
        if facts is None:
            facts = self.parameter_calls[node] = _parameter_facts(node)
        optimizer, receivers = facts
        if optimizer:
            for argument in [*positional, *keywords.values()]:
                self.touches += 1
                self.trained.update(objects(argument.value))
        for receiver in receivers:
            self.touches += 1
            self.trained.update(self._static_objects(receiver, frame))

    def _static_objects(self, node: ast.expr, frame: Frame) -> tuple[str, ...]:
        """Objects a Name/Attribute chain or ``models[key]`` refers to, without evaluating calls."""
        if isinstance(node, ast.Subscript):
            base = self._lookup(frame, node.value.id) if isinstance(node.value, ast.Name) else None
            return tuple(objects(base)) if isinstance(base, Members) else ()
        oid = self._resolve_static(node, frame)
        return () if oid is None else (oid,)

    def _touch(self, positional: Positional, keywords: Keywords, state: ModeState) -> None:
        """Objects handed to code we cannot see may have been put in eval mode (MODE002)."""
        for argument in [*positional, *keywords.values()]:
            for oid in objects(argument.value):
                state.loaded.pop(oid, None)

    # ------------------------------------------------------------------ calls

    def _call_expr(self, node: ast.Call, frame: Frame, state: ModeState) -> Value:
        func = node.func
        if isinstance(func, ast.Attribute):
            return self._method_call(node, func, frame, state)
        if isinstance(func, ast.Name):
            return self._function_call(node, func.id, frame, state)
        dispatched = self._getattr_method(node, frame)
        if dispatched is not None:  # getattr(model, mode)() with mode fixed by the call site
            return self._method_call(dispatched, dispatched.func, frame, state)  # type: ignore[arg-type]
        # Calls of calls, subscripts, lambdas: evaluate the parts; models[name](x) is a forward.
        callee = self._expr(func, frame, state)
        positional, keywords = self._args(node, frame, state)
        if isinstance(callee, (str, Members)):
            for oid in objects(callee):
                self._forward(oid, node, func, state, direct=True)
        self._touch(positional, keywords, state)
        return None

    def _getattr_method(self, node: ast.Call, frame: Frame) -> ast.Call | None:
        """``getattr(m, name)(...)`` with ``name`` a known string: the call ``m.<name>(...)``."""
        func = node.func
        if not (isinstance(func, ast.Call) and isinstance(func.func, ast.Name) and func.func.id == "getattr"):
            return None
        if len(func.args) != 2 or func.keywords:
            return None
        name = self._constant(func.args[1], frame)
        if not isinstance(name, str) or not name.isidentifier():
            return None
        attribute = ast.copy_location(ast.Attribute(value=func.args[0], attr=name, ctx=ast.Load()), func)
        return ast.copy_location(ast.Call(func=attribute, args=node.args, keywords=node.keywords), node)

    def _function_call(self, node: ast.Call, name: str, frame: Frame, state: ModeState) -> Value:
        """``f(...)``: inline a known function or class, or record a forward pass of a model."""
        positional, keywords = self._args(node, frame, state)
        bound = self._lookup_callable(frame, name)
        if bound is not None:  # a parameter or local name that holds a known function
            return self._call_bound(bound, node, frame, state, positional, keywords, label=f"{name}()")
        ref = self._lookup_func(frame, name)
        if ref is not None:
            return self._inline(ref, node, frame, state, positional, keywords, None, label=f"{name}()")
        if name in self.classes and str(self._lookup(frame, name)).startswith("global:"):
            return self._instantiate(name, node, frame, state, positional, keywords)
        if name in WRAPPER_CALLS:
            return positional[0].value if positional else None
        if name in PURE_BUILTINS or name == "super":
            return None
        callee = self._lookup(frame, name)
        for oid in objects(callee):
            self._forward(oid, node, node.func, state, direct=True)
        self._unknown_call(node, positional, keywords, state)
        return None

    def _unknown_call(
        self, node: ast.Call, positional: Positional, keywords: Keywords, state: ModeState
    ) -> None:
        """Code we cannot see: it may run its model arguments forward (``loss_fn(model, x)``) and
        may have put them in eval mode (MODE002)."""
        for argument in [*positional, *keywords.values()]:
            if argument.expr is None:
                continue
            for oid in objects(argument.value):
                if oid in state.modes or oid in self.trained:
                    self._forward(oid, node, argument.expr, state, direct=False)
        self._touch(positional, keywords, state)

    def _method_call(self, node: ast.Call, func: ast.Attribute, frame: Frame, state: ModeState) -> Value:
        """``recv.meth(...)``: inline a known method, or apply the rule the method name selects."""
        if is_super_call(func.value):
            return self._super_call(node, func.attr, frame, state)
        special = self._special_call(node, func, frame, state)
        if special is not _NOT_SPECIAL:
            return special
        meth = func.attr
        receiver = self._expr(func.value, frame, state)
        positional, keywords = self._args(node, frame, state)
        if isinstance(receiver, str) and receiver.startswith("module:"):
            return self._module_call(node, receiver, meth, frame, state, positional, keywords)
        if isinstance(receiver, str):
            ref = self._method_ref(receiver, meth, func)
            if ref is not None:
                label = f"{source_text(func)}()"
                return self._inline(ref, node, frame, state, positional, keywords, receiver, label=label)
        targets = (receiver,) if isinstance(receiver, str) else tuple(objects(receiver))
        if not isinstance(receiver, (str, Members)):
            targets = ()
        handler = METHOD_HANDLERS.get(meth)
        if handler is not None and targets and not (meth in ("train", "eval") and len(node.args) > 1):
            return handler(self, node, targets, frame, state)
        if is_step_call(node):
            self._step(state, node)
            return None
        if not targets:
            self._unknown_call(node, positional, keywords, state)
            return None
        if meth in SELF_RETURNING:
            return receiver
        for oid in targets:  # an attribute that holds a known model, called directly: self.model(x)
            path = f"{oid}.{meth}"
            target = self.alias.get(path, path)
            if path in self.alias or target in state.modes or target in state.loaded:
                self._forward(target, node, func, state, direct=True)
        self._touch(positional, keywords, state)
        return None

    def _module_call(
        self,
        node: ast.Call,
        module: str,
        name: str,
        frame: Frame,
        state: ModeState,
        positional: Positional,
        keywords: Keywords,
    ) -> Value:
        """``models.build(...)`` on a module of the project: inline the function or the class."""
        member = self._module_member(module, name)
        if isinstance(member, FuncRef):
            return self._inline(member, node, frame, state, positional, keywords, None, label=f"{name}()")
        if isinstance(member, str):
            return self._instantiate(member, node, frame, state, positional, keywords)
        self._touch(positional, keywords, state)
        return None

    def _special_call(self, node: ast.Call, func: ast.Attribute, frame: Frame, state: ModeState) -> Value:
        """Calls recognised by their dotted name before the receiver is evaluated."""
        dotted = dotted_name(func) or ""
        meth = func.attr
        if dotted == "torch.compile" or meth in WRAPPER_CALLS:
            positional, _ = self._args(node, frame, state)
            return positional[0].value if positional else None
        if meth == "prepare" and "accelerator" in dotted.lower():
            # Accelerate's prepare(model, optimizer, ...) returns its arguments, wrapped.
            positional, _ = self._args(node, frame, state)
            values = tuple(argument.value for argument in positional)
            return values[0] if len(values) == 1 else values
        if dotted == "torch.load":
            self._args(node, frame, state)
            oid = self._new_object(node, state)
            state.loaded[oid] = LoadSite(node.lineno, "torch.load()")
            return oid
        return _NOT_SPECIAL

    def _super_call(self, node: ast.Call, meth: str, frame: Frame, state: ModeState) -> Value:
        positional, keywords = self._args(node, frame, state)
        ref = self._mro_lookup(frame.cls, meth, skip_first=True) if frame.cls else None
        if ref is not None:
            label = f"super().{meth}()"
            return self._inline(ref, node, frame, state, positional, keywords, frame.self_val, label=label)
        if meth in ("train", "eval") and frame.self_val is not None:
            self._set_mode(
                frame.self_val, self._mode_facts(meth, node, frame, frame.self_val), node, frame, state
            )
        return None

    def _method_ref(self, receiver: str, meth: str, func: ast.Attribute) -> FuncRef | None:
        """The definition ``receiver.meth`` resolves to: the receiver's class, or a unique owner."""
        cls = self.obj_class.get(receiver)
        if cls is not None:
            return self._mro_lookup(cls, meth)
        if (
            isinstance(func.value, ast.Name)
            and not receiver.startswith("import:")
            and meth not in COMMON_METHODS
            and not meth.startswith("__")
        ):
            owners = self.method_owners.get(meth, [])
            if len(owners) == 1:
                return self._mro_lookup(owners[0], meth)
        return None

    # ------------------------------------------------------------------ methods by name

    def _mode_method(self, node: ast.Call, targets: tuple[str, ...], frame: Frame, state: ModeState) -> Value:
        meth = node.func.attr  # type: ignore[attr-defined]
        for oid in targets:
            facts = self._mode_facts(meth, node, frame, oid)
            if facts == self.train_facts:
                self.touches += 1
                self.trained.add(oid)
            self._set_mode(oid, facts, node, frame, state)
        return targets[0] if len(targets) == 1 else Members(targets)

    def _load_state_dict_method(
        self, node: ast.Call, targets: tuple[str, ...], frame: Frame, state: ModeState
    ) -> Value:
        if node.args and self._from_checkpoint(node.args[0], frame, state):
            for oid in targets:
                state.loaded[oid] = LoadSite(node.lineno, "load_state_dict()")
        return None

    def _requires_grad_method(
        self, node: ast.Call, targets: tuple[str, ...], frame: Frame, state: ModeState
    ) -> Value:
        arg = node.args[0] if node.args else keyword_value(node, "requires_grad")
        if arg is not None and self._const_bool(arg, frame) is False:
            self.touches += 1
            self.frozen.update(targets)
        return targets[0] if len(targets) == 1 else None

    def _zero_grad_method(
        self, node: ast.Call, targets: tuple[str, ...], frame: Frame, state: ModeState
    ) -> Value:
        self.touches += 1
        self.trained.update(targets)
        return None

    def _forward_method(
        self, node: ast.Call, targets: tuple[str, ...], frame: Frame, state: ModeState
    ) -> Value:
        for oid in targets:
            self._forward(oid, node, node.func.value, state, direct=True)  # type: ignore[attr-defined]
        return None

    def _from_checkpoint(self, arg: ast.expr, frame: Frame, state: ModeState) -> bool:
        """Whether a state dict comes from a file (torch.load & co.), not from another model."""
        for sub in ast.walk(arg):
            if isinstance(sub, ast.Call) and last_name(sub.func) in CHECKPOINT_LOADERS:
                return True
            if isinstance(sub, ast.Name) and self._lookup(frame, sub.id) in state.loaded:
                return True
        return False


_NOT_SPECIAL = object()

EXPRESSION_HANDLERS: dict[type, ExpressionHandler] = {
    ast.Name: ExpressionMixin._name_expr,
    ast.Attribute: ExpressionMixin._attribute_expr,
    ast.Call: ExpressionMixin._call_expr,
    ast.Tuple: ExpressionMixin._sequence_expr,
    ast.List: ExpressionMixin._sequence_expr,
    ast.Dict: ExpressionMixin._dict_expr,
    ast.NamedExpr: ExpressionMixin._named_expr,
    ast.Subscript: ExpressionMixin._subscript_expr,
    ast.Await: ExpressionMixin._await_expr,
    ast.Lambda: ExpressionMixin._lambda_expr,
    ast.IfExp: ExpressionMixin._if_expr,
    ast.Starred: ExpressionMixin._starred_expr,
}

#: methods with a rule of their own, applied to every object the receiver may be
METHOD_HANDLERS: dict[str, MethodHandler] = {
    "eval": ExpressionMixin._mode_method,
    "train": ExpressionMixin._mode_method,
    "load_state_dict": ExpressionMixin._load_state_dict_method,
    "requires_grad_": ExpressionMixin._requires_grad_method,
    "zero_grad": ExpressionMixin._zero_grad_method,
    "forward": ExpressionMixin._forward_method,
}
