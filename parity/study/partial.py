"""Finished variants of a study that has not finished: kept on disk so that a rerun resumes.

``parity study --out D`` writes each variant's entry to ``D/.study-variants/<variant>.json``
(atomically) as soon as the variant has trained. A run of the same study in the same
environment (same configuration apart from the variant list, same library versions, device
and CPU kernels) takes those entries instead of training them again; the files are removed once
the outputs are written. Every seed of a variant depends only on its seed (its own initial
weights, batch order and dropout generator), so a resumed variant is the one a full run trains.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from parity.io import atomic_write_json, json_safe

#: the folder under ``--out`` that holds the finished variants of an unfinished run
PARTIAL_DIR = ".study-variants"


def _plain(obj: object) -> object:
    """``obj`` as it reads back from JSON (tuples become lists, non-finite floats ``None``)."""
    return json.loads(json.dumps(json_safe(obj)))


class VariantStore:
    """The finished variants of one study (``key``: its configuration less the variant list,
    and its environment) in ``folder``."""

    def __init__(self, out: str | Path, config: dict, environment: dict) -> None:
        self.folder = Path(out) / PARTIAL_DIR
        key = {k: v for k, v in config.items() if k != "variants"}
        self.key = _plain({"config": key, "environment": environment})

    def _path(self, variant: str) -> Path:
        return self.folder / f"{variant}.json"

    def load(self, variant: str) -> dict | None:
        """The stored entry of ``variant`` if it was trained by this same study, else ``None``."""
        try:
            stored = json.loads(self._path(variant).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(stored, dict) or stored.get("key") != self.key or "entry" not in stored:
            return None
        return stored["entry"]

    def save(self, variant: str, entry: dict) -> None:
        """Keep ``variant``'s finished ``entry`` (atomically: the file is whole or absent)."""
        self.folder.mkdir(exist_ok=True)
        atomic_write_json(self._path(variant), {"key": self.key, "entry": entry})

    def clear(self) -> None:
        """Remove every stored variant (after the outputs are written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
