"""flake8 plugin: ``flake8 --select MODE`` runs the same checks as ``parity lint`` on each file.

Registered under the ``flake8.extension`` entry point ``MODE`` (extra ``mode-parity[flake8]``).
flake8 parses the file and applies ``# noqa`` itself; this class only reports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from parity.lint._files import analyse_tree


class ModeChecker:
    """A flake8 AST plugin (``tree`` and ``filename`` are handed over by flake8)."""

    name = "parity-lint"
    version = "1"

    def __init__(self, tree: ast.Module, filename: str = "stdin") -> None:
        self.tree = tree
        self.filename = filename

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        """Yield ``(line, col, "MODE00N message", type)``; flake8 columns are 0-based."""
        for finding in analyse_tree(self.tree, self.filename):
            yield finding.line, finding.col - 1, f"{finding.code} {finding.message}", type(self)
