"""``parity port``: exit codes, the output folder (atomic, refused when it holds work), the
weights written, ``train_step.py`` (runs one step), the stub list of an untranslatable model,
the check run on the written port, and the generated example in docs/examples/.

Models: ``tests/port_cli_models.py`` (seeded). The happy path on a tiny MLP runs in the default
set; the digits CNN in both styles is slow (a full ``check --localize`` each).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from parity.cli import main

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "port_cli_models.py"
EXAMPLE = ROOT / "docs" / "examples" / "port_digits_nnx.py"


def port(out: Path, model: str, shape: str, *extra: str) -> int:
    return main(["port", "--torch", f"{MODELS}:{model}", "--input-shape", shape, "--out", str(out), *extra])


def run_train_step(folder: Path) -> subprocess.CompletedProcess:
    """``python DIR/train_step.py`` from another directory, without this repository on the path:
    the generated files stand alone."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, str(folder / "train_step.py")],
        cwd=folder.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------- refusals: exit 2, one line


def test_a_non_empty_folder_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "port"
    out.mkdir()
    (out / "mine.py").write_text("work\n")
    assert port(out, "tiny", "4,6") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not empty; give --force" in err
    assert [p.name for p in out.iterdir()] == ["mine.py"]


def test_a_file_as_out_is_refused(tmp_path, capsys):
    out = tmp_path / "port"
    out.write_text("x")
    assert port(out, "tiny", "4,6") == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert out.read_text() == "x"


