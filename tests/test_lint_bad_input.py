"""``parity lint`` on bad input: one bad file never aborts the run, hides other files'
findings, or is reported as clean; ``-`` reads standard input."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
from test_lint import SEED  # the seed's buggy loop, one copy for both lint test files

from parity.cli import main
from parity.lint import lint_file, lint_source

ROOT = Path(__file__).resolve().parent.parent
#: parses (1,000 terms), but interpreting it needs more Python stack than the default limit
#: 1000 nested additions with a call at the bottom: the interpreter must evaluate every level
#: (an expression with no call or ``:=`` in it only reads, and is skipped)
DEEP_EXPRESSION = "x = f() + " + " + ".join(["a"] * 1000) + "\n"
#: the same depth with nothing to evaluate: analysed in full, no MODE009
DEEP_PURE_EXPRESSION = "x = " + " + ".join(["a"] * 1000) + "\n"
#: does not even parse: the parser's own recursion limit
TOO_DEEP_TO_PARSE = "x = " + " + ".join(["a"] * 6000) + "\n"


def codes_by_file(output: str) -> dict[str, list[str]]:
    """``{file name: [codes]}`` from text-format output."""
    out: dict[str, list[str]] = {}
    for line in output.splitlines():
        path, _, _, rest = line.split(":", 3)
        out.setdefault(Path(path).name, []).append(rest.split()[0])
    return out


def test_fifo_dangling_link_binary_and_deep_files_do_not_hide_findings(tmp_path):
    os.mkfifo(tmp_path / "a_fifo.py")  # opening it for reading would block forever
    (tmp_path / "b_dangling.py").symlink_to(tmp_path / "missing_target.py")
    (tmp_path / "c_binary.py").write_bytes(b"\x00\x01\xff\xfe binary \x00 junk")
    (tmp_path / "d_latin1.py").write_bytes(b"x = '\xe9\xe8'\n")  # not UTF-8, no coding cookie
    (tmp_path / "e_too_deep.py").write_text(TOO_DEEP_TO_PARSE)
    (tmp_path / "z_seed.py").write_text(SEED)
    run = subprocess.run(
        [sys.executable, "-m", "parity", "lint", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    found = codes_by_file(run.stdout)
    assert found == {
        "a_fifo.py": ["MODE000"],
        "b_dangling.py": ["MODE000"],
        "c_binary.py": ["MODE000"],
        "d_latin1.py": ["MODE000"],
        "e_too_deep.py": ["MODE000"],
        "z_seed.py": ["MODE001"],
    }
    assert "not a regular file" in run.stdout and "dangling symbolic link" in run.stdout
    assert "nested too deeply" in run.stdout


def test_unreadable_file_is_mode000_and_others_still_checked(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "a_locked.py"
    locked.write_text(SEED)
    (tmp_path / "b_seed.py").write_text(SEED)
    real_open = tokenize.open

    def refusing_open(path):  # root ignores chmod 000, so refuse the read the way the OS would
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path)

    monkeypatch.setattr(tokenize, "open", refusing_open)
    assert main(["lint", str(tmp_path)]) == 1
    found = codes_by_file(capsys.readouterr().out)
    assert found == {"a_locked.py": ["MODE000"], "b_seed.py": ["MODE001"]}


def test_dangling_link_given_by_name_is_mode000_not_a_usage_error(tmp_path, capsys):
    link = tmp_path / "gone.py"
    link.symlink_to(tmp_path / "nowhere.py")
    seed = tmp_path / "seed.py"
    seed.write_text(SEED)
    assert main(["lint", str(link), str(seed)]) == 1
    found = codes_by_file(capsys.readouterr().out)
    assert found == {"gone.py": ["MODE000"], "seed.py": ["MODE001"]}


@pytest.fixture
def default_recursion_limit():
    """The interpreter's default recursion limit, as in a fresh ``parity lint`` process (torch and
    jax, imported by other tests in the same process, raise it)."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(previous)


@pytest.mark.slow  # 3.8 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_recursion_in_the_analysis_is_mode009_never_clean(capsys, tmp_path, default_recursion_limit):
    findings = lint_source(DEEP_EXPRESSION + SEED, "deep.py")
    assert [f.code for f in findings][:1] == ["MODE009"]
    assert "nesting too deep" in findings[0].message
    # --select and # noqa cannot hide that a file was not fully checked
    assert [f.code for f in lint_source(DEEP_EXPRESSION, "deep.py", select=["MODE002"])] == ["MODE009"]
    path = tmp_path / "deep.py"
    path.write_text(DEEP_EXPRESSION.rstrip("\n") + "  # noqa\n")
    assert main(["lint", str(path)]) == 1
    assert "MODE009" in capsys.readouterr().out


def test_a_deep_expression_without_calls_is_skipped_not_cut_short(default_recursion_limit):
    assert lint_source(DEEP_PURE_EXPRESSION, "deep.py") == []


EVAL_IN_AN_F_STRING = """\
import torch

model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for epoch in range(3):
    model.train()
    for x, y in data:
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    print(f"epoch {epoch}: {model.eval() is None and epoch}")
    for x, y in data:
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
"""


def test_a_call_inside_an_operator_or_f_string_is_still_followed():
    """Only call-free sub-expressions are skipped: an eval() inside a comparison inside an
    f-string still leaves the model in eval mode for the second inner loop."""
    findings = lint_source(EVAL_IN_AN_F_STRING, "op.py")
    assert [(f.code, f.line) for f in findings] == [("MODE001", 11)]
    plain = EVAL_IN_AN_F_STRING.replace("{model.eval() is None and epoch}", "{epoch}")
    assert lint_source(plain, "op.py") == []


def test_statement_budget_is_mode009_never_clean():
    body = "".join(f"    x{i} = {i}\n" for i in range(21_000))  # over the 20,000 statements per entry
    findings = lint_source("def huge():\n" + body, "huge.py")
    assert [f.code for f in findings] == ["MODE009"]
    assert "statement budget" in findings[0].message


def test_deep_call_chain_is_mode009():
    chain = "".join(f"def f{i}(m):\n    f{i + 1}(m)\n" for i in range(20)) + "def f20(m):\n    m.eval()\n"
    findings = lint_source(chain + "f0(model)\n", "chain.py")
    assert [f.code for f in findings] == ["MODE009"]
    assert "call depth" in findings[0].message


def test_dash_reads_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(SEED))
    assert main(["lint", "-"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("<stdin>:7:5: MODE001 ")
    monkeypatch.setattr(sys, "stdin", io.StringIO("x = 1\n"))
    assert lint_file("-") == []


@pytest.mark.parametrize("source", ["", "\n\n", "# only a comment\n", "\ufeffx = 1\n"])
def test_trivial_sources_are_clean(source):
    assert lint_source(source) == []
