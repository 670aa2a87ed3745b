"""Bounds on whole-project analysis: call summaries and the cross-file statement budget.

The call graphs are generated: ``DEPTH`` modules, each with ``WIDTH`` functions that call every
function of the next module, so following every call path would interpret ``WIDTH ** DEPTH``
leaf bodies. The asserts are on the analysis's own work counters and on the findings, never on
wall time.
"""

from __future__ import annotations

from pathlib import Path

from parity.lint import _files, _inlining, lint_paths
from parity.lint._analyzer import ModuleAnalyzer
from parity.lint._project import ProjectIndex

DEPTH, WIDTH = 8, 4  # 4 ** 8 = 65,536 call paths

TRAIN = """\
import torch
from graph.level0 import f0
from helpers import evaluate

model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model.train()
for epoch in range(3):
    for x, y in loader:
        opt.zero_grad()
        f0(x)
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
    {evaluate}
"""
HELPERS = """\
def evaluate(net):
    net.eval()
"""


def write_graph(root: Path, body: str, evaluate: str = "evaluate(model)") -> None:
    """``graph/level{i}.py``: WIDTH functions ``f{j}(x)``; each runs ``body`` and calls all of
    level i+1. ``train.py`` calls the graph at every step and ``evaluate`` after every epoch."""
    (root / "graph").mkdir()
    (root / "graph" / "__init__.py").write_text("")
    for level in range(DEPTH):
        names = [f"f{j}" for j in range(WIDTH)]
        lines = [f"from graph.level{level + 1} import {', '.join(names)}"] if level + 1 < DEPTH else []
        for name in names:
            lines += [f"def {name}(x):", f"    {body}"]
            if level + 1 < DEPTH:
                lines += [f"    {callee}(x)" for callee in names]
            lines.append("    return x")
        (root / "graph" / f"level{level}.py").write_text("\n".join(lines) + "\n")
    (root / "train.py").write_text(TRAIN.format(evaluate=evaluate))
    (root / "helpers.py").write_text(HELPERS)


def analyse(root: Path, name: str) -> ModuleAnalyzer:
    """The analyzer of ``root/name`` after its analysis, with ``root`` as the project."""
    entries = _files._files_with_roots([root])
    project = ProjectIndex(entries, _files.load_tree)
    path = str(root / name)
    analyzer = ModuleAnalyzer(project.tree(path), path, project)
    analyzer.analyse()
    return analyzer


def test_neutral_calls_are_summarised_not_re_run(tmp_path):
    write_graph(tmp_path, "y = x")
    analyzer = analyse(tmp_path, "train.py")
    assert analyzer.summaries_used > 0
    assert analyzer.total_steps < 5_000  # each (function, argument, state) once, not 65,536 paths
    assert not analyzer.incomplete
    findings = [(Path(f.path).name, f.line, f.code) for f in lint_paths([tmp_path])]
    assert findings == [("train.py", 15, "MODE001")]  # at the call in the loop that leads to the eval


def test_the_cross_file_budget_cuts_to_the_single_file_answer_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(_inlining, "CROSS_FILE_BUDGET", 2_000)
    write_graph(tmp_path, "x.weight = x", evaluate="model.eval()")  # attribute stores: no summaries
    analyzer = analyse(tmp_path, "train.py")
    assert analyzer.incomplete.get("cross-file budget", 0) > 0
    # The budget is checked when a call is entered, so the calls already running may finish.
    assert analyzer.foreign_steps < 2_000 + 200
    findings = sorted((Path(f.path).name, f.line, f.code) for f in lint_paths([tmp_path]))
    # The eval in the checked file is still found; MODE009 says that calls were cut.
    assert findings == [("train.py", 1, "MODE009"), ("train.py", 15, "MODE001")]
