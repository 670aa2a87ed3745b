"""Writing ``sweep.md`` and ``sweep.png`` next to ``sweep.json`` (each file atomically)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from parity.io import atomic_write_bytes, atomic_write_text
from parity.sweep.plot import plot_sweep
from parity.sweep.report import render


def write_summary_files(document: dict, out: str | Path) -> dict[str, Path]:
    """Write ``sweep.md`` and ``sweep.png`` for ``document`` into ``out``; return their paths."""
    out = Path(out)
    with tempfile.TemporaryDirectory(dir=out, prefix=".sweep-plot-") as tmp:
        png = plot_sweep(document, Path(tmp) / "sweep.png")
        atomic_write_bytes(out / "sweep.png", png.read_bytes())
    atomic_write_text(out / "sweep.md", render(document, figure="sweep.png"))
    return {"json": out / "sweep.json", "md": out / "sweep.md", "png": out / "sweep.png"}
