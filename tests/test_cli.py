"""The ``parity`` entry point itself."""

import subprocess
import sys

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
