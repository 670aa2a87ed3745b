"""Running the sweep: one study per cell, each cell's file written atomically, finished cells kept.

Layout of the output directory::

    sweep.json            the grid's configuration and every finished cell's summary
    sweep.md, sweep.png   the table, the reading and the figure (parity.sweep.outputs)
    cells/<cell>.json     one cell: its study configuration, results and summary

A cell file is written with :func:`parity.io.atomic_write_json` (temporary file, then rename),
so an interrupted cell leaves no file, or the previous one. On a new run a cell whose file exists
and holds the same study configuration is *finished* and not trained again (resume); a cell file
from another configuration is trained again and replaced.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from parity.io import atomic_write_json, ensure_writable_dir, json_safe
from parity.progress import Progress
from parity.study.config import StudyConfig
from parity.study.driver import run_study
from parity.sweep.grid import SweepConfig, cell_id
from parity.sweep.summary import cell_summary, collapse_totals, distinct_collapses

CELLS_DIR = "cells"
SWEEP_JSON = "sweep.json"

#: ``train(study_config) -> results``: :func:`parity.study.run_study` unless a test swaps it
TrainCell = Callable[[StudyConfig], dict]


def cell_path(out: Path, model: str, eval_every: int | str) -> Path:
    """Where the cell's file lives."""
    return out / CELLS_DIR / f"{cell_id(model, eval_every)}.json"


def _study_key(config: StudyConfig) -> dict:
    """The study configuration as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(json_safe(config.to_dict())))


def load_finished(path: Path, config: StudyConfig) -> dict | None:
    """The cell file at ``path`` if it is complete and of ``config``, else ``None``."""
    try:
        cell = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cell, dict) or cell.get("study_config") != _study_key(config):
        return None
    return cell if "summary" in cell and "results" in cell else None


def _atomic_temp(name: str) -> re.Pattern:
    """The temporary file :func:`parity.io.atomic_open` makes for ``name``: ``.NAME.XXXXXXXX.tmp``
    (``tempfile.mkstemp``'s 8 random characters)."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")


def clean_partial(out: Path, config: SweepConfig) -> list[Path]:
    """Remove the temporary files an interrupted atomic write of this sweep left: those of
    ``sweep.json``, ``sweep.md``, ``sweep.png`` in ``out`` and of ``config``'s cell files in ``out/cells``. Any other file,
    a user's own ``*.tmp`` included, is left alone."""
    names = {
        out: [SWEEP_JSON, "sweep.md", "sweep.png"],
        out / CELLS_DIR: [f"{cell_id(m, e)}.json" for m, e in config.cells()],
    }
    removed = []
    for folder, files in names.items():
        patterns = [_atomic_temp(f) for f in files]
        for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
            if any(p.fullmatch(tmp.name) for p in patterns) and tmp.is_file():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed.append(tmp)
    return removed


def run_cell(config: StudyConfig, path: Path, train: TrainCell) -> dict:
    """Train one cell and write its file atomically; return the cell."""
    results = train(config)
    cell = {"study_config": _study_key(config), "summary": cell_summary(results), "results": results}
    atomic_write_json(path, cell)
    return cell


def sweep_document(config: SweepConfig, cells: list[dict], wall_s: float, resumed: list[str]) -> dict:
    """``sweep.json``: the grid, every finished cell's summary, collapse totals per variant."""
    summaries = [
        c["summary"] | {"cell": cell_id(c["summary"]["model"], c["summary"]["eval_every"])} for c in cells
    ]
    first = cells[0]["results"] if cells else {}
    return {
        "schema": 1,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "complete": len(cells) == len(config.cells()),
        "environment": first.get("environment"),
        "wall_time_s": wall_s,
        "resumed_cells": resumed,
        "cells": summaries,
        "collapse_totals": collapse_totals(summaries),
        "distinct_collapses": distinct_collapses(summaries, config.epochs),
    }


def run_sweep(
    config: SweepConfig, out_dir: str | Path, progress: bool = True, train: TrainCell | None = None
) -> dict:
    """Run every cell of ``config`` not yet finished in ``out_dir``; write each cell's file and
    ``sweep.json`` after every cell (atomically); return the ``sweep.json`` document.

    ``wall_time_s`` counts this run only: resumed cells keep their own ``wall_time_s``.
    """
    config.validate()
    out = ensure_writable_dir(out_dir)
    (out / CELLS_DIR).mkdir(exist_ok=True)
    clean_partial(out, config)
    train = train or (lambda study: run_study(study, progress=False))
    started, cells, resumed = time.perf_counter(), [], []
    with Progress("cells", len(config.cells()), enabled=progress) as bar:
        for model, every in config.cells():
            study, path = config.study(model, every), cell_path(out, model, every)
            name = cell_id(model, every)
            cell = load_finished(path, study)
            if cell is not None:
                resumed.append(name)
                bar.log(f"{name}: finished earlier, kept ({path})")
            else:
                bar.describe(
                    f"{name}: {study.seeds} seeds x {study.epochs} epochs x {len(study.variants)} variants"
                )
                cell = run_cell(study, path, train)
                bar.log(f"{name}: {cell['summary']['wall_time_s']:.0f} s{_headline(cell['summary'])}")
            cells.append(cell)
            bar.advance()
            document = sweep_document(config, cells, time.perf_counter() - started, resumed)
            atomic_write_json(out / SWEEP_JSON, document)
    return document


def _headline(summary: dict[str, Any]) -> str:
    bug = summary["variants"].get("torch_seed_bug", {}).get("effect_last")
    return "" if not bug else f"; torch_seed_bug last-epoch effect {100 * bug['mean']:+.2f} points"
