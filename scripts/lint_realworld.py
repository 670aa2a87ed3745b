"""Precision and recall of ``parity lint`` (MODE001) on real training scripts, labelled by reading.

The manifest (``docs/lint_realworld.csv``: repo, commit, path, label, eval_line, loop_line,
reason) names public files; the files themselves are not part of this project. This script
fetches nothing: it reads a local folder laid out as ``ROOT/<owner>+<name>@<commit[:10]>/<path>``
(for example every ``*.py`` of that commit, written with ``git show <commit>:<path>``), checks
each (repo, commit) folder as one project, and counts a file as flagged when MODE001 is reported
in it.  Label ``bug`` + flagged is a true positive, ``ok`` + flagged a false alarm.

    python scripts/lint_realworld.py ROOT [--manifest docs/lint_realworld.csv] [--json OUT] [--jobs N]

``--jobs`` is ``parity lint --jobs`` (default: the usable cores); CPU time counts the workers.

``--json`` writes the score with the machine, the date and the load average next to each
file's outcome (``docs/results/lint/realworld.json`` is such a run, cited by docs/LINT.md).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's parity, not another installed copy

from parity.device import cpu_model  # noqa: E402
from parity.io import atomic_write_json  # noqa: E402
from parity.lint import lint_paths  # noqa: E402
from parity.lint._parallel import default_jobs  # noqa: E402

DEFAULT_MANIFEST = REPO / "docs" / "lint_realworld.csv"


def folder_of(root: Path, repo: str, commit: str) -> Path:
    """Where the files of ``repo`` at ``commit`` are expected under ``root``."""
    return root / f"{repo.replace('/', '+')}@{commit[:10]}"


def flagged_files(folder: Path, jobs: int = 1) -> set[str]:
    """Paths (relative to ``folder``) with at least one MODE001 finding."""
    return {
        Path(finding.path).relative_to(folder).as_posix()
        for finding in lint_paths([folder], select=["MODE001"], jobs=jobs)
        if finding.code == "MODE001"
    }


def machine() -> dict:
    """The CPU model, core count, load average and Python version of this run."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
    }


def cpu_seconds() -> float:
    """User + system time of this process and of its finished worker processes."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(part.ru_utime + part.ru_stime for part in usage)


def measure(root: Path, manifest: Path, json_out: Path | None = None, jobs: int = 1) -> int:
    """Print one line per miss / false alarm / missing file, then precision, recall and time."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["repo"], row["commit"])].append(row)
    counts = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "missing": 0}
    start, cpu_start = time.perf_counter(), cpu_seconds()
    load_before = machine()["load_average"]
    checked = 0
    outcomes: list[dict] = []
    for (repo, commit), group in groups.items():
        folder = folder_of(root, repo, commit)
        flagged = flagged_files(folder, jobs) if folder.is_dir() else set()
        checked += sum(1 for _ in folder.rglob("*.py")) if folder.is_dir() else 0
        for row in group:
            if not (folder / row["path"]).is_file():
                counts["missing"] += 1
                print(f"missing      {repo}@{commit[:10]} {row['path']}")
                continue
            hit = row["path"] in flagged
            key = {("bug", True): "tp", ("bug", False): "fn", ("ok", True): "fp", ("ok", False): "tn"}
            outcome = key[(row["label"], hit)]
            counts[outcome] += 1
            outcomes.append({key: row[key] for key in ("repo", "commit", "path", "label")} | {"flagged": hit})
            if outcome in ("fn", "fp"):
                name = "miss" if outcome == "fn" else "false alarm"
                print(f"{name:<12} {repo}@{commit[:10]} {row['path']}: {row['reason']}")
    elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    hits, alarms, misses = counts["tp"], counts["fp"], counts["fn"]
    precision = hits / (hits + alarms) if hits + alarms else 1.0
    recall = hits / (hits + misses) if hits + misses else 1.0
    print(
        f"{len(rows)} files ({sum(row['label'] == 'bug' for row in rows)} bug, "
        f"{sum(row['label'] == 'ok' for row in rows)} ok), {counts['missing']} missing: "
        f"tp={hits} fp={alarms} fn={misses} tn={counts['tn']} precision={precision:.2f} recall={recall:.2f} "
        f"({len(groups)} project folders, {checked} files checked: {cpu:.1f} s CPU, {elapsed:.1f} s wall, "
        f"{checked / cpu if cpu else 0:.1f} files per CPU second, {checked / elapsed if elapsed else 0:.1f} "
        f"per wall second, --jobs {jobs})"
    )
    if json_out is not None:
        result = {
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine() | {"load_average_before": load_before},
            "manifest": str(manifest.relative_to(REPO) if manifest.is_relative_to(REPO) else manifest),
            "files": len(rows),
            "counts": counts,
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "project_folders": len(groups),
            "files_checked": checked,
            "cpu_s": round(cpu, 1),
            "wall_s": round(elapsed, 1),
            "jobs": jobs,
            "files_per_cpu_s": round(checked / cpu, 1) if cpu else None,
            "files_per_wall_s": round(checked / elapsed, 1) if elapsed else None,
            "outcomes": outcomes,
        }
        atomic_write_json(json_out, result, indent=1)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: ``ROOT`` and ``--manifest``; exit 2 when ROOT is not a folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="local folder with <owner>+<name>@<commit[:10]>/ subfolders")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--json", type=Path, default=None, help="also write the score and outcomes here")
    parser.add_argument(
        "--jobs", type=int, default=default_jobs(), help="worker processes (parity lint --jobs)"
    )
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"lint_realworld: error: not a folder: {args.root}", file=sys.stderr)
        return 2
    if not args.manifest.is_file():
        print(f"lint_realworld: error: no manifest: {args.manifest}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"lint_realworld: error: --jobs must be at least 1, not {args.jobs}", file=sys.stderr)
        return 2
    return measure(args.root, args.manifest, args.json, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
