"""Output formats for findings: text lines, JSON, SARIF 2.1.0 and GitHub workflow annotations."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from parity.lint._findings import RULES, Finding

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
TOOL_NAME = "parity-lint"

#: codes that say a file was not (fully) checked are errors; rule findings are warnings
_ERROR_CODES = frozenset({"MODE000", "MODE009"})


def format_text(findings: Sequence[Finding]) -> str:
    """One ``path:line:col: CODE message`` line per finding."""
    return "".join(finding.format() + "\n" for finding in findings)


def format_json(findings: Sequence[Finding]) -> str:
    """A JSON list of ``{path, line, col, code, message}`` objects (1-based line and col)."""
    rows = [
        {"path": f.path, "line": f.line, "col": f.col, "code": f.code, "message": f.message} for f in findings
    ]
    return json.dumps(rows, indent=2) + "\n"


def artifact_uri(path: str) -> str:
    """A SARIF ``artifactLocation.uri``: a percent-encoded relative reference for a relative
    path (``my dir/a%b.py`` -> ``my%20dir/a%25b.py``), a ``file://`` URI for an absolute one."""
    posix = path.replace("\\", "/")
    if os.path.isabs(path):
        return Path(path).absolute().as_uri()
    return urllib.parse.quote(posix, safe="/")


def _sarif_result(finding: Finding) -> dict:
    """One SARIF ``result``: rule, level, message and the 1-based start line and column."""
    return {
        "ruleId": finding.code,
        "ruleIndex": list(RULES).index(finding.code),
        "level": "error" if finding.code in _ERROR_CODES else "warning",
        "message": {"text": finding.message},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {"uri": artifact_uri(finding.path)},
                    "region": {"startLine": finding.line, "startColumn": finding.col},
                }
            }
        ],
    }


def sarif_log(findings: Sequence[Finding]) -> dict:
    """A SARIF 2.1.0 log with one run: the rule table and one result per finding."""
    rules = [{"id": code, "name": code, "shortDescription": {"text": text}} for code, text in RULES.items()]
    driver = {"name": TOOL_NAME, "rules": rules}
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{"tool": {"driver": driver}, "results": [_sarif_result(f) for f in findings]}],
    }


def format_sarif(findings: Sequence[Finding]) -> str:
    """SARIF 2.1.0 JSON, for code-scanning UIs (GitHub code scanning, VS Code SARIF viewer)."""
    return json.dumps(sarif_log(findings), indent=2) + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(findings: Sequence[Finding]) -> str:
    """GitHub Actions workflow commands: ``::warning file=F,line=L,col=C,title=CODE::message``."""
    lines = []
    for finding in findings:
        level = "error" if finding.code in _ERROR_CODES else "warning"
        props = (
            f"file={_escape_property(finding.path)},line={finding.line},col={finding.col},"
            f"title={_escape_property(finding.code)}"
        )
        lines.append(f"::{level} {props}::{_escape_data(finding.code + ' ' + finding.message)}\n")
    return "".join(lines)


#: ``--format`` name -> formatter
FORMATS: dict[str, Callable[[Sequence[Finding]], str]] = {
    "text": format_text,
    "json": format_json,
    "sarif": format_sarif,
    "github": format_github,
}
