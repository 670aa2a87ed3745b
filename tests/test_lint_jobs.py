"""``parity lint --jobs N``: forked workers give exactly the serial output, in the serial order;
a dead worker or Ctrl-C stops the run with one line and leaves no process behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from parity.cli import main
from parity.lint import lint_paths
from parity.lint._parallel import LintWorkerError, can_fork, run_checks

CORPUS = Path(__file__).parent / "lint_corpus"
needs_fork = pytest.mark.skipif(not can_fork(), reason="worker processes need the fork start method")

TRAIN = """\
import torch
from pkg.helpers import evaluate
from pkg.loops import fit

model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
model.train()
fit(model, opt, [torch.ones(2)] * {count})
for epoch in range({count}):
    opt.zero_grad()
    model(torch.ones(2)).sum().backward()
    opt.step()
    evaluate(model)
"""


def _project(root: Path, scripts: int) -> Path:
    """A project whose scripts reach an eval in two other modules (one inside a loop there)."""
    (root / "pyproject.toml").write_text("")
    (root / "pkg").mkdir()
    (root / "pkg" / "helpers.py").write_text("def evaluate(model):\n    model.eval()\n")
    (root / "pkg" / "loops.py").write_text(
        "def fit(model, opt, data):\n    for x in data:\n        model(x).sum().backward()\n"
        "        opt.step()\n        model.eval()\n"
    )
    for index in range(scripts):
        (root / f"train_{index}.py").write_text(TRAIN.format(count=index + 1))
    return root


@needs_fork
def test_two_jobs_give_the_serial_findings_on_a_project_with_cross_file_imports(tmp_path):
    root = _project(tmp_path, scripts=7)
    serial = lint_paths([root], jobs=1)
    assert [(Path(f.path).name, f.line, f.code) for f in serial] == [
        (f"train_{index}.py", line, "MODE001") for index in range(7) for line in (8, 13)
    ]
    assert lint_paths([root], jobs=2) == serial
    assert [f.message for f in lint_paths([root], jobs=3)] == [f.message for f in serial]


@needs_fork
def test_two_jobs_give_the_serial_json_on_the_corpus(capsys):
    assert main(["lint", "--format", "json", "--jobs", "1", str(CORPUS)]) == 1
    serial = capsys.readouterr().out
    assert main(["lint", "--format", "json", "--jobs", "2", str(CORPUS)]) == 1
    assert capsys.readouterr().out == serial and serial.count('"code"') > 40


def _slow_first(index: int) -> list[int]:
    time.sleep(0.2 if index < 2 else 0.0)  # the first files finish last
    return [index, index * index]


@needs_fork
def test_results_come_back_in_file_order_whichever_worker_finishes_first():
    done: list[int] = []
    results = run_checks(12, _slow_first, lambda: done.append(1), jobs=3)
    assert results == [[index, index * index] for index in range(12)]
    assert done == []  # after_each ran in the workers, not here
    assert multiprocessing.active_children() == []


def _dies_at_five(index: int) -> list[int]:
    if index == 5:
        os._exit(3)
    time.sleep(0.05)
    return [index]


@needs_fork
def test_a_worker_that_dies_is_one_error_and_no_process_is_left():
    with pytest.raises(LintWorkerError, match=r"^a worker process died \(exit code 3\)[^\n]*--jobs 1"):
        run_checks(40, _dies_at_five, lambda: None, jobs=2)
    assert multiprocessing.active_children() == []


def _interrupts_the_parent(index: int) -> list[int]:
    if index == 3:
        os.kill(os.getppid(), signal.SIGINT)
    time.sleep(0.5)
    return [index]


@needs_fork
def test_ctrl_c_stops_every_worker():
    with pytest.raises(KeyboardInterrupt):
        run_checks(20, _interrupts_the_parent, lambda: None, jobs=2)
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("jobs", ["0", "-1", "abc", "1.5"])
def test_a_bad_jobs_value_is_a_one_line_usage_error(jobs, capsys, tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    assert main(["lint", f"--jobs={jobs}", str(tmp_path / "a.py")]) == 2
    err = capsys.readouterr().err
    assert err == f"parity lint: --jobs must be a whole number of at least 1, not {jobs!r}\n"
