"""Tests of ``parity lint`` (the parity/lint package): the corpus, the CLI, and the anchors' weakness.

The corpus in ``tests/lint_corpus/`` holds small PyTorch training scripts that are parsed,
never executed. ``bug_*.py`` files mark every expected finding with a trailing
``# expect: MODE00N`` comment; ``ok_*.py`` files must be clean.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import pytest

from parity import lint
from parity.cli import main
from parity.lint import Finding, lint_file, lint_paths, lint_source

CORPUS = Path(__file__).parent / "lint_corpus"
BUG_FILES = sorted(CORPUS.glob("bug_*.py"))
OK_FILES = sorted(CORPUS.glob("ok_*.py"))
LINE_RE = re.compile(r"^(?P<path>.+):(?P<line>\d+):(?P<col>\d+): (?P<code>MODE\d{3}) (?P<msg>\S.*)$")
EXPECT_RE = re.compile(r"#\s*expect:\s*(?P<codes>MODE\d{3}(?:\s*,\s*MODE\d{3})*)")

SEED = """\
import torch

model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

def test():
    model.eval()
    with torch.no_grad():
        return model(x_test)

model.train()
for epoch in range(10):
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    test()
"""


def expected(path: Path) -> set[tuple[int, str]]:
    """(line, code) pairs marked with ``# expect:`` comments."""
    out = set()
    for lineno, text in enumerate(path.read_text().splitlines(), start=1):
        m = EXPECT_RE.search(text)
        if m:
            out.update((lineno, c.strip()) for c in m.group("codes").split(","))
    return out


@functools.cache
def _corpus_as_project() -> dict[str, list[Finding]]:
    """Findings of one whole-project run over the corpus (bug_project_* files import helpers)."""
    by_file: dict[str, list[Finding]] = {}
    for finding in lint_paths([CORPUS]):
        by_file.setdefault(Path(finding.path).name, []).append(finding)
    return by_file


def found(path: Path) -> set[tuple[int, str]]:
    return {(f.line, f.code) for f in _corpus_as_project().get(path.name, [])}


# --------------------------------------------------------------------------- corpus


def test_corpus_is_large_and_annotated():
    assert len(BUG_FILES) + len(OK_FILES) >= 30
    assert len(BUG_FILES) >= 15 and len(OK_FILES) >= 15
    for path in BUG_FILES:
        assert expected(path), f"{path.name} has no '# expect:' marker"
    for path in OK_FILES:
        assert not expected(path), f"{path.name} is ok_* but has an '# expect:' marker"
    for path in BUG_FILES + OK_FILES:
        ast.parse(path.read_text())  # every corpus file is valid Python


@pytest.mark.parametrize("path", BUG_FILES, ids=lambda p: p.name)
def test_bug_file_flagged_at_expected_lines(path):
    assert found(path) == expected(path)


@pytest.mark.parametrize("path", OK_FILES, ids=lambda p: p.name)
def test_ok_file_is_clean(path):
    assert lint_file(path) == []
    assert found(path) == set()  # also clean when its imports are followed


def _precision_recall(checker) -> tuple[float, float, int, int, int]:
    tp = fp = fn = 0
    for path in BUG_FILES + OK_FILES:
        exp, got = expected(path), checker(path)
        tp += len(exp & got)
        fp += len(got - exp)
        fn += len(exp - got)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall, tp, fp, fn


def test_precision_and_recall_on_corpus():
    precision, recall, tp, fp, fn = _precision_recall(found)
    print(
        f"\nparity lint on {len(BUG_FILES) + len(OK_FILES)} corpus files "
        f"({len(BUG_FILES)} bug, {len(OK_FILES)} ok): precision={precision:.3f} recall={recall:.3f} "
        f"(tp={tp} fp={fp} fn={fn})"
    )
    assert precision == 1.0
    assert recall == 1.0


def test_corpus_findings_name_model_site_and_loop():
    path = CORPUS / "bug_seed_classic.py"
    (finding,) = lint_file(path)
    assert finding.code == "MODE001"
    assert "`model`" in finding.message
    assert f"{path}:15" in finding.message  # the eval call site
    assert "training loop at line 24" in finding.message
    assert "test() at line 30" in finding.message  # the call into the helper


