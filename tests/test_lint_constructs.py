"""Issue 22's constructs that are about the project, not one file: the project root, duplicate
module paths, the lines a message names; and issue 21's lint items (missing paths, SARIF uris,
determinism across processes and file orders).  Sources are written here, in our own code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from parity.cli import main
from parity.lint import lint_paths, lint_source, project_roots
from parity.lint._formats import artifact_uri

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "lint_corpus"

EVALUATOR = """\
import torch


def evaluate(model, loader):
    model.eval()
    with torch.no_grad():
        return sum(model(x).sum() for x in loader)
"""
EVALUATOR_RESTORING = EVALUATOR.replace(
    "        return sum(model(x).sum() for x in loader)\n",
    "        out = sum(model(x).sum() for x in loader)\n    model.train()\n    return out\n",
)
TRAIN = """\
import torch

from common.evaluators.x import evaluate


def fit(model, loader, val_loader):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for epoch in range(3):
        for x in loader:
            optimizer.zero_grad()
            model(x).sum().backward()
            optimizer.step()
        evaluate(model, val_loader)
"""


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_file_given_alone_follows_imports_from_its_project_root(tmp_path, monkeypatch, capsys):
    _write(tmp_path, {"pyproject.toml": "", "common/evaluators/x.py": EVALUATOR, "scripts/train.py": TRAIN})
    monkeypatch.chdir(tmp_path)
    findings = lint_paths(["scripts/train.py"])
    assert [(f.path, f.line, f.code) for f in findings] == [("scripts/train.py", 14, "MODE001")]
    assert "common/evaluators/x.py:5" in findings[0].message
    assert [root.describe() for root in project_roots(["scripts/train.py"])] == [
        f"{tmp_path} (pyproject.toml)"
    ]
    assert main(["lint", "scripts/train.py"]) == 1
    assert f"project root {tmp_path} (pyproject.toml)" in capsys.readouterr().err


def test_without_a_root_marker_only_the_files_given_are_read(tmp_path, monkeypatch):
    _write(tmp_path, {"common/evaluators/x.py": EVALUATOR, "scripts/train.py": TRAIN})
    monkeypatch.chdir(tmp_path)
    assert lint_paths(["scripts/train.py"]) == []
    assert project_roots(["scripts/train.py"]) == []


def test_duplicate_module_paths_resolve_from_the_importers_own_package_root(tmp_path):
    # A buggy and a fixed copy of one module path side by side: each trainer imports its own.
    _write(
        tmp_path,
        {
            "v1/common/evaluators/x.py": EVALUATOR,
            "v1/scripts/train.py": TRAIN,
            "v2/common/evaluators/x.py": EVALUATOR_RESTORING,
            "v2/scripts/train.py": TRAIN,
        },
    )
    findings = lint_paths([tmp_path])
    assert [(Path(f.path).relative_to(tmp_path).as_posix(), f.line) for f in findings] == [
        ("v1/scripts/train.py", 14)
    ]
    assert "ambiguous" not in findings[0].message


def test_an_import_that_stays_ambiguous_is_analysed_per_candidate_and_reported_once(tmp_path):
    _write(
        tmp_path,
        {
            "a_fixed/common/evaluators/x.py": EVALUATOR_RESTORING,
            "b_buggy/common/evaluators/x.py": EVALUATOR,
            "run/train.py": TRAIN,
        },
    )
    findings = lint_paths([tmp_path])
    assert [(Path(f.path).name, f.line, f.code) for f in findings] == [("train.py", 14, "MODE001")]
    message = findings[0].message
    assert "is ambiguous" in message and "a_fixed" in message and "b_buggy" in message


def test_the_message_names_the_training_steps_forward_and_the_last_train_call():
    source = """\
import torch


