"""Wall time, CPU time and peak memory of ``parity port`` on the zoo's ResNet-50 (issue 23).

Runs ``parity port --torch torch_impl.resnet:resnet50 --input-shape 4,3,32,32 --to STYLE
--out TMP`` in a fresh process per style: generate the port, convert the weights, write the
folder, and run ``parity check --localize`` on it. Peak RSS is the child's ``ru_maxrss`` and CPU
time its user + system time (``os.wait4``); each phase's wall time comes from the command's
progress lines on stderr (time since start at each ``# ...`` line). The 1-minute load average
before and after each run is recorded: the box is shared, and wall time grows with its load.

    PYTHONPATH=$PWD python scripts/bench_port.py --out /tmp/bench_port.json [--styles nnx,linen]
        [--input-shape 4,3,32,32]

Target (issue 23): port plus check in at most 60 s on the idle 2-core box.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch_impl.resnet:resnet50"
SHAPE = "4,3,32,32"


def run_one(style: str, out_dir: str, shape: str = SHAPE) -> dict:
    """One ``parity port`` run: wall and CPU seconds, peak RSS (MB), phase times, exit code."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "parity.cli", "port", "--torch", TORCH, "--input-shape", shape]
    cmd += ["--to", style, "--out", out_dir]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    phases, lines = [], []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("# "):
            phases.append((round(time.perf_counter() - start, 1), line[2:].strip()[:70]))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    return {
        "style": style,
        "input_shape": shape,
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "phases": phases,
        "verdict": next((ln.strip() for ln in lines if ln.startswith(("PASS", "FAIL"))), ""),
        "tail": "".join(lines)[-1500:],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="JSON file of the results")
    ap.add_argument("--styles", default="nnx,linen", help="comma-separated: nnx, linen")
    ap.add_argument("--input-shape", default=SHAPE, help=f"torch layout (default {SHAPE})")
    ns = ap.parse_args(argv)
    results = []
    for style in [s for s in ns.styles.split(",") if s]:
        with tempfile.TemporaryDirectory() as tmp:
            results.append(run_one(style, os.path.join(tmp, "port"), ns.input_shape))
        r = results[-1]
        print(
            f"{style:<6} rc {r['rc']}  wall {r['wall_s']:>6} s  cpu {r['cpu_s']:>6} s  "
            f"peak {r['peak_rss_mb']:>5} MB  load {r['load_1min_before']}->{r['load_1min_after']}  {r['verdict']}"
        )
        for t, what in r["phases"]:
            print(f"    {t:>6} s  {what}")
    Path(ns.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
