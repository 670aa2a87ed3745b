"""``parity lint --fix`` / ``--diff`` on the corpus: every fix is safe (the fixed file re-lints
without the finding) and minimal (the syntax tree differs only by inserted ``train()`` calls)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from parity.cli import main
from parity.lint import lint_paths
from parity.lint._files import relint_text
from parity.lint._fix import fix_source

CORPUS = Path(__file__).parent / "lint_corpus"


def _inserted_form(stmt: ast.stmt) -> str | None:
    """Which fix statement ``stmt`` is: ``X.train()``, ``flag = X.training``, ``X.train(flag)``."""
    if (
        isinstance(stmt, ast.Assign)
        and isinstance(stmt.value, ast.Attribute)
        and stmt.value.attr == "training"
    ):
        return "save"
    if (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Attribute)
        and stmt.value.func.attr == "train"
        and not stmt.value.keywords
    ):
        if not stmt.value.args:
            return "train"
        if len(stmt.value.args) == 1 and isinstance(stmt.value.args[0], ast.Name):
            return "restore"
    return None


def _without_inserted(fixed: ast.Module, count: int) -> tuple[str, list[str]]:
    """The dump of ``fixed`` with its inserted statements taken out again; each must be one of
    the three fix forms, and a restore must name a flag that an inserted save set."""

    class Strip(ast.NodeTransformer):
        def generic_visit(self, node: ast.AST) -> ast.AST:
            super().generic_visit(node)
            for name in ("body", "orelse", "finalbody"):
                block = getattr(node, name, None)
                if isinstance(block, list):
                    setattr(node, name, [stmt for stmt in block if stmt not in inserted])
            return node

    inserted = [stmt for stmt in ast.walk(fixed) if getattr(stmt, "lint_inserted", False)]
    assert len(inserted) == count
    forms = [_inserted_form(stmt) for stmt in inserted]
    assert None not in forms, [ast.unparse(stmt) for stmt in inserted]
    flags = {stmt.targets[0].id for stmt in inserted if _inserted_form(stmt) == "save"}
    restored = {stmt.value.args[0].id for stmt in inserted if _inserted_form(stmt) == "restore"}
    assert restored <= flags
    return ast.dump(Strip().visit(fixed)), forms


def _mark_inserted(fixed_source: str, original: str) -> ast.Module:
    """Parse the fixed source and mark the statements on lines that the original does not have."""
    tree = ast.parse(fixed_source)
    old_lines = original.splitlines()
    new_lines = fixed_source.splitlines()
    added, index = set(), 0
    for number, line in enumerate(new_lines, start=1):
        if index < len(old_lines) and line == old_lines[index]:
            index += 1
        else:
            added.add(number)
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node.lineno in added:
            node.lint_inserted = True  # type: ignore[attr-defined]
    return tree


@pytest.mark.slow  # measured 30 s on the 2-core dev box under load (one re-lint per tried fix)
def test_every_safe_fix_relints_clean_and_only_inserts_train_calls(tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    findings = lint_paths([corpus])
    fixed_files, shapes = 0, {}
    for path in sorted(corpus.glob("bug_*.py")):
        source = path.read_text()
        mine = [f for f in findings if f.path == str(path) and f.code == "MODE001"]
        new, done = fix_source(source, str(path), findings, [str(corpus)])
        if not done:
            assert all(f.hint is None for f in mine) or new == source
            continue
        fixed_files += 1
        tree = _mark_inserted(new, source)
        stripped, forms = _without_inserted(tree, len(new.splitlines()) - len(source.splitlines()))
        assert stripped == ast.dump(ast.parse(source))
        shapes[path.name] = "save/restore" if "save" in forms else "train()"
        if len(done) == len(mine):  # the fixed file, re-linted in its project, is clean
            assert [f for f in relint_text(new, str(path), [str(corpus)]) if f.code == "MODE001"] == []
    print(
        f"\n--fix: {fixed_files} of {len(list(corpus.glob('bug_*.py')))} buggy corpus files fixed: {shapes}"
    )
    assert fixed_files >= 22  # 22 with the loop-top shape alone; the save/restore shape adds to them
    assert sum(shape == "save/restore" for shape in shapes.values()) >= 1


def test_fix_writes_the_file_and_diff_changes_nothing(tmp_path, capsys):
    path = tmp_path / "train.py"
    shutil.copy(CORPUS / "bug_seed_classic.py", path)
    before = path.read_text()
    assert main(["lint", "--diff", str(path)]) == 1
    out = capsys.readouterr().out
    assert "+    model.train()" in out and path.read_text() == before
    assert main(["lint", "--fix", str(path)]) == 0  # nothing left after the fix
    assert "would fix" not in capsys.readouterr().err
    assert path.read_text() != before and lint_paths([path]) == []


_ROUTINE = """import torch
import torch.nn.functional as F

