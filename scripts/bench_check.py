"""Wall time and peak memory of ``parity check`` on a ResNet-18 (issue 20 item 12).

Runs, each in a fresh process: ``parity check --help``, ``parity map --help``, ``parity map``
on the ResNet-18 pairs (the time to its first printed byte, on stdout or on stderr, which is
a pseudo-terminal as at a shell, and the total), and
``parity check --torch ... --flax ... --input-shape 4,3,32,32 --localize --json FILE`` for the
Linen and the NNX port of ``scripts/bench_check_models.py``. Peak RSS is the child's
``ru_maxrss`` and CPU time its user + system time (``os.wait4``). Prints a table and writes
``--out`` JSON (the timings, the load average before each run, and each check's ``--json``
output, to compare runs: the numbers must not change with a speed-up).

    PYTHONPATH=$PWD python scripts/bench_check.py --out /tmp/bench.json [--repeat 2]

Targets on the 2-core box: check --localize <= 30 s and <= 1.5 GB; --help and map start <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = "scripts/bench_check_models.py"
CHECK = ["check", "--torch", f"{MODELS}:torch_resnet18", "--input-shape", "4,3,32,32", "--localize"]
MAP = ["map", "--torch", f"{MODELS}:torch_resnet18", "--input-shape", "4,3,32,32"]


def cases() -> dict[str, list[str]]:
    """``{case name: parity arguments}``."""
    return {
        "check --help": ["check", "--help"],
        "map --help": ["map", "--help"],
        "map linen": [*MAP, "--flax", f"{MODELS}:linen_resnet18"],
        "map nnx": [*MAP, "--flax", f"{MODELS}:nnx_resnet18"],
        "check --localize linen": [*CHECK, "--flax", f"{MODELS}:linen_resnet18"],
        "check --localize nnx": [*CHECK, "--flax", f"{MODELS}:nnx_resnet18"],
    }


def _first_byte(fd: int, start: float, first: dict, name: str, chunks: list[bytes]) -> None:
    """Read ``fd`` to its end into ``chunks``; ``first[name]``: seconds to its first byte."""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # a pty's master reads EIO once the child closed it
            data = b""
        if not data:
            return
        first.setdefault(name, time.perf_counter() - start)
        chunks.append(data)


def run_one(args: list[str], json_path: str | None) -> dict:
    """Run ``python -m parity.cli ARGS`` once: wall and CPU seconds, peak RSS (MB), exit code,
    and the seconds to the first byte on stdout and on stderr. Stderr is a pseudo-terminal, as
    for a user at a shell (``map`` and ``convert`` draw their step bar only on a terminal)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["PYTHONUNBUFFERED"] = "1"  # print as on a terminal, so the first byte's time is the user's
    cmd = [sys.executable, "-m", "parity.cli", *args] + (["--json", json_path] if json_path else [])
    load = os.getloadavg()[0]
    master, slave = pty.openpty()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    first: dict[str, float] = {}
    out: list[bytes] = []
    err: list[bytes] = []
    reader = threading.Thread(target=_first_byte, args=(master, start, first, "stderr", err))
    reader.start()
    _first_byte(proc.stdout.fileno(), start, first, "stdout", out)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    reader.join()
    os.close(master)
    cpu = usage.ru_utime + usage.ru_stime  # less sensitive than wall time to a shared box's load
    result = {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "first_output_s": round(min(first.values(), default=wall), 2),
        "first_stderr_s": round(first["stderr"], 2) if "stderr" in first else None,
    }
    tail = (b"".join(err)[-300:] + b"".join(out)[-600:]).decode(errors="replace")
    result.update(rc=os.waitstatus_to_exitcode(status), load_1min=round(load, 2), tail=tail)
    if json_path and Path(json_path).exists():
        result["json"] = json.loads(Path(json_path).read_text())
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file of the results")
    ap.add_argument("--repeat", type=int, default=1, help="runs per case (the table shows the fastest)")
    ap.add_argument("--only", default="", help="comma-separated substrings of case names")
    ns = ap.parse_args(argv)
    wanted = [s for s in ns.only.split(",") if s]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in cases().items():
            if wanted and not any(w in name for w in wanted):
                continue
            js = os.path.join(tmp, "check.json") if "localize" in name else None
            results[name] = [run_one(args, js) for _ in range(ns.repeat)]
    print(
        f"{'case':<26} {'wall s (best)':>14} {'first out s':>12} {'cpu s':>7} {'peak MB':>9} {'load':>6} rc"
    )
    for name, runs in results.items():
        best = min(runs, key=lambda r: r["wall_s"])
        cells = f"{best['wall_s']:>14.2f} {best['first_output_s']:>12.2f} {best['cpu_s']:>7.1f}"
        cells += f" {best['peak_rss_mb']:>9.0f} {best['load_1min']:>6.2f}"
        print(f"{name:<26} {cells} {best['rc']}")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count()}
    Path(ns.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return 0 if all(r["rc"] == 0 for runs in results.values() for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
