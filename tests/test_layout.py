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
