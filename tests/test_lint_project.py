"""Whole-project analysis: imports between the files given are followed, nothing else is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from parity.lint import _files, lint_file, lint_paths

CORPUS = Path(__file__).parent / "lint_corpus"

MODEL = """\
import torch


class Trainer:
    def __init__(self, net):
        self.net = net
        self.opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(self, x, y):
        self.opt.zero_grad()
        torch.nn.functional.mse_loss(self.net(x), y).backward()
        self.opt.step()
"""
HELPERS = """\
def set_eval(models):
    for m in models:
        m.eval()
"""
MAIN = """\
{imports}

net = Net()
trainer = {make}(net)
net.train()
for epoch in range(5):
    for x, y in loader:
        trainer.step(x, y)
    {call}([net])
"""


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("imports", "make", "call"),
    [
        ("from pkg.model import Trainer\nfrom pkg.helpers import set_eval", "Trainer", "set_eval"),
        ("from pkg.model import Trainer as T\nfrom pkg.helpers import set_eval as ev", "T", "ev"),
        (
            "import pkg.model as model_module\nimport pkg.helpers as helpers",
            "model_module.Trainer",
            "helpers.set_eval",
        ),
        ("from pkg import model, helpers", "model.Trainer", "helpers.set_eval"),
    ],
    ids=["from-import", "aliases", "import-as", "from-package-import-module"],
)
def test_absolute_imports_and_aliases_are_followed(tmp_path, imports, make, call):
    write_tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/model.py": MODEL,
            "pkg/helpers.py": HELPERS,
            "main.py": MAIN.format(imports=imports, make=make, call=call),
        },
    )
    findings = lint_paths([tmp_path])
    call_line = (tmp_path / "main.py").read_text().splitlines().index(f"    {call}([net])") + 1
    assert [(Path(f.path).name, f.line, f.code) for f in findings] == [("main.py", call_line, "MODE001")]
    message = findings[0].message
    assert "helpers.py:3 in set_eval()" in message  # the eval site, in the other file
    assert f"model.py:11 in trainer.step() at line {call_line - 1}" in message  # the step, in the loop
    assert lint_file(tmp_path / "main.py") == []  # one file alone: its imports stay opaque


def test_relative_imports_inside_a_package(tmp_path):
    engine = (
        "from . import helpers\nfrom .model import Trainer\n\n\n"
        "def fit(net, loader):\n    trainer = Trainer(net)\n    net.train()\n"
        "    for epoch in range(5):\n        for x, y in loader:\n            trainer.step(x, y)\n"
        "        helpers.set_eval([net])\n"
    )
    write_tree(
        tmp_path,
        {"pkg/__init__.py": "", "pkg/model.py": MODEL, "pkg/helpers.py": HELPERS, "pkg/engine.py": engine},
    )
    findings = lint_paths([tmp_path])
    assert [(Path(f.path).name, f.line, f.code) for f in findings] == [("engine.py", 11, "MODE001")]


def test_the_fix_in_the_other_file_is_seen(tmp_path):
    restoring = HELPERS + "\n\ndef set_train(models):\n    for m in models:\n        m.train()\n"
    main = MAIN.format(
        imports="from pkg.model import Trainer\nfrom pkg.helpers import set_eval, set_train",
        make="Trainer",
        call="set_eval",
    )
    main = main.replace("    for x, y in loader:", "    set_train([net])\n    for x, y in loader:")
    write_tree(
        tmp_path, {"pkg/__init__.py": "", "pkg/model.py": MODEL, "pkg/helpers.py": restoring, "main.py": main}
    )
    assert lint_paths([tmp_path]) == []


HELPERS_FIT = """\
import torch


def evaluate(model):
    with torch.no_grad():
        return model(torch.ones(2))


