"""``[tool.parity.lint]`` in the project root's ``pyproject.toml``: which codes, which files.

    [tool.parity.lint]
    select = ["MODE001", "MODE002"]       # code prefixes to report (default: all)
    ignore = ["MODE003"]                  # code prefixes never reported
    exclude = ["vendor/**", "legacy_*.py"] # globs (relative to the root) of files not checked
    [tool.parity.lint.per-file-ignores]
    "notebooks/*.py" = ["MODE002"]

Globs match the path relative to the project root (``**`` any number of folders, ``*`` and
``?`` within one name; a glob without ``/`` also matches a file name in any folder).
``MODE000`` and ``MODE009`` are always reported, whatever the configuration says.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from parity.errors import ParityError
from parity.lint._findings import ALWAYS_REPORTED, RULES

KEYS = frozenset({"select", "ignore", "exclude", "per-file-ignores"})


@dataclass(frozen=True)
class LintConfig:
    """The lint settings of one project root (empty: everything reported, nothing excluded)."""

    root: Path | None = None
    source: str | None = None  # the pyproject.toml it was read from
    select: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def relative(self, path: str) -> str | None:
        """``path`` relative to the root, with ``/`` separators (None: not below the root)."""
        if self.root is None:
            return None
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        return None if relative.startswith("..") else PurePosixPath(*Path(relative).parts).as_posix()

    def excludes(self, path: str) -> bool:
        """Whether ``path`` matches an ``exclude`` glob."""
        relative = self.relative(path)
        return relative is not None and any(glob_match(relative, glob) for glob in self.exclude)

    def reports(self, path: str, code: str) -> bool:
        """Whether a finding ``code`` in ``path`` is reported under select / ignore / per-file-ignores."""
        if code in ALWAYS_REPORTED:
            return True
        if self.select and not any(code.startswith(prefix) for prefix in self.select):
            return False
        ignored = list(self.ignore)
        relative = self.relative(path)
        if relative is not None:
            for glob, codes in self.per_file_ignores:
                if glob_match(relative, glob):
                    ignored.extend(codes)
        return not any(code.startswith(prefix) for prefix in ignored)


def glob_match(relative: str, glob: str) -> bool:
    """``relative`` (posix, below the root) against a glob: ``**/`` spans folders, ``*`` one name;
    a glob without ``/`` also matches the file's name in any folder (as ruff's exclude does)."""
    if "/" not in glob and fnmatch.fnmatchcase(relative.rsplit("/", 1)[-1], glob):
        return True
    return re.fullmatch(_glob_regex(glob), relative) is not None


def _glob_regex(glob: str) -> str:
    out = []
    index = 0
    while index < len(glob):
        if glob.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif glob.startswith("**", index):
            out.append(".*")
            index += 2
        else:
            char = glob[index]
            out.append("[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char))
            index += 1
    return "".join(out)


def load_config(root: Path | None) -> LintConfig:
    """The ``[tool.parity.lint]`` table of ``root/pyproject.toml`` (empty config when absent).

    Raises :class:`ParityError` for an unreadable file, invalid TOML, an unknown key, or a code
    that names no rule."""
    if root is None:
        return LintConfig()
    path = root / "pyproject.toml"
    if not path.is_file():
        return LintConfig(root)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ParityError(f"{path}: cannot read [tool.parity.lint]: {exc}") from None
    table = data.get("tool", {}).get("parity", {}).get("lint")
    if table is None:
        return LintConfig(root)
    if not isinstance(table, dict):
        raise ParityError(f"{path}: [tool.parity.lint] must be a table")
    unknown = sorted(set(table) - KEYS)
    if unknown:
        raise ParityError(f"{path}: unknown key(s) in [tool.parity.lint]: {', '.join(unknown)}")
    per_file = table.get("per-file-ignores", {})
    if not isinstance(per_file, dict):
        raise ParityError(f"{path}: [tool.parity.lint] per-file-ignores must be a table of glob = [codes]")
    return LintConfig(
        root=root,
        source=str(path),
        select=_codes(table, "select", path),
        ignore=_codes(table, "ignore", path),
        exclude=_strings(table.get("exclude", []), "exclude", path),
        per_file_ignores=tuple(
            (glob, _codes(per_file, glob, path, f"per-file-ignores.{glob!r}")) for glob in per_file
        ),
    )


def _strings(value: object, key: str, path: Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ParityError(f"{path}: [tool.parity.lint] {key} must be a list of strings")
    return tuple(value)


def _codes(table: dict, key: str, path: Path, label: str | None = None) -> tuple[str, ...]:
    codes = tuple(code.strip().upper() for code in _strings(table.get(key, []), label or key, path))
    unknown = [code for code in codes if not any(rule.startswith(code) for rule in RULES)]
    if unknown:
        raise ParityError(
            f"{path}: [tool.parity.lint] {label or key}: unknown rule code(s): {', '.join(unknown)}"
        )
    return codes