class Trainer:
    def __init__(self, model):
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def validate(self, loader):
        self.model.eval()
        return [self.model(x) for x in loader]

    def fit(self, loader, val_loader):
        self.model.train()
        for epoch in range(3):
            for x in loader:
                loss = self.model(x).sum()
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.validate(val_loader)
"""
    (finding,) = lint_source(source, "trainer.py")
    assert (finding.line, finding.code) == (10, "MODE001")
    # the forward of the training step (line 17), not the one inside validate() (line 11)
    assert "forward pass at line 17" in finding.message
    assert "training step at line 19" in finding.message
    assert "last set to train at line 14" in finding.message


def test_missing_path_keeps_the_other_findings_in_every_format(tmp_path, capsys):
    bug, missing = str(CORPUS / "bug_seed_classic.py"), str(tmp_path / "missing.py")
    assert main(["lint", bug, missing, str(CORPUS / "bug_two_models.py")]) == 2
    captured = capsys.readouterr()
    assert f"{bug}:" in captured.out and "bug_two_models.py" in captured.out
    assert f"{missing}:1:1: MODE000" in captured.out
    assert f"no such file or directory: {missing}" in captured.err
    assert main(["lint", "--format", "sarif", bug, missing]) == 2
    results = json.loads(capsys.readouterr().out)["runs"][0]["results"]
    assert {result["ruleId"] for result in results} == {"MODE000", "MODE001"}


def test_sarif_uris_are_percent_encoded():
    assert artifact_uri("my dir/a%b#1.py") == "my%20dir/a%25b%231.py"
    assert artifact_uri("/tmp/x y.py") == "file:///tmp/x%20y.py"


def test_corpus_lint_is_deterministic_across_processes_and_file_orders():
    files = sorted(str(path) for path in CORPUS.glob("*.py"))
    forward = lint_paths(files)
    backward = lint_paths(list(reversed(files)))
    assert sorted(forward) == sorted(backward)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-m", "parity.cli", "lint", "--format", "json", str(CORPUS)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    ).stdout
    rows = json.loads(out)
    assert [(r["path"], r["line"], r["col"], r["code"], r["message"]) for r in rows] == [
        (f.path, f.line, f.col, f.code, f.message) for f in lint_paths([CORPUS])
    ]


def test_an_installed_package_has_no_project_root_above_it(tmp_path):
    # An environment inside a git checkout (pyenv is one): its site-packages must not make the
    # checkout, with the whole standard library in it, the project of an installed package.
    _write(
        tmp_path,
        {".git/HEAD": "", "lib/python3.11/typing.py": "", "lib/python3.11/site-packages/pkg/a.py": ""},
    )
    assert project_roots([tmp_path / "lib/python3.11/site-packages/pkg/a.py"]) == []
    assert [root.marker for root in project_roots([tmp_path / "lib/python3.11/typing.py"])] == [".git"]


SET_MODE_SKIPPING_NONE = """\
import torch


def set_mode(mode, models):
    for m in models:
        if m is None:
            continue
        if mode == "train":
            m.train()
        if mode == "eval":
            m.eval()


def check_accuracy(generator, engine, loader):
    set_mode("eval", [generator, engine])
    for x in loader:
        engine(generator(x))
    set_mode("train", [generator, engine])


def train_loop(loader, use_generator):
    generator, optimizer = None, None
    if use_generator:
        generator = torch.nn.Linear(2, 2)
        optimizer = torch.optim.Adam(generator.parameters())
    engine = torch.nn.Linear(2, 2)
    set_mode("train", [generator, engine])
    for x in loader:
        optimizer.zero_grad()
        engine(generator(x)).sum().backward()
        optimizer.step()
        check_accuracy(generator, engine, loader)
"""


def test_a_mode_helper_that_skips_none_members_restores_train_mode():
    """clevr-iep's shape (issue 22, construct 3): ``set_mode(mode, models)`` skips ``None``
    entries with ``continue``; over a list of known models that branch never runs, so the
    closing ``set_mode("train", ...)`` is a restore (it was a false alarm)."""
    assert lint_source(SET_MODE_SKIPPING_NONE, "clevr.py") == []
    leaking = SET_MODE_SKIPPING_NONE.replace(
        '        engine(generator(x))\n    set_mode("train", [generator, engine])\n',
        "        engine(generator(x))\n",
    )
    assert leaking != SET_MODE_SKIPPING_NONE
    assert [f.code for f in lint_source(leaking, "clevr.py")] == ["MODE001"]
    # a ``None`` literal in the list may be the skipped member: no pruning, the old mode survives
    with_none = SET_MODE_SKIPPING_NONE.replace(
        '    set_mode("train", [generator, engine])\n\n\ndef',
        '    set_mode("train", [generator, engine, None])\n\n\ndef',
    )
    assert with_none != SET_MODE_SKIPPING_NONE
    assert [f.code for f in lint_source(with_none, "clevr.py")] == ["MODE001"]
