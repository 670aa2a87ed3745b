"""``scripts/ports_realworld.py`` on a local folder built from our own test models (no
third-party code): one pair set up, one not."""

import csv
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import ports_realworld  # noqa: E402

FACTORIES = """import port_models

def make_torch():
    return port_models.make_resnet()

def make_flax():
    return port_models.LinenResNet()
"""


def test_the_script_records_map_results_and_pairs_not_set_up(tmp_path, capsys):
    fields = ["label", "torch_repo", "torch_commit", "torch_path", "flax_repo", "flax_commit"]
    fields += ["flax_path", "flax_kind", "constructs"]
    rows = [
        [
            "resnet",
            "me/models",
            "0123456789ab",
            "port_models.py",
            "me/models",
            "0123456789ab",
            "port_models.py",
        ],
        ["absent", "me/other", "fedcba987654", "model.py", "me/other", "fedcba987654", "port.py"],
    ]
    manifest = tmp_path / "pairs.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(fields)
        writer.writerows([*r, "linen", "auto-names"] for r in rows)
    folder = tmp_path / "me+models@0123456789"
    folder.mkdir()
    shutil.copy(REPO / "tests" / "port_models.py", folder / "port_models.py")
    pair = tmp_path / "pairs" / "resnet"
    pair.mkdir(parents=True)
    (pair / "factories.py").write_text(FACTORIES)
    (pair / "port_models.py").symlink_to(folder / "port_models.py")
    spec = {"torch": "factories.py:make_torch", "flax": "factories.py:make_flax", "input_shape": "2,3,8,8"}
    (pair / "pair.json").write_text(json.dumps(spec))
    assert ports_realworld.main([str(tmp_path), "--manifest", str(manifest), "--no-check"]) == 0
    results = {r["label"]: r for r in json.loads((tmp_path / "ports_realworld.json").read_text())["pairs"]}
    assert results["resnet"]["status"] == "ran"
    assert results["resnet"]["map"]["exit"] == 0 and results["resnet"]["map"]["problems"] == []
    assert results["resnet"]["map"]["pairing"]["ok"]
    assert results["absent"]["status"].startswith("not set up: ")
    assert "map exit 0" in capsys.readouterr().out
