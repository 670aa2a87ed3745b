"""``parity lint PATH...``: argparse only; the checker is :mod:`parity.lint` (standard library only)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from parity.errors import ParityError
from parity.io import atomic_write_text
from parity.lint import FORMATS, RULES, Finding, lint_paths, project_roots
from parity.lint._files import UnreadableSource, read_source
from parity.lint._fix import diff, fix_source
from parity.lint._parallel import MAX_DEFAULT_JOBS, default_jobs

STDIN = "-"


@dataclass(frozen=True)
class LintOptions:
    """Validated ``parity lint`` arguments."""

    paths: tuple[str, ...]
    select: tuple[str, ...]
    output_format: str
    fix: bool = False
    diff: bool = False
    jobs: int = 1


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
    parser.add_argument(
        "--fix",
        action="store_true",
        help="insert the missing model.train() where that is safe (re-linted clean), then report what is left",
    )
    parser.add_argument(
        "--diff", action="store_true", help="print the safe fixes as a unified diff; change no file"
    )
    parser.add_argument(
        "--jobs",
        metavar="N",
        help=f"worker processes that check the files (default: the usable cores, at most {MAX_DEFAULT_JOBS}); "
        "1 checks them in this process; the output is the same for every N",
    )


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
    fix, diff = bool(getattr(args, "fix", False)), bool(getattr(args, "diff", False))
    if (fix or diff) and STDIN in paths:
        raise ParityError("--fix and --diff need files, not standard input")
    jobs = _jobs(getattr(args, "jobs", None))
    return LintOptions(paths, tuple(select), getattr(args, "output_format", "text"), fix, diff, jobs)


def _jobs(text: str | None) -> int:
    """``--jobs``: a whole number of at least 1 (default: the usable cores); ParityError else."""
    if text is None:
        return default_jobs()
    try:
        jobs = int(text)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise ParityError(f"--jobs must be a whole number of at least 1, not {text!r}")
    return jobs


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
    findings = lint_paths(options.paths, options.select or None, jobs=options.jobs)
    if options.diff:
        return 1 if _apply_fixes(options, findings, write=False) else 0
    if options.fix and _apply_fixes(options, findings, write=True):
        findings = lint_paths(options.paths, options.select or None, jobs=options.jobs)  # what is left
    sys.stdout.write(FORMATS[options.output_format](findings))
    missing = [path for path in options.paths if path != STDIN and not os.path.lexists(path)]
    if missing:
        raise ParityError("; ".join(f"no such file or directory: {path}" for path in missing))
    return 1 if findings else 0


def _apply_fixes(options: LintOptions, findings: list[Finding], write: bool) -> int:
    """Fix (or, without ``write``, print the diff of) every file with a safe fix; the count fixed."""
    fixed = files = 0
    for path in sorted({finding.path for finding in findings if finding.code == "MODE001"}):
        try:
            source = read_source(path)
        except UnreadableSource:
            continue
        new, done = fix_source(source, path, findings, options.paths)
        if not done:
            continue
        fixed, files = fixed + len(done), files + 1
        if write:
            atomic_write_text(path, new)
        else:
            sys.stdout.write(diff(path, source, new))
    verb = "fixed" if write else "would fix"
    print(f"parity lint: {verb} {fixed} finding(s) in {files} file(s)", file=sys.stderr)
    return fixed
