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
       "channels_last": true, "map": "map.txt", "check": true,
       "faults": [{"name": "ln-eps", "file": "flax", "replace": ["epsilon=1e-5", "epsilon=1e-6"]}]}

  ``factories.py`` (next to ``pair.json``) imports the two model files and returns small
  configurations of the models with no arguments; ``map`` is optional. ``hand.py``, when
  present, is an independent hand conversion that prints one JSON line
  ``{"rel_l2": float, "float64_rel_l2": float | null, "note": str}``.

For each pair it runs ``parity map`` (and ``parity check --localize`` when ``"check": true``) in
a fresh process with this checkout first on ``PYTHONPATH``, then each fault: the text
replacement applied once to a copy of the pair's Flax file in a temporary copy of ``ROOT`` (the Flax repository's folder and
``ROOT/pairs`` copied, everything else linked), so that the pair's factories import the faulty
file through the same code and module path; ``check --localize`` and ``hand.py`` run there;
then ``hand.py`` on the pair as it is (each in a fresh process).
It records exit codes, problems and notes, the verdict line, the first divergent layer and the
probable cause that ``check`` names, the hand conversion's JSON line and the wall times, one JSON
object per pair, in ``ROOT/ports_realworld.json`` (written atomically, with the machine and the
date), and prints a table.

    python scripts/ports_realworld.py ROOT [--manifest docs/realworld_pairs.csv] [--no-check]
        [--only LABEL,...] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
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
    """The ``--torch/--flax/--input-*/--map`` options of a ``pair.json`` (``map`` and ``check``
    take the same ones)."""
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


def _run(argv: list[str], env: dict, cwd: Path | None = None) -> tuple[int | None, str, str, float]:
    """``(exit code, stdout, stderr, wall seconds)`` of one fresh process (``None``: timed out)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=TIMEOUT_S, check=False
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired:
        code, out, err = None, "", f"timed out after {TIMEOUT_S} s"
    return code, out, err, round(time.perf_counter() - start, 1)


_FIRST = re.compile(r"localize \(mode=eval[^)]*\): first divergent: (\S+) \((\w+), flax ([^)]*)\)")


def localisation(text: str) -> dict:
    """What ``check --localize`` names: the first divergent eval-mode layer (torch name, whether
    its input or output, the Flax name), the probable cause and the note of that line, and the
    first failing gradient; empty strings where it names none."""
    found = {"layer": "", "kind": "", "flax_layer": "", "cause": "", "note": "", "gradient": ""}
    for line in text.splitlines():
        m = _FIRST.search(line)
        if m and not found["layer"]:
            found.update(layer=m.group(1), kind=m.group(2), flax_layer=m.group(3))
            found["note"] = line[line.find("[") + 1 : line.rfind("]")] if "[" in line else ""
            cause = re.search(r"probable cause: (.*?)(?:;|\]|$)", line)
            found["cause"] = cause.group(1).strip() if cause else ""
        shapes = re.search(r"first differing layer: ([^;)\s]+)(?:; probable cause: ([^)]*))?\)", line)
        if shapes and not found["layer"]:  # outputs of different shapes: check names the layer here
            found.update(layer=shapes.group(1), cause=shapes.group(2) or "")
        grad = re.search(r"gradients \(mode=train[^)]*\): first divergent: (\S+)", line)
        if grad and not found["gradient"]:
            found["gradient"] = grad.group(1)
    return found


def _env() -> dict:
    """This checkout first on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def run_parity(command: list[str]) -> dict:
    """Run ``python -m parity.cli COMMAND...``; exit code, problems, the verdict line, what
    ``--localize`` names (:func:`localisation`), stdout tail, last stderr line, wall seconds."""
    code, out, err, seconds = _run([sys.executable, "-m", "parity.cli", *command], _env())
    lines = out.strip().splitlines() or [""]
    return {
        "exit": code,
        "seconds": seconds,
        "problems": [line[len("problem: ") :] for line in out.splitlines() if line.startswith("problem: ")],
        "verdict": lines[-1] if code in (0, 1) else "",
        **localisation(out + "\n" + err),
        "tail": lines[-12:],
        "error": err.strip().splitlines()[-1] if err.strip() else "",
    }


def run_hand(folder: Path) -> dict | None:
    """Run ``folder/hand.py`` in a fresh process (cwd ``folder``); its last stdout line as JSON,
    with exit code and seconds; ``None`` when there is no hand.py. A hand conversion uses no
    parity code, but the models it imports may (our own test models do)."""
    script = folder / "hand.py"
    if not script.is_file():
        return None
    code, out, err, seconds = _run([sys.executable, str(script)], _env(), cwd=folder)
    result = {"exit": code, "seconds": seconds}
    try:
        result.update(json.loads((out.strip().splitlines() or ["null"])[-1]))
    except (json.JSONDecodeError, TypeError, ValueError):
        result["error"] = (err.strip().splitlines() or ["no JSON line"])[-1]
    return result


