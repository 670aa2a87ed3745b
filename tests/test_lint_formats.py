"""``parity lint --format``, MODE003, ``# noqa``, the flake8 plugin and the pre-commit hook."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest

from parity.cli import main
from parity.lint import RULES, lint_file, lint_source, sarif_log
from parity.lint._flake8 import ModeChecker

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).parent / "lint_corpus"
SEED_BUG = CORPUS / "bug_seed_classic.py"
DROPOUT_BUG = CORPUS / "bug_mode003_functional_dropout.py"


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main(["lint", *args])
    return code, capsys.readouterr().out


# --------------------------------------------------------------------------- formats


def test_json_format_lists_every_finding(capsys):
    code, out = _run(capsys, "--format", "json", str(SEED_BUG), str(DROPOUT_BUG))
    assert code == 1
    rows = json.loads(out)
    expected = lint_file(SEED_BUG) + lint_file(DROPOUT_BUG)
    assert [(r["path"], r["line"], r["col"], r["code"]) for r in rows] == [
        (f.path, f.line, f.col, f.code) for f in expected
    ]
    assert all(set(r) == {"path", "line", "col", "code", "message"} for r in rows)


def test_json_format_clean_is_empty_list_exit_0(capsys):
    code, out = _run(capsys, "--format", "json", str(CORPUS / "ok_gan.py"))
    assert (code, json.loads(out)) == (0, [])


def _require(obj: dict, *keys: str) -> None:
    missing = [key for key in keys if key not in obj]
    assert not missing, f"missing required SARIF properties {missing} in {sorted(obj)}"


def test_sarif_has_the_required_fields_of_the_2_1_0_schema(capsys):
    code, out = _run(capsys, "--format", "sarif", str(SEED_BUG), str(DROPOUT_BUG))
    assert code == 1
    log = json.loads(out)
    # sarifLog: version (const "2.1.0") and runs are required
    _require(log, "version", "runs")
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (run,) = log["runs"]
    _require(run, "tool")  # run: tool is required
    _require(run["tool"], "driver")  # tool: driver is required
    driver = run["tool"]["driver"]
    _require(driver, "name")  # toolComponent: name is required
    for rule in driver["rules"]:
        _require(rule, "id")  # reportingDescriptor: id is required
    assert [rule["id"] for rule in driver["rules"]] == list(RULES)
    assert len(run["results"]) == len(lint_file(SEED_BUG)) + len(lint_file(DROPOUT_BUG))
    for result in run["results"]:
        _require(result, "message")  # result: message is required
        assert result["message"]["text"]  # message: text (or id) is required
        assert result["level"] in {"none", "note", "warning", "error"}
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        (location,) = result["locations"]
        physical = location["physicalLocation"]
        assert physical["artifactLocation"]["uri"]
        region = physical["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1  # minimum 1 in the schema


def test_sarif_of_no_findings_is_a_valid_empty_run():
    log = sarif_log([])
    assert log["version"] == "2.1.0" and log["runs"][0]["results"] == []


def test_github_format_is_one_workflow_command_per_finding(capsys):
    code, out = _run(capsys, "--format", "github", str(SEED_BUG))
    assert code == 1
    (line,) = out.splitlines()
    match = re.fullmatch(
        r"::warning file=(?P<file>[^,]+),line=(?P<line>\d+),col=(?P<col>\d+),title=MODE001::(?P<msg>.+)", line
    )
    assert match, line
    (finding,) = lint_file(SEED_BUG)
    assert (int(match["line"]), int(match["col"])) == (finding.line, finding.col)
    assert match["msg"].startswith("MODE001 ")


def test_github_format_escapes_newlines_and_marks_unchecked_files_as_errors(tmp_path, capsys):
    path = tmp_path / "bad, name.py"
    path.write_text("def broken(:\n")
    code, out = _run(capsys, "--format", "github", str(path))
    assert code == 1
    assert out.startswith("::error file=") and "%2C" in out.splitlines()[0]
    assert len(out.splitlines()) == 1


def test_unknown_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["lint", "--format", "xml", str(SEED_BUG)])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- MODE003 and noqa


def test_mode003_message_names_the_call_and_the_fix():
    findings = lint_file(DROPOUT_BUG)
    assert {f.code for f in findings} == {"MODE003"}
    first = findings[0]
    assert "F.dropout" in first.message and "training=self.training" in first.message


def test_mode003_only_inside_a_module_forward():
    outside = "import torch.nn.functional as F\ndef f(x):\n    return F.dropout(x, 0.5)\n"
    inside = "import torch.nn.functional as F\nclass M(nn.Module):\n    def forward(self, x):\n        return F.dropout(x, 0.5)\n"
    assert lint_source(outside) == []
    assert [(f.line, f.code) for f in lint_source(inside)] == [(4, "MODE003")]


def test_noqa_silences_each_rule_on_its_own_line():
    source = DROPOUT_BUG.read_text()
    silenced = source.replace(
        "x = F.dropout(x, 0.5)  # expect: MODE003", "x = F.dropout(x, 0.5)  # noqa: MODE003"
    )
    assert len(lint_source(silenced)) == len(lint_source(source)) - 1
    other_code = source.replace("# expect: MODE003", "# noqa: MODE001")
    assert len(lint_source(other_code)) == len(lint_source(source))
    assert lint_source(source, select=["MODE001"]) == []


# --------------------------------------------------------------------------- messages


def test_message_names_eval_site_helper_chain_and_the_step_in_the_training_loop():
    (finding,) = lint_file(SEED_BUG)
    assert f"{SEED_BUG}:15 in test()" in finding.message  # the eval site
    assert "reached via test() at line 30" in finding.message  # the helper chain
    assert "training loop at line 24" in finding.message
    assert "training step at line 28" in finding.message  # loss.backward(), not a forward pass


def test_message_names_the_step_inside_a_helper():
    source = (
        "model = Net()\nopt = torch.optim.SGD(model.parameters())\n"
        "def step(batch):\n    opt.zero_grad()\n    loss_fn(model(batch)).backward()\n    opt.step()\n"
        "def validate():\n    model.eval()\n"
        "model.train()\nfor epoch in range(3):\n    for batch in loader:\n        step(batch)\n    validate()\n"
    )
    (finding,) = lint_source(source)
    assert (finding.line, finding.code) == (8, "MODE001")
    assert "training step at line 5 in step() at line 12" in finding.message


# --------------------------------------------------------------------------- integrations


def test_flake8_plugin_reports_what_parity_lint_reports_without_flake8_installed():
    tree = ast.parse(SEED_BUG.read_text())
    results = list(ModeChecker(tree, str(SEED_BUG)).run())
    (finding,) = lint_file(SEED_BUG)
    assert results == [(finding.line, finding.col - 1, f"MODE001 {finding.message}", ModeChecker)]
    assert ModeChecker.name and ModeChecker.version


def test_flake8_entry_point_and_extra_are_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["flake8.extension"]["MODE"] == "parity.lint._flake8:ModeChecker"
    assert any(dep.startswith("flake8") for dep in project["optional-dependencies"]["flake8"])


def test_pre_commit_hook_runs_parity_lint_on_python_files():
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    fields = dict(
        re.findall(r"^\s*-?\s*(id|entry|language|types|require_serial):\s*(.+)$", text, re.MULTILINE)
    )
    assert fields == {
        "id": "parity-lint",
        "entry": "parity lint",
        "language": "python",
        "types": "[python]",
        "require_serial": "true",
    }
