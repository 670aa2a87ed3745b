"""Pure helpers on :mod:`ast` nodes: names, step and guard recognition, locals of a function."""

from __future__ import annotations

import ast
from collections.abc import Iterator

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef

#: the three kinds of frame-level names: (locals, ``global`` names, ``nonlocal`` names)
ScopeNames = tuple[set[str], set[str], set[str]]


def source_text(node: ast.AST, limit: int = 60) -> str:
    """Source text of ``node`` (re-generated), shortened for messages."""
    try:
        text = ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every parsed node
        text = type(node).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def last_name(node: ast.AST) -> str:
    """The last identifier of an expression (``self.opt_g`` -> ``opt_g``), or ''."""
    while isinstance(node, (ast.Subscript, ast.Call)):
        node = node.value if isinstance(node, ast.Subscript) else node.func
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def is_optimizer(node: ast.AST) -> bool:
    """Whether ``node.step()`` is an optimizer (or grad-scaler) step, not a scheduler's."""
    name = last_name(node).lower()
    if "sched" in name or name.startswith("lr"):
        return False
    return "opt" in name or "scaler" in name


def is_step_call(node: ast.Call) -> bool:
    """``x.backward()`` / ``accelerator.backward(loss)`` / ``optimizer.step()``."""
    func = node.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr.endswith("backward"):
        return True
    return func.attr == "step" and is_optimizer(func.value)


def is_autograd_call(node: ast.Call) -> bool:
    """``torch.autograd.grad(...)`` / ``torch.autograd.backward(...)``: gradients are taken."""
    dotted = dotted_name(node.func) or ""
    return dotted.endswith(("autograd.grad", "autograd.backward"))


def is_super_call(node: ast.AST) -> bool:
    """``super()`` (the receiver of ``super().method()``)."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def is_main_guard(test: ast.expr) -> bool:
    """``if __name__ == "__main__":``"""
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def decorator_names(node: FunctionNode) -> list[str]:
    """Last identifier of each decorator (``@torch.no_grad()`` -> ``no_grad``)."""
    return [last_name(dec.func if isinstance(dec, ast.Call) else dec) for dec in node.decorator_list]


def keyword_value(node: ast.Call, name: str) -> ast.expr | None:
    """The expression passed as keyword ``name``, or None."""
    return next((kw.value for kw in node.keywords if kw.arg == name), None)


def _parameter_names(args: ast.arguments) -> set[str]:
    names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    names.update(extra.arg for extra in (args.vararg, args.kwarg) if extra is not None)
    return names


_NESTED_SCOPES = frozenset({ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp})


def function_scope_names(node: FunctionNode) -> ScopeNames:
    """(local names, ``global`` names, ``nonlocal`` names) of a function body."""
    names = _parameter_names(node.args)
    glob: set[str] = set()
    nonloc: set[str] = set()
    todo: list[ast.AST] = list(node.body)
    while todo:  # iterative, so a deeply nested body cannot overflow the Python stack
        child = todo.pop()
        kind = type(child)
        if kind is ast.Name:  # the most common node; its only child is its context
            if type(child.ctx) is not ast.Load:  # type: ignore[attr-defined]
                names.add(child.id)  # type: ignore[attr-defined]
            continue
        if kind in _LEAVES:
            continue
        if kind in _DEFINITIONS:
            names.add(child.name)  # type: ignore[attr-defined]
            continue
        if kind in _NESTED_SCOPES:
            continue
        if kind is ast.Global:
            glob.update(child.names)  # type: ignore[attr-defined]
        elif kind is ast.Nonlocal:
            nonloc.update(child.names)  # type: ignore[attr-defined]
        elif kind is ast.ExceptHandler and child.name:  # type: ignore[attr-defined]
            names.add(child.name)  # type: ignore[attr-defined]
        elif kind is ast.Import or kind is ast.ImportFrom:
            names.update((alias.asname or alias.name).split(".")[0] for alias in child.names)  # type: ignore[attr-defined]
        todo.extend(ast.iter_child_nodes(child))
    return names - glob - nonloc, glob, nonloc


_DEFINITIONS = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef})
#: nodes with no child that can bind a name (constants and expression contexts)
_LEAVES = frozenset({ast.Constant, ast.Load, ast.Store, ast.Del, ast.Pass, ast.Break, ast.Continue})


def direct_defs(body: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """Function and class definitions in ``body``, also inside if/for/with/try, not in defs."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield stmt
            continue
        for field_name in ("body", "orelse", "finalbody"):
            yield from direct_defs(getattr(stmt, field_name, []) or [])
        for handler in getattr(stmt, "handlers", []) or []:
            yield from direct_defs(handler.body)
        for case in getattr(stmt, "cases", []) or []:
            yield from direct_defs(case.body)
