"""``parity study`` with bad input and failures around the write phase: nothing finished is lost,
nothing is half-written, and what a killed run left behind is cleaned up.

Training is replaced by one tiny recorded run (2 torch variants, 8x8 digits, 1 seed x 2
epochs) wherever the test is about the command rather than the training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from parity import cli
from parity.io import json_safe
from parity.study import driver as study_driver
from parity.study import outputs
from parity.study import runners as study_runners
from parity.study.config import StudyConfig, StudyError
from parity.study.driver import run_study
from parity.study.partial import PARTIAL_DIR
from parity.study.runners import EpochClock, configure_runtime

TINY = dict(
    dataset="digits",
    seeds=1,
    epochs=2,
    batch_size=32,
    train_subset=256,
    device="cpu",
    variants=("torch_correct", "torch_seed_bug"),
    model_config={"channels": (4, 8), "hidden": 16},
)


@pytest.fixture(scope="module")
def tiny():
    return run_study(StudyConfig(**TINY), progress=False)


def _study(out, *extra: str) -> int:
    argv = ["study", "--dataset", "digits", "--seeds", "1", "--epochs", "2", "--device", "cpu"]
    return cli.main(
        [*argv, "--variants", "torch_correct,torch_seed_bug", "--out", str(out), "--no-progress", *extra]
    )


@pytest.fixture
def trained(tiny, monkeypatch):
    """The command's training returns the recorded tiny run instantly."""
    monkeypatch.setattr(study_driver, "run_study", lambda config, progress, runtime, keep=None: tiny)
    return tiny


def _no_training(*a, **k):
    raise AssertionError("training started")


