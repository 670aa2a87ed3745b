"""Whole-project analysis: imports resolved against the files given (none outside them)."""

from __future__ import annotations

import ast

from parity.lint._frames import Frame


class ProjectMixin:
    """Binds names imported from modules of the analysed tree to their definitions."""

    project: object | None

    def _import_definition(self, stmt: ast.Import | ast.ImportFrom, alias: ast.alias, frame: Frame) -> None:
        """Without a project index imports stay opaque (``import:name``)."""
        return None
