"""Writing a study's outputs as one set: ``results.json``, ``curves.png``, ``report.md``.

The files are staged in ``--out`` and moved over the previous ones in one short step with
SIGINT/SIGTERM held back, so an interrupt leaves the previous set or the new one, never a mix;
:func:`clean_stale` removes what a killed run left. When ``--out`` fails after training,
:func:`save_results_elsewhere` keeps ``results.json``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from parity.io import atomic_write_text, ensure_writable_dir
from parity.study.config import StudyError
from parity.study.partial import PARTIAL_DIR
from parity.study.report import render_report, to_json
from parity.study.stats import summarize

#: output key -> file name, in the order they are written
OUTPUT_FILES = {"results": "results.json", "curves": "curves.png", "report": "report.md"}
STAGING_PREFIX = ".study-staging-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def check_output_names(out: Path) -> None:
    """Refuse (:class:`StudyError`) an output directory where one of the three output names is
    taken by something other than a regular file (a directory, a FIFO, a device): replacing it
    would delete or break what the user keeps there."""
    for name in OUTPUT_FILES.values():
        path = out / name
        if path.exists() and not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise StudyError(
                f"{path} is {kind}; the study writes a file of that name: move it or choose another --out"
            )


def clean_stale(out: Path) -> list[Path]:
    """Remove from ``out`` what a killed run left: staging directories whose process is gone,
    and ``atomic_open`` temporary files of the three outputs. Returns what was removed."""
    removed = []
    for entry in out.iterdir():
        name = entry.name
        if name.startswith(STAGING_PREFIX) and entry.is_dir():
            pid = name[len(STAGING_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        elif name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in OUTPUT_FILES.values()):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back inside the block and deliver the first one after it (only in
    the main thread, where Python handles signals; elsewhere the block runs as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    wanted = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in wanted}
    for s in wanted:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])


def _commit(staged: dict[str, Path], out: Path, backup: Path) -> dict[str, Path]:
    """Move the staged files into ``out`` as one set (see the module doc); ``backup`` holds the
    previous files while they are replaced."""
    backup.mkdir()
    kept, placed = [], []
    with _signals_held():
        try:
            for src in staged.values():
                if (out / src.name).is_file():
                    os.replace(out / src.name, backup / src.name)
                    kept.append(src.name)
                os.replace(src, out / src.name)
                placed.append(src.name)
        except OSError:
            for name in placed:
                with contextlib.suppress(OSError):
                    os.unlink(out / name)
            for name in kept:
                with contextlib.suppress(OSError):
                    os.replace(backup / name, out / name)
            raise
    return {key: out / src.name for key, src in staged.items()}


def write_outputs(results: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.json`` (with the summary), ``curves.png`` and ``report.md`` into
    ``out_dir`` as one set (see the module doc); return their paths. Refuses an output name
    taken by a directory or special file (:func:`check_output_names`); the finished variants
    kept for a resume (:mod:`parity.study.partial`) are removed once the set is in place."""
    from parity.study.plots import plot_curves

    out = ensure_writable_dir(out_dir)
    check_output_names(out)
    clean_stale(out)
    summary = summarize(results)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    try:
        staged = {key: staging / name for key, name in OUTPUT_FILES.items()}
        atomic_write_text(staged["results"], to_json(results | {"summary": summary}))
        plot_curves(results, summary, staged["curves"])
        atomic_write_text(staged["report"], render_report(results, summary))
        paths = _commit(staged, out, staging / "previous")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)
    return paths


def save_results_elsewhere(results: dict) -> tuple[Path | None, list[str]]:
    """Save ``results.json`` (with the summary when it can be computed) in a fresh directory
    under the system temp directory, or else in the current directory. Returns the file, or
    ``None``, and the places that failed, each with its error."""
    try:
        text = to_json(results | {"summary": summarize(results)})
    except Exception:  # a summary that cannot be computed must not lose the numbers
        text = to_json(results)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    failed = []
    for make in (
        lambda: Path(tempfile.mkdtemp(prefix="parity-study-")) / "results.json",
        lambda: Path.cwd() / f"parity-study-results-{stamp}.json",
    ):
        path = None
        try:
            path = make()
            atomic_write_text(path, text)
            return path, failed
        except OSError as e:
            failed.append(f"{path or tempfile.gettempdir()}: {e.strerror or e}")
    return None, failed