def _files(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


# ------------------------------------------------------------------------------- write failures


def test_a_failed_write_after_training_prints_the_table_and_saves_results_elsewhere(
    trained, tmp_path, monkeypatch, capsys
):
    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("parity.study.plots.plot_curves", disk_full)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert _study(tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert "torch_seed_bug" in captured.out and "audit" in captured.out  # the table
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "No space left on device" in err and "results.json saved to" in err
    saved = err.split("results.json saved to ", 1)[1].split()[0].rstrip(";")
    data = json.loads(open(saved).read())
    assert list(data["variants"]) == ["torch_correct", "torch_seed_bug"] and "summary" in data
    assert saved.startswith(str(tmp_path / "tmp"))
    assert _files(tmp_path / "out") == {}  # nothing half-written where it failed


def test_when_nothing_is_writable_the_error_says_where_it_tried(trained, tmp_path, monkeypatch, capsys):
    def unwritable(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(outputs, "atomic_write_text", unwritable)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert _study(tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "results.json could not be saved anywhere" in err and "Read-only file system" in err
    assert str(tmp_path) in err.split("also failed:", 1)[1]


def test_an_interrupt_while_writing_leaves_the_previous_set(trained, tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    outputs.write_outputs(tiny | {"created_utc": "previous"}, out)
    before = _files(out)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs, "render_report", interrupted)  # the last file of the set
    assert _study(out) == 130
    assert _files(out) == before
    assert "never a mix" in capsys.readouterr().err


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler, as in a fresh ``parity study`` process: earlier tests in the
    same process (torch.multiprocessing, jax) may have installed another one."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_interrupt_while_the_files_are_moved_in_lets_the_new_set_finish(
    tiny, tmp_path, monkeypatch, python_sigint
):
    out = tmp_path / "out"
    outputs.write_outputs(tiny | {"created_utc": "previous"}, out)
    real_replace = os.replace

    def replace_then_sigint(src, dst):
        real_replace(src, dst)
        if str(dst) == str(out / "results.json"):  # the new results.json is in; two files to go
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_sigint)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_outputs(tiny | {"created_utc": "new"}, out)
    monkeypatch.undo()
    assert json.loads((out / "results.json").read_text())["created_utc"] == "new"
    assert "run new" in (out / "report.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["curves.png", "report.md", "results.json"]


def test_stale_temporary_files_of_a_killed_run_are_removed_by_the_next(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / f"{outputs.STAGING_PREFIX}{dead.pid}-abc"
    stale.mkdir()
    (stale / "results.json").write_text("{")
    (out / ".results.json.k2j3.tmp").write_text("{")
    (out / ".curves.png.x.tmp").write_bytes(b"\x89")
    alive = out / f"{outputs.STAGING_PREFIX}1-live"  # pid 1 runs: another writer's, kept
    alive.mkdir()
    (out / "notes.tmp").write_text("the user's")  # not ours: kept
    outputs.write_outputs(tiny, out)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["curves.png", "report.md", "results.json", alive.name, "notes.tmp"])


# ---------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("variant", ["torch_correct", "linen", "nnx_view"])
def test_batch_size_one_is_refused_for_every_framework_with_one_message(
    variant, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(study_driver, "run_study", _no_training)
    code = cli.main(
        ["study", "--variants", variant, "--batch-size", "1", "--out", str(tmp_path), "--device", "cpu"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        "parity study: batch size must be >= 2, got 1: BatchNorm in training mode needs more "
        "than one example per batch (torch refuses batch 1, Flax would silently zero the dense "
        "layer's normalised activations)\n"
    )


@pytest.mark.parametrize("out", ["", "  "])
def test_an_empty_out_is_refused(out, monkeypatch, capsys):
    monkeypatch.setattr(study_driver, "run_study", _no_training)
    assert cli.main(["study", "--quick", "--device", "cpu", "--out", out]) == 2
    assert "--out is empty" in capsys.readouterr().err


# ------------------------------------------------------------------------------ device, timing


def test_device_auto_falls_back_to_the_cpu_with_a_warning_when_jax_has_no_gpu(monkeypatch):
    import jax
    import torch

    from parity.device import DeviceError, configure

    def no_gpu_backend(backend=None):
        if backend == "gpu":
            raise RuntimeError("Unknown backend: 'gpu' requested")
        return real_devices(backend)

    real_devices = jax.devices
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(jax, "devices", no_gpu_backend)
    warnings: list[str] = []
    try:
        runtime = configure_runtime("auto", "strict", warn=warnings.append)
        assert runtime.device == "cpu" and runtime.settings["jax_backend"] == "cpu"
        assert len(warnings) == 1 and "running both frameworks on the CPU" in warnings[0]
        with pytest.raises(DeviceError, match="jax does not"):
            configure_runtime("cuda", "strict", warn=warnings.append)  # explicit cuda: no fallback
    finally:
        monkeypatch.undo()
        configure("cpu", "strict")


def test_the_help_says_what_auto_does():
    import argparse

    from parity.commands import study as study_command

    parser = argparse.ArgumentParser()
    study_command.add_arguments(parser)
    help_text = " ".join(parser.format_help().split())
    assert "auto: the GPU when torch and jax both see one, else the CPU" in help_text


def test_results_separate_the_first_epoch_from_the_steady_state(tiny):
    for r in tiny["variants"].values():
        t = r["timing"]
        assert len(t["epoch_s"]) == 2 and t["first_epoch_s"] == t["epoch_s"][0]
        assert t["steady_epoch_s"] == t["epoch_s"][1] and t["steady_steps_per_s"] > 0
        assert sum(t["epoch_s"]) <= r["wall_time_s"]


def test_the_epoch_clock_sums_seeds_per_epoch_and_takes_the_median_after_the_first(monkeypatch):
    now = iter([0.0, 10.0, 11.0, 12.0, 100.0, 101.0, 103.0, 104.0])  # 2 seeds x 3 epochs
    monkeypatch.setattr(study_runners.time, "perf_counter", lambda: next(now))
    clock = EpochClock(steps_per_epoch=5)
    for start in range(2):
        if start:
            clock.restart()  # the second seed's set-up (100 - 12) is not an epoch
        for epoch in range(3):
            clock.tick(epoch)
    t = clock.timing()
    assert t["epoch_s"] == [11.0, 3.0, 2.0] and t["first_epoch_s"] == 11.0
    assert t["steady_epoch_s"] == 2.5 and t["steady_steps_per_s"] == pytest.approx((10 / 3 + 10 / 2) / 2)


# ------------------------------------------------------------------------- nothing of the user's lost


def test_an_output_name_taken_by_a_directory_is_refused_and_kept(trained, tmp_path, capsys):
    # before: results.json/ was moved aside as "the previous results.json" and deleted, exit 0
    out = tmp_path / "out"
    (out / "results.json").mkdir(parents=True)
    (out / "results.json" / "mine.txt").write_text("the user's")
    assert _study(out) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("parity study: ")
        and "results.json is a directory" in err
        and len(err.splitlines()) == 1
    )
    assert (out / "results.json" / "mine.txt").read_text() == "the user's"
    with pytest.raises(StudyError, match="is a directory"):
        outputs.write_outputs(trained, out)
    assert (out / "results.json" / "mine.txt").read_text() == "the user's"


_TRAIN_VARIANT = study_driver._train_variant  # the real one, whatever a test patched


def _interrupt_at(variant: str, monkeypatch) -> list[str]:
    """Make the driver raise KeyboardInterrupt when it starts ``variant``; returns the variants
    it trained (started), in order."""
    trained, real = [], _TRAIN_VARIANT

    def train(name, *a, **k):
        trained.append(name)
        if name == variant:
            raise KeyboardInterrupt
        return real(name, *a, **k)

    monkeypatch.setattr(study_driver, "_train_variant", train)
    return trained


def _seeds(results: dict) -> dict:
    return {v: json.loads(json.dumps(json_safe(r["seeds"]))) for v, r in results["variants"].items()}


def test_an_interrupted_study_keeps_its_finished_variants_and_resumes_them(tiny, tmp_path, monkeypatch):
    # before: Ctrl-C threw away every finished variant
    _interrupt_at("torch_seed_bug", monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_study(StudyConfig(**TINY), progress=False, keep=tmp_path)
    assert sorted(p.name for p in (tmp_path / PARTIAL_DIR).iterdir()) == ["torch_correct.json"]
    trained = _interrupt_at("none", monkeypatch)
    results = run_study(StudyConfig(**TINY), progress=False, keep=tmp_path)
    assert trained == ["torch_seed_bug"] and results["resumed_variants"] == ["torch_correct"]
    assert _seeds(results) == _seeds(tiny)  # the numbers of an uninterrupted run
    other = _interrupt_at("none", monkeypatch)  # another configuration resumes nothing
    run_study(StudyConfig(**{**TINY, "epochs": 1}), progress=False, keep=tmp_path)
    assert other == ["torch_correct", "torch_seed_bug"]


def test_ctrl_c_in_the_command_names_what_it_kept_and_the_next_run_clears_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _interrupt_at("torch_seed_bug", monkeypatch)
    assert _study(out) == 130
    err = capsys.readouterr().err
    assert "finished variants kept in" in err and "torch_correct" in err and "resume" in err
    assert (out / PARTIAL_DIR / "torch_correct.json").is_file() and not (out / "results.json").exists()
    _interrupt_at("none", monkeypatch)
    assert _study(out) == 0
    assert "resumed torch_correct" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["resumed_variants"] == ["torch_correct"]
    assert not (out / PARTIAL_DIR).exists()


def test_report_names_the_cpu_and_its_isa_and_no_other_machines_timings(tiny, tmp_path):
    report = outputs.write_outputs(tiny, tmp_path)["report"].read_text()
    env = tiny["environment"]
    assert f"- CPU: {env['cpu']}; torch CPU capability" in report
    assert f"capability (the vector ISA its float32 kernels use) {env['torch_cpu_capability']}" in report
    assert env["torch_cpu_capability"] in ("DEFAULT", "VSX", "Z VECTOR", "NO AVX", "AVX2", "AVX512", "SVE256")
    assert "dev box" not in report  # the developers' timings stay in docs/STUDY.md
