"""Name resolution for the interpreter: locals, globals, closures and constants."""

from __future__ import annotations

import ast

from parity.lint._frames import BoundCallable, Frame, FuncRef
from parity.lint._state import ModeState, Value
from parity.lint._syntax import FunctionNode, ScopeNames, function_scope_names

#: attributes that lead back to the wrapped model (DataParallel / torch.compile)
WRAPPER_ATTRS = frozenset({"module", "_orig_mod"})


class Unknown:
    """The value of an expression that is not a known constant."""

    def __repr__(self) -> str:
        return "UNKNOWN_CONSTANT"


UNKNOWN_CONSTANT = Unknown()
_CONSTANT_TYPES = (bool, int, str, type(None))


def root_frame(frame: Frame) -> Frame:
    """The module frame that ``frame`` was (transitively) defined in."""
    while frame.parent is not None:
        frame = frame.parent
    return frame


class ScopeMixin:
    """Looks names up through frames, binds them, and folds constant expressions."""

    alias: dict[str, str]
    scope_cache: dict[ast.AST, ScopeNames]
    touches: int
    bindings: int

    def _scope_names(self, fnode: FunctionNode) -> ScopeNames:
        cached = self.scope_cache.get(fnode)
        if cached is None:
            cached = self.scope_cache[fnode] = function_scope_names(fnode)
        return cached

    def _lookup(self, frame: Frame, name: str) -> Value:
        """The object id bound to ``name`` as seen from ``frame`` (``global:name`` if unbound)."""
        module = root_frame(frame)
        if name in frame.globals:
            return module.env.get(name, f"global:{module.tag}{name}")
        scope: Frame | None = frame
        while scope is not None:
            if name in scope.env:
                return scope.env[name]
            if scope is not module and name in scope.locals and name not in scope.nonlocals:
                return f"unbound:{name}"
            scope = scope.parent
        return f"global:{module.tag}{name}"

    def _lookup_const(self, frame: Frame, name: str) -> object:
        scope: Frame | None = frame
        while scope is not None:
            if name in scope.env or name in scope.consts:
                return scope.consts.get(name, UNKNOWN_CONSTANT)
            scope = scope.parent
        return UNKNOWN_CONSTANT

    def _lookup_func(self, frame: Frame, name: str) -> FuncRef | None:
        scope: Frame | None = frame
        while scope is not None:
            if name in scope.env:
                return None
            if name in scope.funcs:
                return scope.funcs[name]
            scope = scope.parent
        return None

    def _lookup_callable(self, frame: Frame, name: str) -> BoundCallable | None:
        """The function value a local name or parameter holds (``loss_fn = my_loss``), if known."""
        scope: Frame | None = frame
        while scope is not None:
            if name in scope.callables:
                return scope.callables[name]
            if name in scope.env or name in scope.funcs:
                return None
            scope = scope.parent
        return None

    def _bind(self, frame: Frame, name: str, value: Value, const: object = UNKNOWN_CONSTANT) -> None:
        """Bind ``name`` in the frame that owns it (``global`` / ``nonlocal`` honoured)."""
        target = frame
        module = root_frame(frame)
        if name in frame.globals:
            target = module
        elif name in frame.nonlocals:
            scope = frame.parent
            while scope is not None and scope is not module and name not in scope.env:
                if name in scope.locals:
                    break
                scope = scope.parent
            target = scope or module
        target.env[name] = value
        if target is not frame:
            self.touches += 1  # a global / nonlocal store outlives the call
        if target.parent is None:
            self.bindings += 1  # a module-level name can change what a later call reaches
        target.param_consts.pop(name, None)
        target.callables.pop(name, None)
        if const is UNKNOWN_CONSTANT:
            target.consts.pop(name, None)
        else:
            target.consts[name] = const

    def _constant(self, node: ast.AST | None, frame: Frame) -> object:
        """The constant value of ``node`` (bool, int, str, None), or ``UNKNOWN_CONSTANT``."""
        if isinstance(node, ast.Constant) and isinstance(node.value, _CONSTANT_TYPES):
            return node.value
        if isinstance(node, ast.Name):
            return self._lookup_const(frame, node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self._constant(node.operand, frame)
            return UNKNOWN_CONSTANT if inner is UNKNOWN_CONSTANT else not inner
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            return self._compare(node, frame)
        return UNKNOWN_CONSTANT

    def _compare(self, node: ast.Compare, frame: Frame) -> object:
        left = self._constant(node.left, frame)
        right = self._constant(node.comparators[0], frame)
        if left is UNKNOWN_CONSTANT or right is UNKNOWN_CONSTANT:
            return UNKNOWN_CONSTANT
        operator = node.ops[0]
        if isinstance(operator, (ast.Eq, ast.Is)):
            return left == right
        if isinstance(operator, (ast.NotEq, ast.IsNot)):
            return left != right
        return UNKNOWN_CONSTANT

    def _branch_constant(self, test: ast.expr, frame: Frame) -> object:
        """The value of an ``if`` test when it only reads constants and parameters that the call
        site fixed and the body has not rebound (``if mode == "train":``), else unknown.

        Other names are not used: their constants are recorded flow-insensitively."""
        if isinstance(test, ast.Constant):
            return self._constant(test, frame)
        if isinstance(test, ast.Name):
            return frame.param_consts.get(test.id, UNKNOWN_CONSTANT)
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            inner = self._branch_constant(test.operand, frame)
            return UNKNOWN_CONSTANT if inner is UNKNOWN_CONSTANT else not inner
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            if isinstance(test.ops[0], (ast.In, ast.NotIn)):
                return self._membership(test, frame)
            if isinstance(test.ops[0], (ast.Eq, ast.NotEq, ast.Is, ast.IsNot)):
                left = self._branch_constant(test.left, frame)
                right = self._branch_constant(test.comparators[0], frame)
                if left is not UNKNOWN_CONSTANT and right is not UNKNOWN_CONSTANT:
                    same = left == right
                    return same if isinstance(test.ops[0], (ast.Eq, ast.Is)) else not same
        if isinstance(test, ast.BoolOp):
            values = [self._branch_constant(value, frame) for value in test.values]
            if all(value is not UNKNOWN_CONSTANT for value in values):
                return all(values) if isinstance(test.op, ast.And) else any(values)
        return UNKNOWN_CONSTANT

    def _membership(self, test: ast.Compare, frame: Frame) -> object:
        """``mode in ("eval", "test")`` with ``mode`` fixed by the call site and a literal container."""
        container = test.comparators[0]
        left = self._branch_constant(test.left, frame)
        if left is UNKNOWN_CONSTANT or not isinstance(container, (ast.Tuple, ast.List, ast.Set)):
            return UNKNOWN_CONSTANT
        items = [self._constant(elt, frame) for elt in container.elts]
        if any(item is UNKNOWN_CONSTANT for item in items):
            return UNKNOWN_CONSTANT
        return (left in items) == isinstance(test.ops[0], ast.In)

    def _const_bool(self, node: ast.AST | None, frame: Frame) -> bool | None:
        """``True`` / ``False`` when ``node`` is a known boolean constant, else None."""
        value = self._constant(node, frame)
        return value if isinstance(value, bool) else None

    def _resolve_static(self, node: ast.AST, frame: Frame) -> str | None:
        """Object id of a Name/Attribute chain without evaluating calls."""
        if isinstance(node, ast.Name):
            value = self._lookup(frame, node.id)
            return value if isinstance(value, str) else None
        if isinstance(node, ast.Attribute):
            base = self._resolve_static(node.value, frame)
            if base is None:
                return None
            if node.attr in WRAPPER_ATTRS:
                return base
            path = f"{base}.{node.attr}"
            return self.alias.get(path, path)
        return None

    def _fresh(self, node: ast.AST, tag: str = "new") -> str:
        """The id of the object made at ``node`` (file-tagged outside the linted module)."""
        return f"{tag}@{self.current.tag}{getattr(node, 'lineno', 0)}:{getattr(node, 'col_offset', 0)}"

    def _new_object(self, node: ast.AST, state: ModeState) -> str:
        """A new object at an allocation site: forget what the previous one there was doing."""
        oid = self._fresh(node)
        state.forget(oid)
        return oid
