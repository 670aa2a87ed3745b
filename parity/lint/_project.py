"""Whole-project analysis: a module index of the files given, and imports resolved against it.

Only files in the index are ever read: an import that does not resolve to one of them stays
opaque (``import:name``), exactly as in single-file analysis.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from parity.lint._frames import ClassInfo, Frame, FuncRef

#: reads and parses a file of the index; None when it cannot be read or parsed
TreeLoader = Callable[[str], ast.Module | None]


class ImportPlan(NamedTuple):
    """What one imported name binds: ``local`` to a module (``"module:<file>"``), or to the
    definition of the same name in the module file ``source`` (``from pkg.mod import name``)."""

    local: str
    module: str | None
    source: str | None


def module_names(file: Path, root: Path | None) -> list[str]:
    """Dotted names a file can be imported as: relative to the tree root, and with the root's name."""
    base = root if root is not None else file.parent
    try:
        parts = list(file.with_suffix("").relative_to(base).parts)
    except ValueError:
        parts = [file.stem]
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    names = [".".join(parts)] if parts else []
    if root is not None and root.name:
        names.append(".".join([root.name, *parts]))
    return names


class ProjectIndex:
    """Dotted module name -> file, for the files of one ``parity lint`` run."""

    def __init__(
        self,
        files: Iterable[tuple[Path, Path | None]],
        load: TreeLoader,
        indexed: Iterable[tuple[Path, Path]] = (),
    ) -> None:
        """``files``: the files checked, with the folder each was found under (names relative to
        it, and by dotted-name suffix); ``indexed``: (file, project root) pairs that imports may
        reach by their exact name relative to the project root (they are not checked)."""
        self.by_name: dict[str, str] = {}
        self.name_of: dict[str, str] = {}
        self.by_suffix: dict[str, set[str]] = {}  # "b.c" -> files of the modules named "*.b.c"
        #: a module name that stays ambiguous -> its candidates; ``variant`` picks among them
        self.ambiguous: dict[tuple[str, str | None], tuple[str, ...]] = {}
        self.met: set[tuple[str, str | None]] = set()  # ambiguous imports met since cleared
        self.ambiguous_hits = 0  # resolutions of an ambiguous name, ever (see import_plan)
        self.variant = 0
        self.steps_seen_last = 0  # training steps the last file's analysis interpreted
        self._load = load
        self._trees: dict[str, ast.Module | None] = {}
        self._resolved: dict[tuple[str, str | None], str | None] = {}
        self._folders: dict[str, str] = {}  # importer -> its folder (resolve() is called very often)
        #: (module path, folder) -> the module file there or in the nearest folder above (one walk
        #: up per folder, shared by the importers below it)
        self._near: dict[tuple[str, str], str | None] = {}
        self._plans: dict[tuple[ast.alias, str], ImportPlan | None] = {}  # see import_plan
        #: facts derived from the syntax trees (shared, never modified), kept for every file's
        #: analysis: a body's direct definitions, a function's scope names, a call's receivers
        #: of ``.parameters()`` in its arguments
        self.defs_cache: dict[ast.AST, list] = {}
        self.class_infos: dict[ast.ClassDef, ClassInfo] = {}  # a class's bases and methods
        self.scope_cache: dict[ast.AST, tuple[set[str], set[str], set[str]]] = {}
        self.parameter_calls: dict[ast.AST, tuple[bool, tuple[ast.expr, ...]]] = {}
        self.loop_trains: dict[ast.AST, bool] = {}  # a loop body holds a training step
        self.children_cache: dict[ast.AST, tuple[ast.expr, ...]] = {}  # sub-expressions with effects
        for file, root in files:
            names = module_names(file, root)
            for name in names:
                self.by_name.setdefault(name, str(file))
            if names:
                self.name_of.setdefault(str(file), names[0])
        for name, path in self.by_name.items():
            parts = name.split(".")
            for start in range(1, len(parts)):
                self.by_suffix.setdefault(".".join(parts[start:]), set()).add(path)
        for file, root in indexed:
            for name in module_names(file, root)[:1]:
                self.by_name.setdefault(name, str(file))
                self.name_of.setdefault(str(file), name)

    def set_variant(self, variant: int) -> None:
        """Analyse with the ``variant``-th candidate of every ambiguous import (cache cleared)."""
        if variant != self.variant:
            self.variant = variant
            self._resolved.clear()

    def resolve(self, name: str, importer: str | None = None) -> str | None:
        """The file of module ``name``: next to the importing script (Python puts a script's folder
        first on ``sys.path``), an exact match, else the unique module ending in ``.name``."""
        folder = None
        if importer is not None:
            folder = self._folders.get(importer)
            if folder is None:
                folder = self._folders[importer] = os.path.dirname(importer)
        key = (name, folder)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(name, importer)
        if key in self.ambiguous:
            self.met.add(key)
            self.ambiguous_hits += 1
        return self._resolved[key]

    def _resolve(self, name: str, importer: str | None) -> str | None:
        if importer is not None:  # the importing file's own package root first, nearest folder up
            relative, folder = name.replace(".", os.sep), os.path.dirname(importer)
            walked: list[str] = []  # folders whose answer is the one found above them (cached)
            while (relative, folder) not in self._near:
                walked.append(folder)
                base = os.path.join(folder, relative)
                for candidate in (base + ".py", os.path.join(base, "__init__.py")):
                    if candidate in self.name_of:
                        self._near[(relative, folder)] = candidate
                        break
                else:
                    parent = os.path.dirname(folder)
                    if parent == folder:
                        self._near[(relative, folder)] = None
                    folder = parent
            for seen in walked:
                self._near[(relative, seen)] = self._near[(relative, folder)]
            if self._near[(relative, folder)] is not None:
                return self._near[(relative, folder)]
        if name in self.by_name:
            return self.by_name[name]
        matches = sorted(self.by_suffix.get(name, set()))
        if len(matches) <= 1:
            return matches[0] if matches else None
        return self._closest(name, matches, importer)

    def _closest(self, name: str, matches: list[str], importer: str | None) -> str:
        """Of several files named ``*.name``, the one sharing the longest folder prefix with the
        importer; a tie is an ambiguous import: ``variant`` picks, and the candidates are kept."""

        def shared(path: str) -> int:
            if importer is None:
                return 0
            return len(os.path.commonpath([os.path.abspath(path), os.path.abspath(importer)]))

        best = max(shared(path) for path in matches)
        tied = tuple(path for path in matches if shared(path) == best)
        if len(tied) > 1:
            self.ambiguous[(name, os.path.dirname(importer) if importer is not None else None)] = tied
        return tied[self.variant % len(tied)]

    def absolute(self, importer: str, module: str | None, level: int) -> str | None:
        """The dotted name ``from <level dots><module> import ...`` refers to, seen from ``importer``."""
        if level == 0:
            return module
        package = self.name_of.get(importer, "").split(".")
        is_package = os.path.basename(importer) == "__init__.py"
        keep = len(package) - (level - 1) - (0 if is_package else 1)
        if keep < 0:
            return None
        parts = package[:keep] + ([module] if module else [])
        return ".".join(part for part in parts if part)

    def import_plan(
        self, stmt: ast.Import | ast.ImportFrom, alias: ast.alias, importer: str
    ) -> ImportPlan | None:
        """What one imported name of ``importer`` binds (None: nothing of the project).

        Every file's analysis binds the imports of the modules it reaches, so the resolution
        is kept per ``alias`` node and importer for the run (the search starts from the
        importer's folder), unless it met an ambiguous module name: that depends on the
        variant analysed and is resolved again each time."""
        key = (alias, importer)
        if key in self._plans:
            return self._plans[key]
        hits = self.ambiguous_hits
        plan = self._import_plan(stmt, alias, importer)
        if self.ambiguous_hits == hits:
            self._plans[key] = plan
        return plan

    def _import_plan(
        self, stmt: ast.Import | ast.ImportFrom, alias: ast.alias, importer: str
    ) -> ImportPlan | None:
        if isinstance(stmt, ast.Import):
            target = self.resolve(alias.name, importer)
            if target is not None and alias.asname:  # import pkg.model as model
                return ImportPlan(alias.asname, f"module:{target}", None)
            if target is not None and "." not in alias.name:
                return ImportPlan(alias.name, f"module:{target}", None)
            return None
        module = self.absolute(importer, stmt.module, stmt.level)
        if module is None:
            return None
        local = alias.asname or alias.name
        base = importer if stmt.level == 0 else None
        submodule = self.resolve(f"{module}.{alias.name}" if module else alias.name, base)
        if submodule is not None:  # from pkg import model
            return ImportPlan(local, f"module:{submodule}", None)
        source = self.resolve(module, base) if module else None
        return ImportPlan(local, None, source) if source is not None else None

    def tree(self, path: str) -> ast.Module | None:
        """The parsed module (cached)."""
        if path not in self._trees:
            self._trees[path] = self._load(path)
        return self._trees[path]

    def checked_tree(self, path: str, parse: Callable[[], ast.Module | object]) -> ast.Module | object:
        """The tree of a file being checked: the one already parsed when another file imported it
        (read from the same file in this run, so the same text), else ``parse()``'s, kept for the
        files that import it later.  One tree per file, so the syntax facts cached per node are
        computed once per run, not once for the checked file and once for its importers."""
        tree = self._trees.get(path)
        if tree is not None:
            return tree
        parsed = parse()
        if isinstance(parsed, ast.Module):
            self._trees[path] = parsed
        return parsed