def fit(model, opt, data):
    model.train()
    for x in data:
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        evaluate(model)
"""


def test_an_imported_function_is_analysed_in_its_own_module_not_the_importers(tmp_path):
    # train.py imports fit() and has an evaluate() of its own that sets eval mode; fit() calls
    # helpers.evaluate, which does not. fit() is checked as an entry point of helpers.py only:
    # entered from train.py, its `evaluate` was once looked up in train.py (a false alarm).
    train = "from helpers import fit\n\n\ndef evaluate(model):\n    model.eval()\n"
    write_tree(tmp_path, {"pyproject.toml": "", "helpers.py": HELPERS_FIT, "train.py": train})
    assert lint_paths([tmp_path]) == []
    assert lint_paths([tmp_path / "train.py"]) == []
    leaking = HELPERS_FIT.replace("    with torch.no_grad():\n        return", "    model.eval()\n    return")
    write_tree(tmp_path, {"helpers.py": leaking})
    findings = lint_paths([tmp_path])
    assert [(Path(f.path).name, f.line, f.code) for f in findings] == [("helpers.py", 5, "MODE001")]


def test_files_outside_the_given_tree_are_never_read(tmp_path, monkeypatch):
    outside = tmp_path / "outside"
    inside = tmp_path / "inside"
    write_tree(outside, {"pkg/__init__.py": "", "pkg/model.py": MODEL, "pkg/helpers.py": HELPERS})
    main = MAIN.format(
        imports="from pkg.model import Trainer\nfrom pkg.helpers import set_eval",
        make="Trainer",
        call="set_eval",
    )
    write_tree(inside, {"main.py": main})
    monkeypatch.syspath_prepend(str(outside))  # even where Python itself would find the module
    read: list[str] = []
    real_read = _files.read_source

    def recording_read(path):
        read.append(str(path))
        return real_read(path)

    monkeypatch.setattr(_files, "read_source", recording_read)
    assert lint_paths([inside]) == []
    assert read and all(Path(p).is_relative_to(inside) for p in read), read


def test_import_cycles_terminate(tmp_path):
    write_tree(
        tmp_path,
        {
            "a.py": "from b import g\n\ndef f(m):\n    g(m)\n",
            "b.py": "from a import f\n\ndef g(m):\n    f(m)\n    m.eval()\n",
        },
    )
    assert lint_paths([tmp_path]) == []


def test_corpus_project_cases_need_the_project():
    """The bug_project_* corpus files are only found when their helper modules are followed."""
    for name in ("bug_project_vse_train.py", "bug_project_loss_helper.py"):
        assert lint_file(CORPUS / name) == [] or name == "bug_project_loss_helper.py"
    vse = [f for f in lint_paths([CORPUS]) if f.path.endswith("bug_project_vse_train.py")]
    assert len(vse) == 1 and "project_vse_model.py:40 in val_start()" in vse[0].message


def test_script_imports_resolve_next_to_the_script_first(tmp_path):
    """Two example folders each with solver.py: ``from solver import`` means the script's own."""
    solver_bug = "def train(model, loader, opt):\n    for x, y in loader:\n        opt.zero_grad()\n"
    solver_bug += (
        "        loss(model(x), y).backward()\n        opt.step()\n\n\ndef test(model):\n    model.eval()\n"
    )
    solver_ok = solver_bug.replace("    for x, y in loader:", "    model.train()\n    for x, y in loader:")
    main = (
        "import torch\nfrom solver import train, test\n\nmodel = Net()\n"
        "opt = torch.optim.Adam(model.parameters())\nfor epoch in range(3):\n"
        "    train(model, loader, opt)\n    test(model)\n"
    )
    write_tree(
        tmp_path,
        {
            "a_buggy/solver.py": solver_bug,
            "a_buggy/main.py": main,
            "b_fixed/solver.py": solver_ok,
            "b_fixed/main.py": main,
        },
    )
    findings = lint_paths([tmp_path])
    assert [(Path(f.path).parent.name, Path(f.path).name, f.line) for f in findings] == [
        ("a_buggy", "main.py", 8)
    ]


def test_a_checker_bug_is_mode009_not_a_crash(monkeypatch):
    from parity.lint import _analyzer, lint_source

    def broken(self):
        raise KeyError("boom")

    monkeypatch.setattr(_analyzer.ModuleAnalyzer, "analyse", broken)
    (finding,) = lint_source("x = 1\n", "f.py")
    assert finding.code == "MODE009" and "internal error KeyError" in finding.message
