"""The speed layer of ``parity lint`` changes no finding: one syntax tree per file and run, the
MODE003 scan over statements only, the training-step walk only where MODE002 needs it."""

from __future__ import annotations

import ast
import gc
import textwrap
import tokenize
from pathlib import Path

from parity.lint import lint_paths
from parity.lint._analyzer import ModuleAnalyzer
from parity.lint._findings import Finding
from parity.lint._noqa import without_suppressed
from parity.lint._project import ProjectIndex
from parity.lint._rules import functional_mode_findings


def _trainer(imports: str, after_step: str) -> str:
    """A training script (``model`` trained at lines 6-10) that runs ``after_step`` at line 11."""
    return textwrap.dedent(
        f"""\
        import torch
        {imports}

        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        for epoch in range(3):
            opt.zero_grad()
            model(torch.ones(2)).sum().backward()
            opt.step()
            {after_step}
        """
    )


def test_a_checked_file_that_another_file_imports_is_parsed_once(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "helpers.py").write_text("def evaluate(model):\n    model.eval()\n")
    (tmp_path / "train.py").write_text(_trainer("from helpers import evaluate", "evaluate(model)"))
    parsed: list[str] = []
    real_parse = ast.parse

    def counting_parse(source, filename="<unknown>", *args, **kwargs):
        parsed.append(str(filename))
        return real_parse(source, filename, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", counting_parse)
    # train.py is checked first and imports helpers.py, which is checked next: one parse each
    findings = lint_paths([tmp_path / "train.py", tmp_path / "helpers.py"])
    assert [f.code for f in findings] == ["MODE001"]
    assert sorted(name.rsplit("/", 1)[-1] for name in parsed) == ["helpers.py", "train.py"]


def test_mode003_finds_imports_and_classes_nested_in_any_block():
    source = textwrap.dedent(
        """\
        import torch.nn as nn
        try:
            import torch.nn.functional as G
        except ImportError:
            from torch.nn.functional import dropout as drop
        if True:
            class Head(nn.Module):
                def forward(self, x):
                    return G.dropout(x, 0.5)
        with open("f") as handle:
            for _ in range(1):
                class Tail(nn.Module):
                    def forward(self, x):
                        return drop(x, 0.5)
        match 1:
            case 1:
                class Mid(nn.Module):
                    def forward(self, x):
                        return G.dropout(x, 0.5, training=self.training)
        """
    )
    findings = functional_mode_findings(ast.parse(source), "m.py")
    assert [(f.line, f.code) for f in findings] == [(9, "MODE003"), (14, "MODE003")]


def test_the_training_step_walk_runs_only_for_a_mode002_candidate():
    quiet = ast.parse("import torch\nmodel = torch.nn.Linear(2, 2)\nmodel(torch.ones(2))\n")
    analyzer = ModuleAnalyzer(quiet, "quiet.py")
    assert analyzer.analyse() == [] and "has_training" not in vars(analyzer)
    loaded = ast.parse(
        "import torch\nmodel = torch.nn.Linear(2, 2)\n"
        "model.load_state_dict(torch.load('w.pt'))\nmodel(torch.ones(2))\n"
    )
    analyzer = ModuleAnalyzer(loaded, "loaded.py")
    assert [f.code for f in analyzer.analyse()] == ["MODE002"] and vars(analyzer)["has_training"] is False


def test_a_file_without_noqa_or_with_only_mode009_is_not_tokenized(monkeypatch):
    def no_tokenize(*args, **kwargs):
        raise AssertionError("tokenized")

    mode001 = Finding("a.py", 2, 1, "MODE001", "m")
    mode009 = Finding("a.py", 1, 1, "MODE009", "analysis incomplete")
    monkeypatch.setattr(tokenize, "generate_tokens", no_tokenize)
    assert without_suppressed([mode001], "x = 1\nmodel.eval()\n") == [mode001]
    assert without_suppressed([mode009], "x = 1  # noqa\n") == [mode009]
    monkeypatch.undo()
    assert without_suppressed([mode001], "x = 1\nmodel.eval()  # NOQA: mode001\n") == []


def test_the_walk_up_for_an_import_is_shared_by_sibling_folders(tmp_path):
    files = [tmp_path / "pkg" / "util.py", tmp_path / "pkg" / "a" / "x.py", tmp_path / "pkg" / "b" / "y.py"]
    index = ProjectIndex([(file, tmp_path) for file in files], lambda path: None)
    util = str(files[0])
    assert index.resolve("util", str(files[1])) == util
    folder = str(tmp_path / "pkg")
    assert index._near[("util", folder)] == util  # the parent's answer, kept for the next importer
    index._near[("util", folder)] = "cached"  # a second importer below pkg/ reads it, no new walk
    assert index.resolve("util", str(files[2])) == "cached"
    assert index.resolve("nothing.here", str(files[2])) is None


def test_a_run_hands_the_collector_back_as_it_found_it(tmp_path):
    """The run turns automatic collections off and freezes what each file leaves alive; after
    it the collector is on (or off, as the caller had it) and nothing stays frozen."""
    (tmp_path / "train.py").write_text("import torch\nmodel = torch.nn.Linear(2, 2)\nmodel.eval()\n")
    (tmp_path / "evaluate.py").write_text("def evaluate(model):\n    model.eval()\n")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    for jobs in (1, 2):
        lint_paths([tmp_path], jobs=jobs)
        assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        lint_paths([tmp_path])
        assert not gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_an_import_is_resolved_once_per_run_not_once_per_file_that_reaches_it(tmp_path, monkeypatch):
    """Each file's analysis binds the imports of ``lib.py`` when it calls into it; the module
    search behind each imported name runs once for the run (the binding itself, per file)."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "util.py").write_text("def evaluate(model):\n    model.eval()\n")
    (tmp_path / "lib.py").write_text(
        "from util import evaluate\n\n\ndef check(model):\n    evaluate(model)\n"
    )
    for name in ("train_a.py", "train_b.py"):
        (tmp_path / name).write_text(_trainer("from lib import check", "check(model)"))
    searched: list[tuple[str, str]] = []
    real_plan = ProjectIndex._import_plan

    def counting_plan(self, stmt, alias, importer):
        searched.append((alias.name, Path(importer).name))
        return real_plan(self, stmt, alias, importer)

    monkeypatch.setattr(ProjectIndex, "_import_plan", counting_plan)
    findings = lint_paths([tmp_path], jobs=1)
    assert [(Path(f.path).name, f.line, f.code) for f in findings] == [
        ("train_a.py", 11, "MODE001"),
        ("train_b.py", 11, "MODE001"),
    ]
    assert sorted(set(searched)) == sorted(searched)  # each (name, importer) searched once
    assert ("evaluate", "lib.py") in searched