# Determinism (two processes, two file orders) is tested in test_lint_constructs.py.  Speed is
# measured by scripts/lint_realworld.py and reported in docs/LINT.md, not asserted here: a
# wall-clock limit fails on a loaded box without any fault in the code.


# --------------------------------------------------------------------------- library API


def test_lint_source_seed_snippet():
    findings = lint_source(SEED, "seed.py")
    assert [(f.path, f.line, f.col, f.code) for f in findings] == [("seed.py", 7, 5, "MODE001")]
    assert findings[0].format().startswith("seed.py:7:5: MODE001 ")


RETURN = "        return model(x_test)\n"


@pytest.mark.parametrize(
    "edits",
    [
        # fix 1: train() as the first line of each epoch
        [("for epoch in range(10):\n", "for epoch in range(10):\n    model.train()\n")],
        # fix 2: test() restores train mode before returning
        [(RETURN, "        out = model(x_test)\n    model.train()\n    return out\n")],
        # remember and restore the previous mode
        [
            ("    model.eval()\n", "    was_training = model.training\n    model.eval()\n"),
            (RETURN, "        out = model(x_test)\n    model.train(was_training)\n    return out\n"),
        ],
        # eval only after the loop
        [("    test()\n", ""), ("optimizer.step()\n", "optimizer.step()\ntest()\n")],
    ],
    ids=["train-each-epoch", "restore-in-test", "was-training", "eval-after-loop"],
)
def test_lint_source_fixes(edits):
    source = SEED
    for old, new in edits:
        assert old in source
        source = source.replace(old, new)
    assert lint_source(source) == []


def test_noqa_and_select():
    suppressed = SEED.replace("    model.eval()\n", "    model.eval()  # noqa: MODE001\n")
    assert lint_source(suppressed) == []
    assert lint_source(SEED.replace("    model.eval()\n", "    model.eval()  # noqa\n")) == []
    assert lint_source(SEED.replace("    model.eval()\n", "    model.eval()  # noqa: MODE002\n"))
    assert lint_source(SEED, select=["MODE002"]) == []
    assert lint_source(SEED, select=["MODE"])


def test_syntax_error_is_mode000():
    (finding,) = lint_source("def broken(:\n    pass\n", "bad.py")
    assert finding.code == "MODE000" and finding.path == "bad.py" and finding.line == 1
    assert finding.message.startswith("syntax error")


def test_deep_recursion_and_loops_terminate():
    source = (
        "def f(m, n):\n    for i in range(n):\n        for j in range(n):\n            g(m, n)\n"
        "def g(m, n):\n    m.eval()\n    f(m, n - 1)\n"
    )
    assert lint_source(source) == []


def test_finding_is_a_sortable_dataclass():
    a = Finding("a.py", 3, 1, "MODE001", "x")
    b = Finding("a.py", 10, 1, "MODE001", "x")
    assert sorted([b, a]) == [a, b]


def test_lint_module_uses_only_the_standard_library():
    modules = set()
    for source in Path(lint.__file__).parent.glob("*.py"):  # every module of the lint package
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules.update(a.name.split(".")[0] for a in node.names)
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and node.module not in ("parity.lint", "parity.errors")  # errors: framework-free
                and not node.module.startswith("parity.lint.")
            ):
                modules.add(node.module.split(".")[0])
    assert modules - {"__future__"} <= set(sys.stdlib_module_names), modules


# --------------------------------------------------------------------------- CLI


def test_cli_clean_file_exits_0(capsys):
    assert main(["lint", str(CORPUS / "ok_train_each_epoch.py")]) == 0
    assert capsys.readouterr().out == ""