def faulty_root(root: Path, row: dict, fault: dict, into: Path) -> Path:
    """A copy of ``root`` in ``into`` where the pair's Flax file holds ``fault``'s replacement:
    the Flax repository's folder and ``pairs/`` copied, the other entries linked. Raises
    ``ValueError`` when the text to replace is not in the file exactly once."""
    if fault.get("file", "flax") != "flax":
        raise ValueError(f"fault {fault['name']}: only 'flax' files can be changed")
    repo_dir = folder_of(root, row["flax_repo"], row["flax_commit"])
    for entry in root.iterdir():
        if entry.name in ("pairs", repo_dir.name):
            shutil.copytree(
                entry, into / entry.name, ignore=shutil.ignore_patterns("map.json", "__pycache__")
            )
        elif not entry.name.startswith("ports_realworld"):
            (into / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
    target = into / repo_dir.name / row["flax_path"]
    old, new = fault["replace"]
    text = target.read_text(encoding="utf-8")
    if text.count(old) != 1:
        raise ValueError(
            f"fault {fault['name']}: {old!r} occurs {text.count(old)} times in {row['flax_path']}"
        )
    target.write_text(text.replace(old, new), encoding="utf-8")
    return into


def run_fault(root: Path, row: dict, spec: dict, fault: dict) -> dict:
    """``check --localize`` and ``hand.py`` on the pair with ``fault`` applied."""
    result = {"name": fault["name"], "replace": fault["replace"]}
    with tempfile.TemporaryDirectory(prefix="ports_fault_") as tmp:
        try:
            where = faulty_root(root, row, fault, Path(tmp)) / "pairs" / row["label"]
        except ValueError as e:
            result["error"] = str(e)
            return result
        result["check"] = run_parity(["check", *model_args(spec, where), "--localize"])
        result["hand"] = run_hand(where)
    return result


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
    with_json = root / "pairs" / row["label"] / "map.json"
    result["map"] = run_parity(["map", *model_args(spec, config.parent), "--json", str(with_json)])
    if with_json.is_file():
        result["map"]["pairing"] = json.loads(with_json.read_text(encoding="utf-8"))
    if check and spec.get("check", True):
        result["check"] = run_parity(["check", *model_args(spec, config.parent), "--localize"])
        result["faults"] = [run_fault(root, row, spec, f) for f in spec.get("faults", [])]
    result["hand"] = run_hand(config.parent)
    result["status"] = "ran"
    return result


def _hand_text(hand: dict | None) -> str:
    if not hand:
        return "-"
    if "rel_l2" not in hand:
        return f"hand error: {hand.get('error', '')[:40]}"
    f64 = hand.get("float64_rel_l2")
    return f"hand {hand['rel_l2']:.2e}" + (f"/{f64:.2e}" if f64 is not None else "")


def _check_text(c: dict) -> str:
    where = f" at {c['layer']} ({c['kind']})" if c.get("layer") else ""
    cause = f": {c['cause']}" if c.get("cause") else ""
    return f"check exit {c['exit']}{where}{cause} ({c['seconds']} s)"


def table_lines(results: list[dict]) -> list[str]:
    """One line per pair (map, check, hand conversion), one more per fault."""
    lines = []
    for r in results:
        m, c = r.get("map", {}), r.get("check", {})
        line = f"{r['label']:<18} {r['status'][:60]:<6}"
        if m:
            line += f" map exit {m['exit']} ({len(m['problems'])} problems, {m['seconds']} s)"
        if c:
            line += "; " + _check_text(c)
        if r.get("hand") is not None:
            line += "; " + _hand_text(r["hand"])
        lines.append(line)
        for f in r.get("faults", []):
            text = (
                f"error: {f['error']}"
                if "error" in f
                else _check_text(f["check"]) + "; " + _hand_text(f["hand"])
            )
            lines.append(f"  fault {f['name']:<22} {text}")
    return lines


def _cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the local folder described above")
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--no-check", dest="check", action="store_false", help="run parity map only")
    parser.add_argument("--only", help="comma-separated labels to run (default: every row)")
    parser.add_argument(
        "--json", type=Path, help="where to write the results (default ROOT/ports_realworld.json)"
    )
    args = parser.parse_args(argv)
    with args.manifest.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if args.only:
        rows = [r for r in rows if r["label"] in args.only.split(",")]
    results = []
    for row in rows:
        load = os.getloadavg()[0]
        results.append({**study_pair(args.root, row, args.check), "load_before": round(load, 2)})
    meta = {
        "machine": f"{_cpu_name()} ({platform.machine()}), {os.cpu_count()} CPUs",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
    }
    atomic_write_json(args.json or args.root / "ports_realworld.json", {**meta, "pairs": results})
    print("\n".join(table_lines(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