class ProjectMixin:
    """Binds names imported from modules of the analysed tree to their definitions."""

    project: ProjectIndex | None
    module_frames: dict[str, Frame]
    class_index: dict[tuple[str, str], ClassInfo]
    bindings: int
    path: str

    def _module_frame(self, file: str) -> Frame | None:
        """The frame of another module of the project: its definitions and its imports, not its body."""
        if file == self.path:
            return self.module
        if file in self.module_frames:
            return self.module_frames[file]
        tree = self.project.tree(file) if self.project is not None else None
        if tree is None:
            return None
        frame = Frame(tree, None, "<module>")
        frame.file, frame.tag = file, f"{file}:"
        self.module_frames[file] = frame
        self.bindings += 1  # its classes and methods can change what a later call resolves to
        self.register_definitions(tree, frame, file)
        self.unresolved_imports.add(file)  # resolved when code of this module first runs
        return frame

    def _resolve_imports(self, frame: Frame) -> None:
        """Bind the top-level imports of another module (once, when its code is first entered)."""
        if frame.file not in self.unresolved_imports:
            return
        self.unresolved_imports.discard(frame.file)
        for stmt in frame.node.body:  # type: ignore[attr-defined]
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for alias in stmt.names:
                    if alias.name != "*":
                        self._import_definition(stmt, alias, frame)

    def _import_definition(self, stmt: ast.Import | ast.ImportFrom, alias: ast.alias, frame: Frame) -> None:
        """Bind an imported module, function or class of the project in ``frame``."""
        if self.project is None:
            return
        self.bindings += 1  # an imported name can change what a later call reaches
        plan = self.project.import_plan(stmt, alias, frame.file)
        if plan is None:
            return
        if plan.module is not None:
            frame.env[plan.local] = plan.module
            return
        source_frame = self._module_frame(plan.source) if plan.source is not None else None
        if source_frame is not None:
            self._bind_definition(source_frame, alias.name, plan.local, frame)

    def _bind_definition(self, source: Frame, name: str, local: str, frame: Frame) -> None:
        """Bind ``local`` in ``frame`` to the function, class or module ``name`` of ``source``."""
        if name not in source.funcs and name not in source.env:
            self._resolve_imports(source)  # ``name`` may be re-exported by an import there
        if name in source.funcs:
            frame.env.pop(local, None)
            frame.funcs[local] = source.funcs[name]
            return
        info = self.class_index.get((source.file, name))
        if info is not None:
            frame.env.pop(local, None)
            self.classes.setdefault(local, info)
            self.class_frames.setdefault(local, source)
            return
        imported = source.funcs.get(name) or source.env.get(name)
        if isinstance(imported, str) and imported.startswith("module:"):
            frame.env[local] = imported

    def _module_member(self, module: str, name: str) -> FuncRef | str | None:
        """``model_module.name``: a function of that module, or the name of its class."""
        frame = self._module_frame(module.removeprefix("module:"))
        if frame is None:
            return None
        if name in frame.funcs:
            return frame.funcs[name]
        info = self.class_index.get((frame.file, name))
        return info.node.name if info is not None else None
