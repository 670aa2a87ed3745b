"""``# noqa`` comments: which codes each line suppresses."""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterable

from parity.lint._findings import ALWAYS_REPORTED, Finding

NOQA_RE = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Za-z]+[0-9]+(?:\s*,\s*[A-Za-z]+[0-9]+)*))?", re.IGNORECASE)
_MENTIONS_NOQA = re.compile("noqa", re.IGNORECASE)

#: line -> codes suppressed there (None: every code)
NoqaMap = dict[int, frozenset[str] | None]


def noqa_lines(source: str) -> NoqaMap:
    """Line -> codes suppressed there (None: every code) from ``# noqa`` comments."""
    out: NoqaMap = {}
    if not _MENTIONS_NOQA.search(source):  # no comment can match: skip tokenizing the file
        return out
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):  # pragma: no cover - parsed sources tokenize
        return out
    for token in tokens:
        if token.type != tokenize.COMMENT:
            continue
        match = NOQA_RE.search(token.string)
        if match is None:
            continue
        codes = match.group("codes")
        line = token.start[0]
        if codes is None:
            out[line] = None
        elif out.get(line, frozenset()) is not None:
            found = {code.strip().upper() for code in codes.split(",")}
            out[line] = frozenset(out.get(line) or frozenset()) | found
    return out


def suppressed(finding: Finding, noqa: NoqaMap) -> bool:
    """Whether a ``# noqa`` on the finding's line covers its code (MODE000/MODE009 never are)."""
    if finding.code in ALWAYS_REPORTED or finding.line not in noqa:
        return False
    codes = noqa[finding.line]
    return codes is None or finding.code in codes


def without_suppressed(findings: Iterable[Finding], source: str) -> list[Finding]:
    """The findings that no ``# noqa`` comment in ``source`` suppresses."""
    findings = list(findings)
    if all(finding.code in ALWAYS_REPORTED for finding in findings):
        return findings  # never suppressed: ``source`` need not be read
    noqa = noqa_lines(source)
    return [finding for finding in findings if not suppressed(finding, noqa)]