was_training = None  # a module name already taken: the fix picks another


def evaluate(model, loader):
    if not loader:
        return 0.0
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x, y in loader:
            total += F.cross_entropy(model(x), y).item()
    if total < 0:
        return None
    return total / len(loader)


def fit(model, train_loader, val_loader, epochs):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    print(evaluate(model, val_loader))  # a second caller, before the loop
    model.train()
    for epoch in range(epochs):
        for x, y in train_loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        print(epoch, evaluate(model, val_loader))
"""


def _fix_file(tmp_path, source: str) -> tuple[str, list]:
    path = tmp_path / "train.py"
    path.write_text(source)
    findings = lint_paths([path])
    assert [f.code for f in findings] == ["MODE001"]
    return fix_source(source, str(path), findings, [str(path)])


def test_a_routine_with_several_callers_saves_and_restores_the_flag(tmp_path):
    new, done = _fix_file(tmp_path, _ROUTINE)
    assert len(done) == 1
    added = [line for line in new.splitlines() if line not in _ROUTINE.splitlines()]
    assert added == [
        "    was_training_2 = model.training",
        "        model.train(was_training_2)",
        "    model.train(was_training_2)",
    ]
    lines = new.splitlines()
    # the early return before the eval is left alone; each later return restores first
    assert lines[lines.index("        return 0.0") - 1] == "    if not loader:"
    assert lines[lines.index("        return None") - 1] == "        model.train(was_training_2)"
    assert lines[lines.index("    return total / len(loader)") - 1] == "    model.train(was_training_2)"
    assert relint_text(new, str(tmp_path / "train.py"), [str(tmp_path / "train.py")]) == []
    stripped, forms = _without_inserted(_mark_inserted(new, _ROUTINE), 3)
    assert stripped == ast.dump(ast.parse(_ROUTINE)) and forms.count("save") == 1


def test_one_caller_keeps_the_loop_top_fix(tmp_path):
    source = _ROUTINE.replace(
        "    print(evaluate(model, val_loader))  # a second caller, before the loop\n", ""
    )
    new, done = _fix_file(tmp_path, source)
    added = [line for line in new.splitlines() if line not in source.splitlines()]
    assert len(done) == 1 and added == ["        model.train()"]


def test_a_return_that_runs_the_model_gets_no_restore(tmp_path):
    # a restore before this return would run the model in train mode: not a safe fix
    source = _ROUTINE.replace(
        "    return total / len(loader)", "    return total / len(loader) + model(x).sum().item()"
    )
    new, done = _fix_file(tmp_path, source)
    added = [line for line in new.splitlines() if line not in source.splitlines()]
    assert len(done) == 1 and added == ["        model.train()"]  # the loop-top fix instead


def test_a_model_name_rebound_in_the_routine_gets_no_save(tmp_path):
    source = _ROUTINE.replace(
        "    total = 0.0\n",
        "    total = 0.0\n    model = model.module if hasattr(model, 'module') else model\n",
    )
    new, done = _fix_file(tmp_path, source)
    added = [line for line in new.splitlines() if line not in source.splitlines()]
    assert len(done) == 1 and added == ["        model.train()"]  # the loop-top fix instead


def test_the_eval_in_the_loops_middle_is_restored_in_its_routine(tmp_path):
    # the eval runs before the training step of the same iteration: a loop-top train() cannot fix
    # it; the routine's own restore does, and comes before a train() in the loop's middle
    source = _ROUTINE.replace(
        "    print(evaluate(model, val_loader))  # a second caller, before the loop\n", ""
    ).replace(
        "        for x, y in train_loader:\n            opt.zero_grad()",
        "        for x, y in train_loader:\n            print(evaluate(model, val_loader))\n            opt.zero_grad()",
    )
    new, done = _fix_file(tmp_path, source)
    added = [line for line in new.splitlines() if line not in source.splitlines()]
    assert len(done) == 1 and added[0] == "    was_training_2 = model.training"
    assert "            model.train()" not in added
