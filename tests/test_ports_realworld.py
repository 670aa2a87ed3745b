"""``scripts/ports_realworld.py`` on a local folder built from our own test models (no
third-party code): one pair set up, one not; the hand conversion and an injected fault."""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import ports_realworld  # noqa: E402

FACTORIES = """import port_models

def make_torch():
    return port_models.make_resnet()

def make_flax():
    return port_models.LinenResNet()
"""


@pytest.mark.slow  # 4.2 s in the idle default run of 2026-12-07: over the 2 s a default test may take
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


MLP_FACTORIES = """import importlib.util
import sys
from pathlib import Path

FILE = Path(__file__).resolve().parent.parent.parent / "me+blocks@0123456789" / "verdict_models.py"


def models():
    if "blocks_under_test" not in sys.modules:
        spec = importlib.util.spec_from_file_location("blocks_under_test", FILE)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["blocks_under_test"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["blocks_under_test"]


def make_torch():
    return models().make_mlp()


def make_flax():
    return models().LinenMLPBlock()
"""

MLP_HAND = """import json

import jax
import numpy as np
import torch

from factories import make_flax, make_torch

tm, fm = make_torch().double(), make_flax()
sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
params = {
    "ln": {"scale": sd["ln.weight"], "bias": sd["ln.bias"]},
    "fc": {"kernel": sd["fc.weight"].T, "bias": sd["fc.bias"]},
    "proj": {"kernel": sd["proj.weight"].T, "bias": sd["proj.bias"]},
}
x = np.random.default_rng(1).standard_normal((4, 5, 8))
jax.config.update("jax_enable_x64", True)
ref = tm(torch.from_numpy(x)).detach().numpy()
out = np.asarray(fm.apply({"params": params}, x))
rel = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))
print(json.dumps({"rel_l2": rel, "float64_rel_l2": rel, "note": "float64 both sides"}))
"""


@pytest.mark.slow  # 3 to 4 min on the 2-core dev box under load (map, two checks, two hand runs)
def test_the_script_runs_the_hand_conversion_and_names_an_injected_fault(tmp_path, capsys):
    fields = "label,torch_repo,torch_commit,torch_path,flax_repo,flax_commit,flax_path,flax_kind,constructs"
    row = "mlp,me/blocks,0123456789ab,verdict_models.py,me/blocks,0123456789ab,verdict_models.py,linen,ln"
    manifest = tmp_path / "pairs.csv"
    manifest.write_text(f"{fields}\n{row}\n")
    (tmp_path / "me+blocks@0123456789").mkdir()
    shutil.copy(REPO / "tests" / "verdict_models.py", tmp_path / "me+blocks@0123456789" / "verdict_models.py")
    pair = tmp_path / "pairs" / "mlp"
    pair.mkdir(parents=True)
    (pair / "factories.py").write_text(MLP_FACTORIES)
    (pair / "hand.py").write_text(MLP_HAND)
    faults = [
        {"name": "ln-eps", "file": "flax", "replace": ["epsilon: float = 1e-5", "epsilon: float = 1e-6"]},
        {"name": "absent", "file": "flax", "replace": ["no such text", "x"]},
    ]
    spec = {"torch": "factories.py:make_torch", "flax": "factories.py:make_flax", "input_shape": "4,5,8"}
    (pair / "pair.json").write_text(json.dumps({**spec, "channels_last": False, "faults": faults}))
    assert ports_realworld.main([str(tmp_path), "--manifest", str(manifest)]) == 0
    report = json.loads((tmp_path / "ports_realworld.json").read_text())
    assert report["date"] and report["machine"]
    (r,) = report["pairs"]
    assert r["check"]["exit"] == 0 and r["check"]["layer"] == "", r["check"]
    assert r["hand"]["exit"] == 0 and r["hand"]["rel_l2"] < 1e-12  # float64 on both sides
    eps, absent = r["faults"]
    assert eps["check"]["exit"] == 1 and eps["check"]["verdict"].startswith("FAIL")
    assert (eps["check"]["layer"], eps["check"]["kind"]) == ("ln", "output"), eps["check"]
    assert eps["check"]["cause"] == "ln: epsilon 1e-06 in the port, 1e-05 in torch"
    assert eps["hand"]["rel_l2"] > 1e-8  # the hand conversion sees the fault too
    assert "occurs 0 times" in absent["error"]
    assert (tmp_path / "me+blocks@0123456789" / "verdict_models.py").read_text().count("= 1e-5") == 1
    printed = capsys.readouterr().out
    assert "fault ln-eps" in printed and "at ln (output): ln: epsilon 1e-06" in printed
