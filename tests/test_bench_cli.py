"""``parity bench``'s input checks: bad output paths and empty lists are refused with one line
on stderr and exit 2 before any work starts (nothing measured, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from parity import cli
from parity.commands import bench as bench_command


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the benchmark starts."""

    def started(*a, **k):
        raise AssertionError("the benchmark ran despite bad input")

    monkeypatch.setattr(bench_command, "benchmark", started)


def _run(argv: list[str]) -> int:
    """``parity bench --device cpu ARGV`` through :func:`parity.cli.main` (which prints errors)."""
    return cli.main(["bench", "--device", "cpu", *argv])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("parity bench: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_an_output_path_that_is_a_directory_is_refused_before_work(capsys, tmp_path, no_work, flag):
    assert _run([flag, str(tmp_path)]) == 2
    assert "directory" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flag, name, accepted",
    [("--json", "bench.txt", ".json"), ("--plot", "bench.xyz", ".png"), ("--plot", "bench", ".svg")],
)
def test_an_unknown_extension_is_refused_before_work(capsys, tmp_path, no_work, flag, name, accepted):
    assert _run([flag, str(tmp_path / name)]) == 2
    line = _one_error_line(capsys)
    assert "unknown extension" in line and accepted in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--batch-sizes", "batch sizes must be integers >= 2, got []"),
        ("--models", "unknown model(s) (none given); choose from digits, signal1d"),
        ("--styles", "unknown style(s) (none given); choose from torch_eager,"),
    ],
)
def test_an_empty_list_is_refused_with_one_line(capsys, no_work, flag, message):
    assert _run([flag, ","]) == 2
    assert message in _one_error_line(capsys)


def test_batch_sizes_comma_exits_2_with_one_line_from_the_command_line():
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "bench", "--batch-sizes", ",", "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["parity bench: batch sizes must be integers >= 2, got []"]


def test_styles_that_cannot_run_on_the_device_are_one_error_not_a_run_of_skipped_rows(capsys, no_work):
    # before: exit 0 and a table whose every row said "skipped"
    assert _run(["--styles", "torch_cudagraph"]) == 2
    line = _one_error_line(capsys)
    assert "nothing to measure on cpu" in line and "torch_cudagraph: CUDA graphs need a CUDA GPU" in line


def test_a_style_that_cannot_run_beside_one_that_can_is_still_a_run(monkeypatch):
    from parity.bench.spec import BenchConfig, check_runnable

    check_runnable(BenchConfig(styles=("torch_cudagraph", "torch_eager"), device="cpu"))  # no error


def test_the_report_names_the_cpu_and_torchs_cpu_capability():
    from types import SimpleNamespace

    import torch

    from parity.bench.output import machine

    m = machine(SimpleNamespace(device="cpu", settings={}))
    assert m["cpu"] and m["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
