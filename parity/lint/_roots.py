"""The project a checked file belongs to: its root, found as type checkers find it, and its modules.

``parity lint train.py`` run inside a repository follows ``train.py``'s imports into the
repository's other modules: the project root is the nearest folder at or above the file that
holds ``pyproject.toml``, ``setup.py``, ``setup.cfg`` or ``.git``.  Every ``*.py`` below the
root is indexed by its dotted name relative to the root; only the modules that imports reach
are read and parsed, and only the files given are checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

ROOT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
#: folders never indexed: virtual environments and installed packages are not the project's code
SKIPPED_FOLDERS = frozenset({"__pycache__", "node_modules", "site-packages", "dist-packages"})
#: a checked file below one of these is an installed package; no root is searched above it
INSTALLED_FOLDERS = frozenset({"site-packages", "dist-packages"})
MAX_INDEXED_FILES = 20_000  # a root above this many files is indexed only this far


class ProjectRoot:
    """A project root: the folder (spelled as the checked files' paths are) and its marker."""

    def __init__(self, folder: Path, marker: str) -> None:
        self.folder = folder
        self.marker = marker

    def __repr__(self) -> str:
        return f"ProjectRoot({str(self.folder)!r}, {self.marker!r})"

    def describe(self) -> str:
        """``/abs/path (pyproject.toml)``: the line printed for the user."""
        return f"{self.folder.absolute()} ({self.marker})"


def find_project_root(path: Path) -> ProjectRoot | None:
    """The nearest folder at or above ``path`` (a file or folder) with a root marker, or None.

    The folder is spelled like ``path`` (relative stays relative), so that indexed files and
    files given on the command line have the same names."""
    start = path if path.is_dir() else path.parent
    absolute = Path(os.path.abspath(start))
    for up, folder in enumerate([absolute, *absolute.parents]):
        if folder.name in INSTALLED_FOLDERS:
            return None  # an installed package: whatever repository holds the environment is not its project
        for marker in ROOT_MARKERS:
            if (folder / marker).exists():
                return ProjectRoot(_spelled_like(path, start, up, folder), marker)
    return None


def _spelled_like(path: Path, start: Path, up: int, folder: Path) -> Path:
    """``folder`` (``up`` levels above ``start``) written relative when ``path`` is relative."""
    if path.is_absolute():
        return folder
    relative = Path(os.path.normpath(start.joinpath(*([".."] * up))))
    return relative


def project_files(root: Path) -> Iterable[Path]:
    """The ``*.py`` files below ``root`` in sorted order (hidden folders, caches, installed
    packages and virtual environments skipped; at most :data:`MAX_INDEXED_FILES`)."""
    count = 0
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            name
            for name in dirs
            if not name.startswith(".")
            and name not in SKIPPED_FOLDERS
            and not os.path.exists(os.path.join(folder, name, "pyvenv.cfg"))
        )
        for name in sorted(files):
            if name.endswith(".py"):
                count += 1
                if count > MAX_INDEXED_FILES:
                    return
                yield Path(folder) / name


def roots_of(files: Iterable[Path]) -> dict[Path, ProjectRoot | None]:
    """Each file's project root (one search per folder)."""
    by_folder: dict[Path, ProjectRoot | None] = {}
    out: dict[Path, ProjectRoot | None] = {}
    for file in files:
        folder = file.parent
        if folder not in by_folder:
            by_folder[folder] = find_project_root(file)
        out[file] = by_folder[folder]
    return out
