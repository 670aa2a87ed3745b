"""``parity.port`` on public PyTorch models (issue 23): the generated NNX and Linen ports of
the real-ports pairs (a GPT with a tied head and a causal-mask buffer, torchvision's ResNet-18,
torchvision's ViT) pass the harness layer by layer, as the project's own zoo does in
``tests/test_port_generate.py``.

The public files are not part of this project: the tests read the local folder named by the
environment variable ``PARITY_REALWORLD`` (laid out as for ``scripts/ports_realworld.py``:
``ROOT/pairs/<label>/{pair.json,factories.py}``, the factory ``make_torch`` building a small
configuration) and skip when it is unset or lacks the pair.

Tolerances: as in ``tests/test_port_generate.py`` (float32 rows judged at the harness default and
by its float64 pass; the float64 per-layer bound 1e-12, and 1e-11 in train mode for ResNet-18,
whose last BatchNorm normalises 2 values per channel at batch 2 and 32x32).

``PARITY_PORT_RECORD=FILE`` appends one JSON line per case to FILE (stubs, worst float64
difference per mode, seconds) for ``docs/results/port_realworld.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.harness.specs import SpecInput, SpecModels
from parity.port import build_port
from parity.testing import LocalizeOptions, assert_parity
from tests.test_port_generate import FLOAT64_PORT_BOUND, float64_worst

PAIRS = {"gpt": FLOAT64_PORT_BOUND, "resnet18": 1e-11, "vit": FLOAT64_PORT_BOUND}  # train-mode bound


def _pair_dir(label: str) -> Path:
    root = os.environ.get("PARITY_REALWORLD")
    if not root:
        pytest.skip("PARITY_REALWORLD is unset (the local folder of public models, see the docstring)")
    folder = Path(root) / "pairs" / label
    if not (folder / "pair.json").is_file() or not (folder / "factories.py").is_file():
        pytest.skip(f"{folder} has no pair.json and factories.py")
    return folder


SEEDED = """import importlib.util
import sys

import torch

NAME = {name!r}
if NAME not in sys.modules:
    spec = importlib.util.spec_from_file_location(NAME, {path!r})
    sys.modules[NAME] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[NAME])


def make():
    torch.manual_seed(0)
    return sys.modules[NAME].make_torch()
"""


def _seeded_factory(folder: Path, tmp_path: Path) -> Path:
    """A file whose ``make()`` is the pair's ``make_torch()`` built from seed 0 (the float64
    train-mode difference of ResNet-18 depends on the weights: 3e-12 to 1.1e-11 unseeded)."""
    path = tmp_path / f"seeded_{folder.name}.py"
    name = f"port_realworld_{folder.name}"
    path.write_text(SEEDED.format(name=name, path=str(folder / "factories.py")))
    return path


def _make(path: Path) -> torch.nn.Module:
    """``make()`` of the file at ``path``."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make()


def _example(spec: SpecInput) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.dtype(spec.dtype).kind in "iu":
        return rng.integers(0, spec.high, spec.shape).astype(spec.dtype)
    return rng.standard_normal(spec.shape).astype(spec.dtype)


# 1.5-56 s per case on the 2-core dev box (load average 4-11), each case's seconds in
# docs/results/port_realworld.json
@pytest.mark.slow
@pytest.mark.parametrize("style", ["nnx", "linen"])
@pytest.mark.parametrize("label", sorted(PAIRS))
def test_public_model_port_passes(tmp_path, label, style):
    folder = _pair_dir(label)
    config = json.loads((folder / "pair.json").read_text(encoding="utf-8"))
    shape = tuple(int(s) for s in config["input_shape"].split(","))
    dtype = config.get("input_dtype", "float32")
    start = time.perf_counter()
    factory = _seeded_factory(folder, tmp_path)
    model = _make(factory)
    x = _example(SpecInput(shape, dtype, config.get("input_high")))
    port = build_port(model, torch.from_numpy(x), style)
    assert port.stubs == (), [s.message for s in port.stubs]
    path = tmp_path / f"{label}_{style}.py"
    path.write_text(port.source)
    spec = SpecModels(
        f"{factory}:make",
        f"{path}:make",
        SpecInput(shape, dtype, config.get("input_high"), channels_last=port.channels_last),
    )
    pair = spec.pair("cpu")
    worst = {}
    for mode in ("eval", "train"):
        reports = assert_parity(pair, x, LocalizeOptions(mode=mode))
        assert reports[0].meta["float64"].startswith("every layer judged in float64"), reports[0].meta
        assert len(reports[0].rows) > 3
        worst[mode] = float64_worst(pair, x, mode == "train")
    assert worst["eval"] < FLOAT64_PORT_BOUND, f"eval: float64 port difference {worst['eval']:.3g}"
    assert worst["train"] < PAIRS[label], f"train: float64 port difference {worst['train']:.3g}"
    record = os.environ.get("PARITY_PORT_RECORD")
    if record:
        row = {"pair": label, "style": style, "stubs": [s.message for s in port.stubs], "float32": "pass"}
        row |= {"float64_worst": worst, "seconds": round(time.perf_counter() - start, 1)}
        row["load"] = os.getloadavg()[0]
        with open(record, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")


@pytest.mark.slow  # 3-16 s (load average 4)
def test_square_token_activations_are_read_as_tokens(tmp_path):
    """Our own nanoGPT-shaped model with 8 tokens of width 8, so every ``(N, T, D)`` activation
    is square: its port agrees layer by layer, input rows included (the harness once read such
    an input channels-first and failed every Linear/Dropout input row; the layout of the
    model's input now decides, :func:`parity.layout.ambiguous_layout`)."""
    from tests import port_gen_models

    model = port_gen_models.DictGPT(vocab=11, width=8, block=8)
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    port = build_port(model, torch.from_numpy(x), "nnx")
    path = tmp_path / "gpt.py"
    path.write_text(port.source)
    factory = tmp_path / "square.py"
    factory.write_text(
        "import torch\nfrom tests import port_gen_models\n\n\ndef make():\n    torch.manual_seed(0)\n"
        "    return port_gen_models.DictGPT(vocab=11, width=8, block=8)\n"
    )
    pair = SpecModels(f"{factory}:make", f"{path}:make", SpecInput((2, 8), "int64", 11, False)).pair("cpu")
    assert_parity(pair, x, LocalizeOptions(mode="eval"))
