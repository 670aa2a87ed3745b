"""What ``parity map`` and ``parity check`` say on real public PyTorch models and their Flax ports.

The manifest (``docs/realworld_pairs.csv``: label, torch_repo, torch_commit, torch_path,
flax_repo, flax_commit, flax_path, flax_kind, constructs) names public files; the files
themselves are not part of this project. This script fetches nothing. It reads a local folder
``ROOT`` laid out as

* ``ROOT/<owner>+<name>@<commit[:10]>/<path>``: the two model files of each pair (for example
  written with ``git show <commit>:<path>``), as for ``scripts/lint_realworld.py``;
* ``ROOT/pairs/<label>/pair.json``: how to build the pair, written by whoever runs the study::

      {"torch": "factories.py:make_torch", "flax": "factories.py:make_flax",
       "input_shape": "1,3,32,32", "input_dtype": "float32", "input_high": null,
       "channels_last": true, "map": "map.txt", "check": true}

  ``factories.py`` (next to ``pair.json``) imports the two model files and returns small
  configurations of the models with no arguments; ``map`` is optional.

For each pair it runs ``parity map`` (and ``parity check`` when ``"check": true``) in a fresh
process with this checkout first on ``PYTHONPATH``, and records the exit code, the problems and
notes, the last lines of ``check`` and the wall time, one JSON object per pair, in
``ROOT/ports_realworld.json`` (written atomically), and prints a table.

    python scripts/ports_realworld.py ROOT [--manifest docs/realworld_pairs.csv] [--no-check]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's parity, not another installed copy

from parity.io import atomic_write_json  # noqa: E402

DEFAULT_MANIFEST = REPO / "docs" / "realworld_pairs.csv"
TIMEOUT_S = 1800


def folder_of(root: Path, repo: str, commit: str) -> Path:
    """Where the files of ``repo`` at ``commit`` are expected under ``root``."""
    return root / f"{repo.replace('/', '+')}@{commit[:10]}"


def model_args(spec: dict, where: Path) -> list[str]:
    """The ``--torch/--flax/--input-*/--map`` options of a ``pair.json``."""
    args = ["--torch", str(where / spec["torch"]), "--flax", str(where / spec["flax"])]
    if spec.get("input_shape"):
        args += ["--input-shape", spec["input_shape"], "--input-dtype", spec.get("input_dtype", "float32")]
    if spec.get("input_high") is not None:
        args += ["--input-high", str(spec["input_high"])]
    if not spec.get("channels_last", True):
        args.append("--no-channels-last")
    if spec.get("map"):
        args += ["--map", str(where / spec["map"])]
    return args


def run_parity(command: list[str]) -> dict:
    """Run ``python -m parity.cli COMMAND...``; exit code, stdout/stderr tails, wall seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "parity.cli", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT_S,
            check=False,
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired:
        code, out, err = None, "", f"timed out after {TIMEOUT_S} s"
    return {
        "exit": code,
        "seconds": round(time.perf_counter() - start, 1),
        "problems": [line[len("problem: ") :] for line in out.splitlines() if line.startswith("problem: ")],
        "tail": (out.strip().splitlines() or [""])[-12:],
        "error": err.strip().splitlines()[-1] if err.strip() else "",
    }


def study_pair(root: Path, row: dict, check: bool) -> dict:
    """Everything recorded for one manifest row."""
    result = {"label": row["label"], "constructs": row["constructs"]}
    files = [
        folder_of(root, row["torch_repo"], row["torch_commit"]) / row["torch_path"],
        folder_of(root, row["flax_repo"], row["flax_commit"]) / row["flax_path"],
    ]
    missing = [str(f) for f in files if not f.is_file()]
    config = root / "pairs" / row["label"] / "pair.json"
    if missing or not config.is_file():
        result["status"] = "not set up: " + ", ".join(missing or [str(config)])
        return result
    spec = json.loads(config.read_text(encoding="utf-8"))
    args = model_args(spec, config.parent)
    with_json = root / "pairs" / row["label"] / "map.json"
    result["map"] = run_parity(["map", *args, "--json", str(with_json)])
    if with_json.is_file():
        result["map"]["pairing"] = json.loads(with_json.read_text(encoding="utf-8"))
    if check and spec.get("check", True):
        result["check"] = run_parity(["check", *args, "--localize"])
    result["status"] = "ran"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the local folder described above")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--no-check", dest="check", action="store_false", help="run parity map only")
    args = parser.parse_args(argv)
    with args.manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    results = [study_pair(args.root, row, args.check) for row in rows]
    atomic_write_json(args.root / "ports_realworld.json", {"pairs": results})
    for r in results:
        m, c = r.get("map", {}), r.get("check", {})
        line = f"{r['label']:<18} {r['status'][:60]:<60}"
        if m:
            line += f" map exit {m['exit']} ({len(m['problems'])} problems, {m['seconds']} s)"
        if c:
            line += f"; check exit {c['exit']} ({c['seconds']} s)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
