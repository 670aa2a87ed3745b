"""The ``parity`` entry point itself."""

import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from parity.cli import COMMANDS, main


def test_no_command_prints_every_command_and_exits_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in COMMANDS)


def test_python_dash_m_parity_runs_lint_without_loading_torch_or_jax(tmp_path):
    script = tmp_path / "ok.py"
    script.write_text("print('no model here')\n")
    code = (
        f"import runpy, sys; sys.argv = ['parity', 'lint', {str(script)!r}]\n"
        "try:\n    runpy.run_module('parity', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    print(e.code, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jax')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []"


def test_ctrl_c_in_any_command_is_one_line_and_exit_130(capsys, monkeypatch):
    """Commands without their own interrupt message (e.g. ``check --data-parallel``, which
    stops its ranks and jax child on the way out) still end in one line, never a traceback."""
    from parity.commands import check

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "run", interrupted)
    assert main(["check", "--data-parallel", "2"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["parity check: interrupted"]


SPECS = Path(__file__).with_name("check_spec_models.py")
IDS = ["--torch", f"{SPECS}:torch_ids", "--flax", f"{SPECS}:linen_ids", "--input-shape", "2,5"]
IDS += ["--no-channels-last"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "Warning" not in err, err
    return lines[0]


def test_map_json_to_a_device_node_fifo_or_symlink(tmp_path, capsys):
    """``/dev/full`` was replaced by a regular file and map exited 0; a FIFO or a symlink became a
    regular file. Now a special file is refused (one line naming it), a symlink written through."""
    fifo, target, link = tmp_path / "fifo", tmp_path / "pairs.json", tmp_path / "link.json"
    os.mkfifo(fifo)
    link.symlink_to(target)
    for path in (["/dev/full"] if os.path.exists("/dev/full") else []) + [str(fifo)]:
        assert main(["map", *IDS, "--input-dtype", "int32", "--json", path]) != 0
        assert f"{path}: cannot write: it is a" in one_line(capsys.readouterr().err)
        assert not stat.S_ISREG(os.lstat(path).st_mode)
    assert main(["map", *IDS, "--input-dtype", "int32", "--json", str(link)]) == 0
    assert link.is_symlink() and json.loads(target.read_text())["ok"] is True


def test_convert_to_a_fifo_or_symlink(tmp_path, capsys):
    import torch

    from torch_impl.models import build_model

    src, fifo, target, link = (tmp_path / n for n in ("w.pt", "fifo.msgpack", "real.msgpack", "l.msgpack"))
    torch.save(build_model("digits", seed=0).state_dict(), src)
    os.mkfifo(fifo)
    link.symlink_to(target)
    assert main(["convert", "--model", "digits", str(src), str(fifo)]) != 0
    assert f"{fifo}: cannot write: it is a FIFO" in one_line(capsys.readouterr().err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert main(["convert", "--model", "digits", str(src), str(link)]) == 0
    assert link.is_symlink() and target.stat().st_size > 0


@pytest.mark.parametrize("command", ["map", "convert"])
def test_a_bogus_input_dtype_is_one_line(tmp_path, capsys, command):
    args = [str(tmp_path / "w.pt"), str(tmp_path / "w.msgpack")] if command == "convert" else []
    assert main([command, *IDS, "--input-dtype", "bogus", *args]) != 0
    assert "--input-dtype 'bogus': not a numeric dtype" in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("where", ["factory", "import"])
def test_a_spec_that_calls_sys_exit_is_one_line_naming_it(tmp_path, capsys, where):
    """It used to end the process silently with the user's exit code."""
    body = "def make():\n    sys.exit(3)\n" if where == "factory" else "sys.exit(3)\ndef make(): pass\n"
    (tmp_path / "exits.py").write_text("import sys\n" + body)
    spec = f"{tmp_path / 'exits.py'}:make"
    assert main(["map", "--torch", spec, "--flax", f"{SPECS}:linen_ids"]) != 0
    line = one_line(capsys.readouterr().err)
    assert spec in line and "sys.exit(3)" in line


def test_a_float64_input_dtype_prints_no_jax_warning_before_the_error(capsys):
    """jax warned that float64 is truncated (jax_enable_x64 is off) before the real error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["map", *IDS, "--input-dtype", "float64"]) != 0
    assert "Input type must be an integer" in one_line(capsys.readouterr().err)


@pytest.mark.slow  # 3.2 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_jax_platforms_without_the_cpu_backend_is_one_line():
    """``JAX_PLATFORMS=cuda`` on a machine without a GPU, ``--device cpu`` or ``auto``: jax
    asserted (a traceback); now one DeviceError line that says what to change. A child process,
    since jax picks its backends once per process (about 5 s: it imports torch and jax)."""
    code = (
        "from parity.device import configure, DeviceError\n"
        "for device in ('cpu', 'auto'):\n"
        "    try:\n        print(device, 'ok', configure(device).device)\n"
        "    except DeviceError as e:\n        print(device, 'error', e)\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cuda")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.strip().splitlines()
    for line, device in zip(lines, ("cpu", "auto"), strict=True):
        if line.startswith(f"{device} ok cuda"):
            continue  # a machine where jax has a CUDA backend: auto picks it
        assert line.startswith(f"{device} error jax has no usable cpu backend with JAX_PLATFORMS='cuda'"), (
            line
        )


def test_check_and_port_let_torchs_openmp_threads_sleep(monkeypatch):
    """``check`` and ``port`` (torch beside a background XLA compile) set
    ``OMP_WAIT_POLICY=PASSIVE`` before torch loads, unless the user chose a policy; other
    commands leave it alone (``bench`` measures torch with its default)."""
    from parity import cli

    for command, given, expected in [
        ("check", None, "PASSIVE"),
        ("port", None, "PASSIVE"),
        ("check", "ACTIVE", "ACTIVE"),
        ("bench", None, None),
        ("lint", None, None),
    ]:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        if given is not None:
            monkeypatch.setenv("OMP_WAIT_POLICY", given)
        cli.configure_threads(command)
        assert os.environ.get("OMP_WAIT_POLICY") == expected, command