def test_a_symlink_as_out_is_refused_and_its_folder_kept(tmp_path, capsys):
    """The staged folder is renamed over DIR: over a link it would replace the link, so a link
    is refused (even with --force) and the folder it points to is left as it was."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    link = tmp_path / "port"
    link.symlink_to(folder)
    for force in ([], ["--force"]):
        argv = ["port", "--torch", f"{MODELS}:tiny", "--input-shape", "4,6", "--out", str(link), *force]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is a symbolic link" in err, err
    assert link.is_symlink() and [p.name for p in folder.iterdir()] == ["notes.txt"]


def test_a_bad_spec_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "port"
    assert (
        main(["port", "--torch", "no_such_module_xyz:make", "--input-shape", "4,6", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("parity port: ") and err.count("\n") == 1 and "no_such_module_xyz" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 2.3 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_a_keyword_input_is_ported_and_checked(tmp_path, capsys):
    """``--input mask=4,4``: the port takes ``mask`` as a keyword-only argument, the check passes
    it by name to both models, and train_step.py draws it and passes it by name."""
    out = tmp_path / "port"
    assert port(out, "keyword_mask", "4,6", "--input", "mask=4,4") == 0
    assert "port verified" in capsys.readouterr().out
    assert "def __call__(self, x: jax.Array, *, mask: jax.Array)" in (out / "model.py").read_text()
    assert "mask=mask" in (out / "train_step.py").read_text()


def test_an_unknown_keyword_input_is_one_line(tmp_path, capsys):
    out = tmp_path / "port"
    assert port(out, "tiny", "4,6", "--input", "mask=4,6") == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the "# generating" progress line
    assert last == "parity port: keyword input 'mask': no parameter of forward after the inputs"
    assert not out.exists()


# --------------------------------------------------------------------- the folder is atomic


def test_an_interrupted_write_leaves_nothing(tmp_path):
    from parity.port.output import staged_folder

    out = tmp_path / "port"
    with pytest.raises(KeyboardInterrupt), staged_folder(out, force=False) as tmp:
        (tmp / "model.py").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_the_whole_folder(tmp_path):
    from parity.port.output import staged_folder

    out = tmp_path / "port"
    out.mkdir()
    (out / "old.py").write_text("old")
    with staged_folder(out, force=True) as tmp:
        (tmp / "model.py").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["port"]
    assert [p.name for p in out.iterdir()] == ["model.py"]


# -------------------------------------------------------------------- untranslatable: exit 1


def test_a_data_dependent_if_gives_the_stub_and_a_partial_port(tmp_path, capsys):
    out = tmp_path / "port"
    assert port(out, "gate", "4,4") == 1
    text = capsys.readouterr().out
    assert "left to write by hand (1 stub(s)" in text
    stub = next(line for line in text.splitlines() if line.startswith("  "))
    assert "data-dependent" in stub and "Gate.forward" in stub and "port_cli_models.py:" in stub
    assert "parity check runs once the stubs are written" in text
    source = (out / "model.py").read_text()
    assert "NotImplementedError" in source and "class Gate" in source
    compile(source, "model.py", "exec")  # the partial port is valid Python


# ------------------------------------------------------------------------- the happy path


def _torch_state(model: str) -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location("port_cli_models_state", MODELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {k: v.detach().numpy() for k, v in getattr(module, model)().state_dict().items()}


@pytest.mark.slow  # 7.1 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_tiny_mlp_nnx_passes_writes_weights_and_a_train_step_that_runs(tmp_path, capsys, monkeypatch):
    from flax import serialization
    from safetensors.numpy import load_file

    import parity.harness.specs as specs

    built = []
    real = specs.build_pair
    monkeypatch.setattr(specs, "build_pair", lambda *a, **k: built.append(a) or real(*a, **k))
    out = tmp_path / "port"
    assert port(out, "tiny", "4,6", "--to", "nnx") == 0
    assert len(built) == 1  # the check ran on the pair whose weights were written, not a new one
    text = capsys.readouterr().out
    assert "PASS: " in text and "port verified" in text and "layers_train_max_rel_l2" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "model.py",
        "train_step.py",
        "weights.msgpack",
        "weights.safetensors",
    ]
    weights = serialization.msgpack_restore((out / "weights.msgpack").read_bytes())
    torch_state = _torch_state("tiny")
    np.testing.assert_array_equal(weights["fc2"]["kernel"], torch_state["fc2.weight"].T)
    np.testing.assert_array_equal(weights["bn"]["var"], torch_state["bn.running_var"])
    flat = load_file(str(out / "weights.safetensors"))
    np.testing.assert_array_equal(flat["fc1/kernel"], weights["fc1"]["kernel"])
    assert set(flat) == {f"{m}/{k}" for m, leaves in weights.items() for k in leaves}
    done = run_train_step(out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "one training step, loss" in done.stdout


@pytest.mark.slow  # 2.3 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_a_port_that_fails_the_check_exits_1(tmp_path, capsys, monkeypatch):
    """A generator slip (ReLU written as tanh) is caught by the check the command runs."""
    import dataclasses

    import parity.port

    real = parity.port.build_port

    def slipped(module, example_input, style="nnx", **keywords):
        p = real(module, example_input, style, **keywords)
        assert "jax.nn.relu(" in p.source
        return dataclasses.replace(p, source=p.source.replace("jax.nn.relu(", "jax.nn.tanh("))

    monkeypatch.setattr(parity.port, "build_port", slipped)
    out = tmp_path / "port"
    assert port(out, "tiny", "4,6", "--to", "linen") == 1
    text = capsys.readouterr().out
    assert "FAIL: " in text and "port NOT verified" in text
    assert "jax.nn.tanh(" in (out / "model.py").read_text()  # written: the user sees what failed


@pytest.mark.slow  # 2-core box under load: ~60-120 s per style (one full check --localize each)
@pytest.mark.parametrize("style", ["nnx", "linen"])
def test_digits_cnn_port_passes_and_its_train_step_runs(tmp_path, capsys, style):
    out = tmp_path / f"digits_{style}"
    assert port(out, "digits", "4,1,8,8", "--to", style) == 0
    text = capsys.readouterr().out
    assert "port verified" in text and "bn_running_var_corrected_rel_l2" in text
    source = (out / "train_step.py").read_text()
    if style == "linen":
        assert "train=True" in source and "train=False" in source and 'mutable=["batch_stats"]' in source
    else:
        assert "model.train()" in source and "nnx.view(model, **EVAL_MODE)" in source
    done = run_train_step(out)
    assert done.returncode == 0, done.stderr[-2000:]


# ------------------------------------------------------------------------ train_step.py text


@pytest.mark.parametrize("style", ["nnx", "linen"])
@pytest.mark.parametrize("tensor_output", [True, False])
def test_train_step_source_is_ruff_clean(tmp_path, style, tensor_output):
    """The generated example passes ruff's defaults (format and lint) as written."""
    from parity.port.output import ExampleInput, ModelFacts
    from parity.port.train_step import train_step_source

    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed")
    inputs = [ExampleInput((4, 8, 8, 1)), ExampleInput((4, 7), "int32", 11)]
    text = train_step_source(
        style, "pkg.module:a_rather_long_factory_name", inputs, ModelFacts(tensor_output=tensor_output)
    )
    path = tmp_path / "train_step.py"
    path.write_text(text)
    for args in (["format", "--isolated", "--check"], ["check", "--isolated", "--select", "E,F,W,I,B"]):
        done = subprocess.run([ruff, *args, str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


# --------------------------------------------------------------------- the example in docs/


def test_the_docs_example_is_what_the_generator_writes():
    """docs/examples/port_digits_nnx.py is `parity port --torch torch_impl.models:DigitsCNN
    --input-shape 4,1,8,8 --to nnx`'s model.py; regenerate it when the generator changes."""
    from parity.port import generate
    from torch_impl.models import DigitsCNN

    torch.manual_seed(0)
    assert generate(DigitsCNN(), torch.zeros(4, 1, 8, 8), "nnx") == EXAMPLE.read_text()


def test_the_migration_guides_excerpt_is_in_the_docs_example():
    """MIGRATION.md shows the example's ``__call__`` in a ```py block: it must be the file's text."""
    text = (ROOT / "MIGRATION.md").read_text(encoding="utf-8")
    excerpt = text[text.index("### The port written for you") :].split("```py\n", 1)[1].split("```", 1)[0]
    assert "def __call__" in excerpt and excerpt in EXAMPLE.read_text()


def test_a_port_whose_weights_do_not_convert_exits_1_with_model_py_written(tmp_path, capsys, monkeypatch):
    """A generator slip in a layer name leaves a torch key unpaired: the port is written for the
    user to see, without weights, and the command says why (exit 1)."""
    import dataclasses

    import parity.port

    real = parity.port.build_port

    def renamed(module, example_input, style="nnx", **keywords):
        p = real(module, example_input, style, **keywords)
        assert "self.fc2" in p.source
        return dataclasses.replace(p, source=p.source.replace("self.fc2", "self.head"))

    monkeypatch.setattr(parity.port, "build_port", renamed)
    out = tmp_path / "port"
    assert port(out, "tiny", "4,6") == 1
    text = capsys.readouterr().out
    assert "FAIL: the port's weights do not convert" in text and "fc2" in text
    assert [p.name for p in out.iterdir()] == ["model.py"]
