"""The package layout's rules, checked on the source: argparse only in the command layer, no
private imports across modules, one home per shared name, every command wired the same way."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import parity
from parity.cli import COMMANDS, main

ROOT = Path(parity.__file__).parent
SHARED_NAMES = ("MODELS", "FRAMEWORKS", "FLAX_FRAMEWORKS", "MODEL_DATASET", "DATASET_MODEL", "DEVICES")


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(("parity", *path.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        out.append((name, ast.parse(path.read_text())))
    return out


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [a.name for a in node.names]))
    return found


def test_argparse_lives_only_in_the_command_layer():
    users = [
        name
        for name, tree in _modules()
        if any(mod == "argparse" for mod, _ in _imports(tree))
        and not (name.startswith("parity.commands") or name == "parity.cli")
    ]
    assert users == [], f"argparse imported below the command layer: {users}"


def _shares_private_family(importer: str, source: str) -> bool:
    """A package's private modules (``pkg/_impl.py``) may share private names within ``pkg``."""
    package, _, leaf = source.rpartition(".")
    return leaf.startswith("_") and importer.startswith(package + ".")


def test_no_module_imports_another_modules_private_names():
    offenders = [
        f"{name} imports {mod}.{n}"
        for name, tree in _modules()
        for mod, names in _imports(tree)
        for n in names
        if n.startswith("_")
        and not n.startswith("__")
        and mod.startswith("parity")
        and mod != name
        and not _shares_private_family(name, mod)
    ]
    assert offenders == []


def test_each_shared_name_is_defined_once():
    homes: dict[str, list[str]] = {n: [] for n in SHARED_NAMES}
    for name, tree in _modules():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for t in targets:
                if isinstance(t, ast.Name) and t.id in homes:
                    homes[t.id].append(name)
    assert all(len(h) == 1 for h in homes.values()), homes


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_module_has_add_arguments_and_run(command):
    module = importlib.import_module(COMMANDS[command][0])
    assert module.__name__.startswith("parity.commands.")
    assert callable(module.add_arguments) and callable(module.run)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"parity {parity.__version__}"


# -- the import graph and the size of things -------------------------------------------------

PACKAGES = ("parity", "torch_impl", "flax_impl")
REPO = ROOT.parent
#: issue 19's bounds: a module is one concept that fits a reader's head, a function one screen
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 600, 60


def _project_modules() -> dict[str, tuple[Path, ast.Module]]:
    """Every module of the three packages: dotted name -> (path, parsed source)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts).removesuffix(".__init__")
            out[name] = (path, ast.parse(path.read_text()))
    return out


def _import_targets(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The project modules ``name`` imports anywhere (top level, functions, TYPE_CHECKING).

    ``from a.b import c`` counts ``a.b.c`` when that is a module, else ``a.b``. A module's own
    ancestor packages are left out: Python imports them first whatever the module says.
    """
    is_package = (name + ".__init__") in known or any(k.startswith(name + ".") for k in known)
    here = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {m for m in found if m in known and m != name and m not in ancestors}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_circle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_among_the_projects_modules():
    modules = _project_modules()
    known = set(modules)
    graph = {name: _import_targets(name, tree, known) for name, (_, tree) in modules.items()}
    assert _cycles(graph) == []


def test_no_module_over_600_lines_and_no_function_over_60():
    long_modules, long_functions = [], []
    for name, (path, tree) in _project_modules().items():
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES:
            long_modules.append(f"{name} ({n})")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({n})")
    assert long_modules == [] and long_functions == []
