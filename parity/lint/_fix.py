"""``parity lint --fix`` / ``--diff``: insert the ``model.train()`` that a MODE001 finding lacks.

A fix is one inserted statement, ``<model>.train()``, in the file of the training loop:

1. at the top of the loop body that leaks (the eval ran in the previous iteration's tail);
2. else right before the statement of the loop body that holds the training forward pass
   (the eval ran earlier in the same iteration).

A fix is offered only when it is *safe*: the fixed file, re-linted in the same project, no
longer has that finding, and nothing else is changed (the syntax tree differs only by the
inserted statements).  Findings whose model or loop is in another file get no fix.
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Sequence
from typing import NamedTuple

from parity.lint._files import relint_text
from parity.lint._findings import Finding

LOOPS = (ast.For, ast.AsyncFor, ast.While)


class Insertion(NamedTuple):
    """A line of code put before 1-based line ``before`` of the original source."""

    before: int
    text: str


def _statement_lists(node: ast.AST) -> list[list[ast.stmt]]:
    """Every statement list below ``node`` (bodies, else and finally blocks, handlers)."""
    out = []
    for sub in ast.walk(node):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(sub, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                out.append(block)
    return out


def _indent(lines: list[str], stmt: ast.stmt) -> str | None:
    """The indentation of ``stmt``'s first line (None when other code precedes it there)."""
    line = lines[stmt.lineno - 1]
    prefix = line[: stmt.col_offset]
    return prefix if not prefix.strip() else None


def _candidates(tree: ast.Module, lines: list[str], finding: Finding) -> list[Insertion]:
    """The insertions to try for one finding, in order of preference."""
    hint = finding.hint
    if hint is None:
        return []
    loop = next(
        (node for node in ast.walk(tree) if isinstance(node, LOOPS) and node.lineno == hint.loop_line), None
    )
    if loop is None:
        return []
    call = f"{hint.model}.train()\n"
    out = []
    first = loop.body[0]
    indent = _indent(lines, first)
    if indent is not None and first.lineno > loop.lineno:
        out.append(Insertion(first.lineno, indent + call))
    for block in _statement_lists(loop):
        for stmt in block:
            end = stmt.end_lineno or stmt.lineno
            if stmt.lineno <= hint.forward_line <= end and not isinstance(
                stmt, (*LOOPS, ast.If, ast.With, ast.Try)
            ):
                indent = _indent(lines, stmt)
                if indent is not None and stmt.lineno > loop.lineno:
                    out.append(Insertion(stmt.lineno, indent + call))
    return list(dict.fromkeys(out))


def apply(lines: list[str], insertions: Sequence[Insertion]) -> str:
    """The source with each insertion's line put before its original line (stable order)."""
    out = list(lines)
    for insertion in sorted(set(insertions), key=lambda item: item.before, reverse=True):
        out.insert(insertion.before - 1, insertion.text)
    return "".join(out)


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
    chosen: dict[Finding, Insertion] = {}
    for finding in sorted(f for f in findings if f.code == "MODE001" and f.path == path):
        for insertion in _candidates(tree, lines, finding):
            trial = [*chosen.values(), insertion]
            after = relint_text(apply(lines, trial), path, paths)
            key = (_moved(finding.line, trial), finding.code)
            if key not in {(f.line, f.code) for f in after if f.path == path}:
                chosen[finding] = insertion
                break
    if not chosen:
        return source, []
    return apply(lines, list(chosen.values())), sorted(chosen)


def diff(path: str, old: str, new: str) -> str:
    """A unified diff of one file's fix, the file named as given on both sides (as ruff's ``--diff``)."""
    name = path.replace(os.sep, "/")
    return "".join(
        difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), name, name)
    )
