"""Wall time, CPU time and peak memory of ``parity lint`` over a folder (issue 22 item 9).

Each run is a child ``python -m parity lint --format json [--jobs N] FOLDER``; its CPU time is
the child's user + system time and peak RSS its ``ru_maxrss`` (``os.wait4``: worker processes
included, the largest one for the RSS).  ``--per-folder`` runs one child per sub-folder (the
real-world set: each repository checked as its own project, as ``scripts/lint_realworld.py``
does).  Prints and writes (``--out``) JSON with the machine, the load average before and after,
and a digest of the findings, so that runs with different ``--jobs`` can be compared.

    PYTHONPATH=$PWD python scripts/bench_lint.py TORCH_DIR --jobs 2 --out /tmp/torch.json
    PYTHONPATH=$PWD python scripts/bench_lint.py /work/realworld/lint --per-folder --jobs 2

Targets on the 2-core box: all of torch (2,285 files) in at most 120 s wall; the real-world set
at 50 files per second or more.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's parity, not another installed copy

from parity.device import cpu_model  # noqa: E402


def lint_once(folder: Path, jobs: int | None) -> dict:
    """One child ``parity lint`` over ``folder``: wall and CPU seconds, peak RSS, its findings."""
    command = [sys.executable, "-m", "parity", "lint", "--format", "json", str(folder)]
    command += [] if jobs is None else ["--jobs", str(jobs)]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    out = child.stdout.read() if child.stdout is not None else b""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode not in (0, 1):
        raise SystemExit(f"bench_lint: parity lint exited {child.returncode} on {folder}")
    files = sum(1 for _ in folder.rglob("*.py"))
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "folder": str(folder),
        "files": files,
        "wall_s": wall,
        "cpu_s": cpu,
        "user_s": usage.ru_utime,
        "system_s": usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "findings": json.loads(out or b"[]"),
    }


def bench(folder: Path, jobs: int | None, per_folder: bool, findings_out: Path | None = None) -> dict:
    """The run (or one run per sub-folder, summed) with the load average before and after;
    ``findings_out`` keeps the findings (JSON) to compare runs."""
    folders = sorted(path for path in folder.iterdir() if path.is_dir()) if per_folder else [folder]
    load_before = os.getloadavg()
    runs = [lint_once(path, jobs) for path in folders]
    findings = [finding for run in runs for finding in run.pop("findings")]
    if findings_out is not None:
        findings_out.write_text(json.dumps(findings, indent=1) + "\n")
    wall, cpu, files = (sum(run[key] for run in runs) for key in ("wall_s", "cpu_s", "files"))
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpu": cpu_model(), "usable_cores": len(os.sched_getaffinity(0))},
        "python": platform.python_version(),
        "folder": str(folder),
        "per_folder": per_folder,
        "jobs": jobs,
        "files": files,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "user_s": round(sum(run["user_s"] for run in runs), 1),
        "system_s": round(sum(run["system_s"] for run in runs), 1),
        "peak_rss_mb": round(max(run["peak_rss_mb"] for run in runs)),
        "files_per_wall_s": round(files / wall, 1),
        "files_per_cpu_s": round(files / cpu, 1) if cpu else None,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "findings": len(findings),
        "findings_sha256": hashlib.sha256(json.dumps(findings).encode()).hexdigest(),
    }


def main() -> None:
    """Parse the arguments, run, print the JSON and write it to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--jobs", type=int, default=None, help="passed to parity lint (default: its own)")
    parser.add_argument(
        "--per-folder", action="store_true", help="one run per sub-folder (the real-world set)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--findings", type=Path, help="write the findings here (JSON), to compare runs")
    args = parser.parse_args()
    result = json.dumps(bench(args.folder, args.jobs, args.per_folder, args.findings), indent=1)
    print(result)
    if args.out is not None:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()
