"""``parity lint PATH...``: argparse only; the checker is :mod:`parity.lint` (standard library only)."""

from __future__ import annotations

import argparse
import os
import sys

from parity.lint import RULES, lint_paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``parity lint``."""
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="files or directories (searched recursively for *.py)"
    )
    parser.add_argument(
        "--select",
        action="append",
        metavar="CODES",
        help="comma-separated rule codes or prefixes to report (default: all), e.g. MODE001",
    )
    parser.add_argument("--list-rules", action="store_true", help="print the rule codes and exit")


def run(args: argparse.Namespace) -> int:
    """Run ``parity lint``: 0 clean, 1 findings (or unparsable files), 2 usage error."""
    if getattr(args, "list_rules", False):
        for code, text in RULES.items():
            print(f"{code}  {text}")
        return 0
    paths = list(args.paths or [])
    if not paths:
        print("parity lint: error: no paths given", file=sys.stderr)
        return 2
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        for p in missing:
            print(f"parity lint: error: no such file or directory: {p}", file=sys.stderr)
        return 2
    select: list[str] = []
    for chunk in args.select or []:
        select.extend(c.strip().upper() for c in chunk.split(",") if c.strip())
    unknown = [s for s in select if not any(code.startswith(s) for code in RULES)]
    if unknown:
        print(f"parity lint: error: unknown rule code(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    findings = lint_paths(paths, select or None)
    for finding in findings:
        print(finding.format())
    return 1 if findings else 0