def test_cli_findings_exit_1_and_format(capsys):
    path = CORPUS / "bug_seed_test_helper.py"
    assert main(["lint", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    m = LINE_RE.match(lines[0])
    assert m, lines[0]
    assert (m["path"], int(m["line"]), m["code"]) == (str(path), 37, "MODE001")


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    assert main(["lint"]) == 2
    assert main(["lint", str(tmp_path / "missing.py")]) == 2
    assert main(["lint", "--select", "XYZ1", str(CORPUS)]) == 2
    err = capsys.readouterr().err
    assert "no paths" in err and "missing.py" in err and "XYZ1" in err


def test_cli_unparsable_file_reported_and_others_checked(tmp_path, capsys):
    (tmp_path / "a_broken.py").write_text("for epoch in range(3)\n    pass\n")
    (tmp_path / "b_seed.py").write_text(SEED)
    (tmp_path / "c_clean.py").write_text("x = 1\n")
    assert main(["lint", str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [LINE_RE.match(line)["code"] for line in lines] == ["MODE000", "MODE001"]
    assert lines[0].startswith(f"{tmp_path / 'a_broken.py'}:1:")
    assert lines[1].startswith(f"{tmp_path / 'b_seed.py'}:7:5: MODE001 ")


def test_cli_walks_directories_recursively_in_sorted_order(tmp_path, capsys):
    for rel in ["z.py", "sub/b.py", "sub/a.py", "a/deep/c.py", ".hidden/h.py", "notes.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(SEED)
    assert main(["lint", str(tmp_path)]) == 1
    paths = [LINE_RE.match(line)["path"] for line in capsys.readouterr().out.splitlines()]
    assert paths == [str(tmp_path / r) for r in ["a/deep/c.py", "sub/a.py", "sub/b.py", "z.py"]]


def test_cli_whole_corpus_and_select(capsys):
    assert main(["lint", str(CORPUS)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert all(LINE_RE.match(line) for line in lines)
    assert {Path(LINE_RE.match(line)["path"]).name for line in lines} == {p.name for p in BUG_FILES}
    assert main(["lint", "--select", "MODE002", str(CORPUS)]) == 1
    codes = {LINE_RE.match(line)["code"] for line in capsys.readouterr().out.splitlines()}
    assert codes == {"MODE002"}
    assert main(["lint", "--list-rules"]) == 0
    assert "MODE001" in capsys.readouterr().out


# --------------------------------------------------------------------------- anchors


def _receiver(call: ast.Call) -> str:
    return ast.unparse(call.func.value) if isinstance(call.func, ast.Attribute) else ""


def _mode_calls(node: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == name
    ]


def naive_direct_loop_checker(path: Path) -> set[tuple[int, str]]:
    """dslinter-like: an .eval() written directly in a loop body without a .train() there."""
    out = set()
    for loop in ast.walk(ast.parse(path.read_text())):
        if isinstance(loop, (ast.For, ast.While)):
            body = ast.Module(body=loop.body, type_ignores=[])
            if not _mode_calls(body, "train"):
                out.update((c.lineno, "MODE001") for c in _mode_calls(body, "eval"))
    return out


def naive_line_order_checker(path: Path) -> set[tuple[int, str]]:
    """SpecDetect4AI-like: an .eval() with no later .train() on the same receiver, in line order."""
    tree = ast.parse(path.read_text())
    trains = _mode_calls(tree, "train")
    out = set()
    for call in _mode_calls(tree, "eval"):
        if not any(_receiver(t) == _receiver(call) and t.lineno > call.lineno for t in trains):
            out.add((call.lineno, "MODE001"))
    return out


def test_anchor_direct_loop_rule_misses_the_seed_helper():
    path = CORPUS / "bug_seed_test_helper.py"
    assert naive_direct_loop_checker(path) == set()  # the eval is in test(), not in the loop body
    assert found(path) == expected(path) == {(37, "MODE001")}


def test_anchor_line_order_rule_flags_correct_code():
    flagged = [p.name for p in OK_FILES if naive_line_order_checker(p)]
    for name in ["ok_train_in_train_helper.py", "ok_trainer_class.py", "ok_kfold_fresh_model.py"]:
        assert name in flagged
        assert lint_file(CORPUS / name) == []


def test_anchor_scores_on_corpus():
    ours = _precision_recall(found)
    direct = _precision_recall(naive_direct_loop_checker)
    order = _precision_recall(naive_line_order_checker)
    print(
        f"\nMODE001/MODE002 corpus scores: parity lint P={ours[0]:.2f} R={ours[1]:.2f}; "
        f"direct-in-loop rule P={direct[0]:.2f} R={direct[1]:.2f}; "
        f"line-order rule P={order[0]:.2f} R={order[1]:.2f}"
    )
    assert direct[1] < ours[1] and order[0] < ours[0]
