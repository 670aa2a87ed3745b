"""The documents' result tables are generated from committed results (scripts/render_tables.py):
a table that no longer matches its results file fails here."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("render_tables", ROOT / "scripts" / "render_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_tables = _script()


def test_every_table_in_the_documents_matches_its_results_file():
    stale = []
    for path in render_tables.documents():
        _, changed = render_tables.fill(path.read_text(encoding="utf-8"))
        stale += [f"{path.relative_to(ROOT)}: {name}" for name in changed]
    assert not stale, f"run `python scripts/render_tables.py`: stale tables {stale}"


def test_every_results_file_a_table_names_is_committed_with_its_machine_and_date():
    for name, table in render_tables.TABLES.items():
        data = json.loads((ROOT / table.results).read_text(encoding="utf-8"))
        if "machine" in data:  # a bench report
            assert data["date"] and data["machine"]["cpu"] and data["machine"]["cores"], name
            continue
        env = data["environment"]
        assert data["created_utc"] and env["cpu"] and env["torch_cpu_capability"], name


def test_a_changed_results_file_makes_its_table_stale(tmp_path):
    name = "study-quick-mnist1d-cpu"
    results = tmp_path / render_tables.TABLES[name].results
    results.parent.mkdir(parents=True)
    shutil.copy(ROOT / render_tables.TABLES[name].results, results)
    doc = f"before\n<!-- results:{name} -->\nold\n<!-- /results:{name} -->\nafter\n"
    filled, changed = render_tables.fill(doc, root=tmp_path)
    assert changed == [name] and filled.startswith("before\n") and filled.endswith("after\n")
    assert render_tables.fill(filled, root=tmp_path)[1] == []  # rendered once: up to date
    data = json.loads(results.read_text())
    data["variants"]["torch_seed_bug"]["seeds"][0]["epochs"][-1]["test_acc"] -= 0.01  # one number
    results.write_text(json.dumps(data))
    assert render_tables.fill(filled, root=tmp_path)[1] == [name]


def test_an_unknown_table_name_is_an_error():
    with pytest.raises(KeyError, match="no table named 'nope'"):
        render_tables.fill("<!-- results:nope -->\n<!-- /results:nope -->\n")
