"""``parity lint --fix`` / ``--diff``: insert the mode calls that a MODE001 finding lacks.

A fix inserts statements in the checked file, in one of three shapes:

1. ``<model>.train()`` at the top of the loop body that leaks (the eval ran in the previous
   iteration's tail);
2. save and restore inside the eval routine (:mod:`parity.lint._fix_restore`):
   ``was_training = <model>.training`` before the eval, ``<model>.train(was_training)`` before
   every later ``return`` and at the end;
3. ``<model>.train()`` right before the statement of the loop body that holds the training
   forward pass (the eval ran earlier in the same iteration).

The shapes are tried in that order, except that the save/restore comes first when the eval
routine is called from several places of the file (a loop-top call would fix one caller only).
The loop's middle (shape 3) is the last resort, after the routine's own restore.  A fix is
offered only when it is *safe*: the fixed file, re-linted in the same project, no longer has
that finding, and nothing else is changed (the syntax tree differs only by the inserted
statements).  Findings whose model or loop is in another file get no loop fix.
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Sequence

from parity.lint._files import relint_text
from parity.lint._findings import Finding
from parity.lint._fix_restore import Insertion, callers, eval_call_at, indent_of, save_restore

LOOPS = (ast.For, ast.AsyncFor, ast.While)
Fix = tuple[Insertion, ...]  # the statements one fix inserts


def _statement_lists(node: ast.AST) -> list[list[ast.stmt]]:
    """Every statement list below ``node`` (bodies, else and finally blocks, handlers)."""
    out = []
    for sub in ast.walk(node):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(sub, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                out.append(block)
    return out


def _loop_fixes(tree: ast.Module, lines: list[str], finding: Finding) -> tuple[list[Fix], list[Fix]]:
    """(loop-top insertion, insertions before the training forward's statement) for one finding."""
    hint = finding.hint
    if hint is None:
        return [], []
    loop = next(
        (node for node in ast.walk(tree) if isinstance(node, LOOPS) and node.lineno == hint.loop_line), None
    )
    if loop is None:
        return [], []
    call = f"{hint.model}.train()\n"
    top, middle = [], []
    first = loop.body[0]
    indent = indent_of(lines, first)
    if indent is not None and first.lineno > loop.lineno:
        top.append((Insertion(first.lineno, indent + call),))
    for block in _statement_lists(loop):
        for stmt in block:
            end = stmt.end_lineno or stmt.lineno
            if stmt.lineno <= hint.forward_line <= end and not isinstance(
                stmt, (*LOOPS, ast.If, ast.With, ast.Try)
            ):
                indent = indent_of(lines, stmt)
                if indent is not None and stmt.lineno > loop.lineno:
                    middle.append((Insertion(stmt.lineno, indent + call),))
    return top, middle


def _candidates(tree: ast.Module, lines: list[str], finding: Finding) -> list[Fix]:
    """The fixes to try for one finding, in order of preference (see the module docstring)."""
    top, middle = _loop_fixes(tree, lines, finding)
    restore = save_restore(tree, lines, finding)
    routine: list[Fix] = [restore] if restore is not None else []
    located = eval_call_at(tree, finding)
    if routine and located is not None and callers(tree, located[1].name) > 1:
        out = routine + top + middle
    else:
        out = top + routine + middle
    return list(dict.fromkeys(out))


def apply(lines: list[str], insertions: Sequence[Insertion]) -> str:
    """The source with each insertion's line put before its original line.  Of two insertions
    before the same line, the more indented one comes first (a restore at the end of a function
    goes before a statement that follows the function)."""
    out = list(lines)
    order = sorted(
        set(insertions), key=lambda item: (item.before, -_width(item.text), item.text), reverse=True
    )
    for insertion in order:
        out.insert(insertion.before - 1, insertion.text)
    return "".join(out)


def _width(text: str) -> int:
    return len(text) - len(text.lstrip())


def _moved(line: int, insertions: Sequence[Insertion]) -> int:
    """Where original line ``line`` is after the insertions."""
    return line + sum(1 for insertion in set(insertions) if insertion.before <= line)


def fix_source(
    source: str, path: str, findings: Sequence[Finding], paths: Sequence[str]
) -> tuple[str, list[Finding]]:
    """(fixed source, the findings fixed): for each MODE001 finding of ``path`` with a hint, the
    first candidate insertion after which a re-lint in the project of ``paths`` no longer reports
    it.  The source is returned unchanged when no fix is safe."""
    tree = ast.parse(source, filename=path)
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    chosen: dict[Finding, Fix] = {}
    for finding in sorted(f for f in findings if f.code == "MODE001" and f.path == path):
        for fix in _candidates(tree, lines, finding):
            trial = [insertion for done in chosen.values() for insertion in done] + list(fix)
            after = relint_text(apply(lines, trial), path, paths)
            key = (_moved(finding.line, trial), finding.code)
            if key not in {(f.line, f.code) for f in after if f.path == path}:
                chosen[finding] = fix
                break
    if not chosen:
        return source, []
    return apply(lines, [insertion for fix in chosen.values() for insertion in fix]), sorted(chosen)


def diff(path: str, old: str, new: str) -> str:
    """A unified diff of one file's fix, the file named as given on both sides (as ruff's ``--diff``)."""
    name = path.replace(os.sep, "/")
    return "".join(
        difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), name, name)
    )
