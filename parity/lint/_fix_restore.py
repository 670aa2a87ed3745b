"""The second shape of ``--fix``: save and restore the mode flag inside the eval routine.

For a MODE001 finding whose eval call (``<model>.eval()`` / ``<model>.train(False)``) is in a
function of the checked file that does not hold the training loop, the fix is::

    def validate(self):
        was_training = self.model.training  # inserted before the statement with the eval
        self.model.eval()
        ...
        self.model.train(was_training)  # inserted before every later return, and at the end
        return total / count

Only statements are inserted (no ``try``/``finally``: wrapping the body would move it).  The
fix is not built where inserting could change what the code computes or make it fail:

- a ``return`` after the eval whose value could run the model (only names, constants,
  attributes, subscripts, arithmetic, f-strings, containers and a few pure builtins such as
  ``len`` and ``sum`` are accepted: ``return sum(model(x) ...)`` would then run in train mode);
- a model expression other than a chain of names (``self.model``, ``net``), or one whose root
  name, or a prefix of which, is assigned in the routine (the save would read another object);
- a generator, a statement that shares its line with other code, or a one-line ``if``.
"""

from __future__ import annotations

import ast
from typing import NamedTuple

from parity.lint._findings import Finding
from parity.lint._syntax import FunctionNode, dotted_name

#: builtins whose call in a ``return`` value cannot run the model (their arguments are checked too)
PURE_BUILTINS = frozenset({"len", "sum", "min", "max", "abs", "round", "float", "int", "str", "bool"})
_PURE_NODES = (
    ast.Name,
    ast.Constant,
    ast.Attribute,
    ast.Subscript,
    ast.Slice,
    ast.Tuple,
    ast.List,
    ast.Dict,
    ast.Set,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.JoinedStr,
    ast.FormattedValue,
    ast.expr_context,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


class Insertion(NamedTuple):
    """A line of code put before 1-based line ``before`` of the original source."""

    before: int
    text: str


def indent_of(lines: list[str], stmt: ast.stmt) -> str | None:
    """The indentation of ``stmt``'s first line (None when other code precedes it there)."""
    line = lines[stmt.lineno - 1]
    prefix = line[: stmt.col_offset]
    return prefix if not prefix.strip() else None


def _pure(node: ast.AST | None) -> bool:
    """Whether evaluating ``node`` cannot call the model (see the module docstring)."""
    if node is None:
        return True
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            if not (isinstance(sub.func, ast.Name) and sub.func.id in PURE_BUILTINS):
                return False
        elif not isinstance(sub, (*_PURE_NODES, ast.keyword)):
            return False
    return True


def _own_nodes(function: FunctionNode) -> list[ast.AST]:
    """The nodes of ``function``'s body, not those of nested functions, classes or lambdas."""
    out: list[ast.AST] = []
    todo: list[ast.AST] = list(function.body)
    while todo:
        node = todo.pop()
        out.append(node)
        if not isinstance(node, _SCOPES):
            todo.extend(ast.iter_child_nodes(node))
    return out


def eval_call_at(tree: ast.Module, finding: Finding) -> tuple[ast.Call, FunctionNode] | None:
    """The eval call the finding is reported at, and the innermost function holding it (None when
    the finding is anchored elsewhere, e.g. at a call that leads into another file)."""
    found = None
    functions: list[FunctionNode] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions.append(node)
        elif (
            isinstance(node, ast.Call)
            and node.lineno == finding.line
            and node.col_offset + 1 == finding.col
            and _is_eval(node)
        ):
            found = node
    if found is None:
        return None
    holders = [f for f in functions if f.lineno <= found.lineno <= (f.end_lineno or f.lineno)]
    if not holders:
        return None
    return found, max(holders, key=lambda f: (f.lineno, f.col_offset))


def _is_eval(call: ast.Call) -> bool:
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr == "eval":
        return not call.args and not call.keywords
    if func.attr != "train":
        return False
    arg = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "mode"), None)
    return isinstance(arg, ast.Constant) and arg.value is False


def callers(tree: ast.Module, name: str) -> int:
    """How many calls in the module name ``name`` (``name(...)`` or ``x.name(...)``)."""
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == name)
            or (isinstance(node.func, ast.Attribute) and node.func.attr == name)
        )
    )


def _flag_name(tree: ast.Module) -> str:
    """``was_training``, or ``was_training_2``, ... when the module already uses that name."""
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    used |= {node.arg for node in ast.walk(tree) if isinstance(node, ast.arg)}
    name, number = "was_training", 1
    while name in used:
        number += 1
        name = f"was_training_{number}"
    return name


def _receiver_is_stable(function: FunctionNode, receiver: str, own: list[ast.AST]) -> bool:
    """The model expression names the same object at the save and at every restore: a chain of
    names none of whose prefixes is assigned (or deleted) in the routine."""
    parts = receiver.split(".")
    prefixes = {".".join(parts[: end + 1]) for end in range(len(parts))}
    for node in own:
        targets: list[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor, ast.NamedExpr)):
            targets = [node.target]
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            targets = [item.optional_vars for item in node.items if item.optional_vars is not None]
        for target in targets:
            for sub in ast.walk(target):
                if dotted_name(sub) in prefixes:
                    return False
    return True


def save_restore(tree: ast.Module, lines: list[str], finding: Finding) -> tuple[Insertion, ...] | None:
    """The save/restore insertions for ``finding`` (None when this shape does not apply or is not
    safe; see the module docstring)."""
    located = eval_call_at(tree, finding)
    if located is None:
        return None
    call, function = located
    receiver_node = call.func.value  # type: ignore[attr-defined]
    receiver = dotted_name(receiver_node)
    own = _own_nodes(function)
    if receiver is None or any(isinstance(node, (ast.Yield, ast.YieldFrom)) for node in own):
        return None
    if not _receiver_is_stable(function, receiver, own):
        return None
    evals = [
        node
        for node in own
        if isinstance(node, ast.Call) and _is_eval(node) and dotted_name(node.func.value) == receiver  # type: ignore[attr-defined]
    ]
    first = min(evals, key=lambda node: (node.lineno, node.col_offset))  # one save for every eval of it
    anchor = next(s for s in function.body if s.lineno <= first.lineno <= (s.end_lineno or s.lineno))
    flag = _flag_name(tree)
    restore = f"{receiver}.train({flag})\n"
    indent, body_indent = indent_of(lines, anchor), indent_of(lines, function.body[0])
    if indent is None or body_indent is None or function.body[0].lineno <= function.lineno:
        return None
    out = [Insertion(anchor.lineno, f"{indent}{flag} = {receiver}.training\n")]
    for node in own:
        if isinstance(node, ast.Return) and node.lineno >= anchor.lineno:
            where = indent_of(lines, node)
            if where is None or not _pure(node.value):
                return None
            out.append(Insertion(node.lineno, where + restore))
    last = function.body[-1]
    if not isinstance(last, (ast.Return, ast.Raise)):
        out.append(Insertion((last.end_lineno or last.lineno) + 1, body_indent + restore))
    return tuple(sorted(set(out)))
