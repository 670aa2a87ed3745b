"""``[tool.parity.lint]`` in the project root's pyproject.toml: select, ignore, exclude, per-file-ignores."""

from __future__ import annotations

import shutil
from pathlib import Path

from parity.cli import main
from parity.lint import lint_paths

CORPUS = Path(__file__).parent / "lint_corpus"


def _project(tmp_path: Path, table: str) -> Path:
    shutil.copy(CORPUS / "bug_seed_classic.py", tmp_path / "train.py")
    (tmp_path / "vendor").mkdir()
    shutil.copy(CORPUS / "bug_two_models.py", tmp_path / "vendor" / "old_train.py")
    (tmp_path / "notebooks").mkdir()
    shutil.copy(CORPUS / "bug_mode002_torch_load.py", tmp_path / "notebooks" / "infer.py")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\n\n' + table)
    return tmp_path


def _found(root: Path, *args: str) -> set[tuple[str, str]]:
    return {(Path(f.path).relative_to(root).as_posix(), f.code) for f in lint_paths([root], *args)}


def test_no_table_reports_everything(tmp_path):
    root = _project(tmp_path, "")
    assert _found(root) == {
        ("train.py", "MODE001"),
        ("vendor/old_train.py", "MODE001"),
        ("notebooks/infer.py", "MODE002"),
    }


def test_exclude_and_per_file_ignores(tmp_path):
    table = '[tool.parity.lint]\nexclude = ["vendor/**"]\n[tool.parity.lint.per-file-ignores]\n"notebooks/*.py" = ["MODE002"]\n'
    root = _project(tmp_path, table)
    assert _found(root) == {("train.py", "MODE001")}
    # a file named on the command line is checked even when a glob excludes it (as in ruff)
    assert {f.code for f in lint_paths([root / "vendor" / "old_train.py"])} == {"MODE001"}


def test_select_and_ignore_and_command_line_select(tmp_path):
    root = _project(tmp_path, '[tool.parity.lint]\nselect = ["MODE002"]\n')
    assert _found(root) == {("notebooks/infer.py", "MODE002")}
    assert _found(root, ["MODE001"]) == {("train.py", "MODE001"), ("vendor/old_train.py", "MODE001")}
    (tmp_path / "b").mkdir()
    root = _project(tmp_path / "b", '[tool.parity.lint]\nignore = ["MODE001"]\n')
    assert _found(root) == {("notebooks/infer.py", "MODE002")}


def test_invalid_configuration_is_one_line_exit_2(tmp_path, capsys):
    root = _project(tmp_path, '[tool.parity.lint]\nignore = ["MODE7"]\n')
    assert main(["lint", str(root)]) == 2
    err = capsys.readouterr().err
    assert "unknown rule code(s): MODE7" in err and "Traceback" not in err
    (root / "pyproject.toml").write_text("[tool.parity.lint\n")
    assert main(["lint", str(root)]) == 2
    assert "cannot read [tool.parity.lint]" in capsys.readouterr().err
    (root / "pyproject.toml").write_text('[tool.parity.lint]\nexlude = ["x"]\n')
    assert main(["lint", str(root)]) == 2
    assert "unknown key(s) in [tool.parity.lint]: exlude" in capsys.readouterr().err
