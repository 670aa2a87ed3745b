"""``parity lint PATH...``: argparse only; the checker is :mod:`parity.lint` (standard library only)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from parity.errors import ParityError
from parity.lint import FORMATS, RULES, lint_paths, project_roots

STDIN = "-"


@dataclass(frozen=True)
class LintOptions:
    """Validated ``parity lint`` arguments."""

    paths: tuple[str, ...]
    select: tuple[str, ...]
    output_format: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``parity lint``."""
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or directories (searched recursively for *.py); - reads standard input",
    )
    parser.add_argument(
        "--select",
        action="append",
        metavar="CODES",
        help="comma-separated rule codes or prefixes to report (default: all), e.g. MODE001",
    )
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=sorted(FORMATS),
        default="text",
        help="output format: text lines (default), json, sarif (2.1.0) or github (workflow annotations)",
    )
    parser.add_argument("--list-rules", action="store_true", help="print the rule codes and exit")


def _options(args: argparse.Namespace) -> LintOptions:
    """The validated options; ParityError for a usage error."""
    paths = tuple(args.paths or [])
    if not paths:
        raise ParityError("no paths given")
    select: list[str] = []
    for chunk in args.select or []:
        select.extend(code.strip().upper() for code in chunk.split(",") if code.strip())
    unknown = [prefix for prefix in select if not any(code.startswith(prefix) for code in RULES)]
    if unknown:
        raise ParityError(f"unknown rule code(s): {', '.join(unknown)}")
    return LintOptions(paths, tuple(select), getattr(args, "output_format", "text"))


def run(args: argparse.Namespace) -> int:
    """Run ``parity lint``: 0 clean, 1 findings (or files not fully checked), 2 usage error.

    A path that does not exist does not hide the others' findings: they are printed (the
    missing path is a MODE000 finding in every format), then the error, exit 2."""
    if getattr(args, "list_rules", False):
        for code, text in RULES.items():
            print(f"{code}  {text}")
        return 0
    options = _options(args)
    for root in project_roots(options.paths):
        print(f"parity lint: project root {root.describe()}", file=sys.stderr)
    findings = lint_paths(options.paths, options.select or None)
    sys.stdout.write(FORMATS[options.output_format](findings))
    missing = [path for path in options.paths if path != STDIN and not os.path.lexists(path)]
    if missing:
        raise ParityError("; ".join(f"no such file or directory: {path}" for path in missing))
    return 1 if findings else 0
