"""``parity lint --jobs N``: the files of one run checked by forked worker processes.

The parent builds the project (module index, every checked file parsed) and forks; the workers
share that state copy-on-write and take the next file index from a shared counter, so a slow
file does not hold up a fixed share of the others.  Each file's findings go back over a pipe
tagged with the file's index, and the parent returns them in index order: the caller merges
them exactly as the serial run does, so the output does not depend on which worker checked
which file.  Where ``fork`` is not available (Windows), the run is serial.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import sys
from collections.abc import Callable
from typing import Any

from parity.errors import ParityError
from parity.lint._stack import with_stack_room

#: the most worker processes a run starts by default (each holds its own analysis caches)
MAX_DEFAULT_JOBS = 8
#: seconds a worker gets to exit after it is told to stop, before it is killed
STOP_GRACE_S = 2.0
_DONE = -1  # the index a worker sends when it has no file left


class LintWorkerError(ParityError):
    """A worker process died before it sent all its results (killed, out of memory, a crash)."""


def default_jobs() -> int:
    """The usable cores of this process (its CPU affinity), at most :data:`MAX_DEFAULT_JOBS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_JOBS))


def can_fork() -> bool:
    """Whether worker processes can share the parent's state (the ``fork`` start method)."""
    return "fork" in multiprocessing.get_all_start_methods()


def worker_count(jobs: int, files: int) -> int:
    """How many workers a run of ``files`` files uses: 1 (serial) without fork or work to share."""
    return max(1, min(jobs, files)) if can_fork() else 1


def run_checks(
    count: int, check: Callable[[int], list], after_each: Callable[[], None], jobs: int
) -> list[list]:
    """``[check(0), ..., check(count - 1)]``, computed by ``jobs`` forked workers (serially for 1).

    ``after_each`` runs after every check in the process that ran it (the collector freeze).
    Raises :class:`LintWorkerError` when a worker dies; KeyboardInterrupt stops every worker."""
    if jobs <= 1 or count < 2:
        return with_stack_room(lambda: _check_all(count, check, after_each))
    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    for stream in (sys.stdout, sys.stderr):  # a forked child flushes its copy of the buffers at exit
        if stream is not None:
            stream.flush()
    workers, readers = [], []
    finished = False
    try:
        for _ in range(jobs):
            reader, writer = context.Pipe(duplex=False)
            worker = context.Process(
                target=_work, args=(counter, count, check, after_each, writer), daemon=True
            )
            worker.start()
            writer.close()
            workers.append(worker)
            readers.append(reader)
        results = _collect(count, dict(zip(readers, workers, strict=True)))
        finished = True
        return results
    finally:
        _stop(workers, finished)


def _check_all(count: int, check: Callable[[int], list], after_each: Callable[[], None]) -> list[list]:
    """The serial run: every file checked in this process, in order."""
    results = []
    for index in range(count):
        results.append(check(index))
        after_each()
    return results


def _work(
    counter: Any, count: int, check: Callable[[int], list], after_each: Callable[[], None], out: Any
) -> None:
    """A worker process: :func:`_claim_and_check` with room on the frame stack."""
    with_stack_room(lambda: _claim_and_check(counter, count, check, after_each, out))


def _claim_and_check(
    counter: Any, count: int, check: Callable[[int], list], after_each: Callable[[], None], out: Any
) -> None:
    """Check the next unclaimed file until none is left, sending ``(index, result)``."""
    try:
        while True:
            with counter.get_lock():
                index = counter.value
                counter.value += 1
            if index >= count:
                out.send((_DONE, None))
                return
            out.send((index, check(index)))
            after_each()
    except KeyboardInterrupt:  # the parent reports the interruption; no traceback per worker
        sys.exit(130)


def _collect(count: int, running: dict[Any, Any]) -> list[list]:
    """Every worker's results, by file index, until each has said it is done."""
    results: list[list | None] = [None] * count
    while running:
        for reader in multiprocessing.connection.wait(list(running)):
            try:
                index, result = reader.recv()
            except EOFError:
                worker = running[reader]
                worker.join(STOP_GRACE_S)
                raise LintWorkerError(
                    f"a worker process died (exit code {worker.exitcode}) before it finished; "
                    "run again with --jobs 1 to check the files in this process"
                ) from None
            if index == _DONE:
                del running[reader]
            else:
                results[index] = result
    missing = [index for index, result in enumerate(results) if result is None]
    if missing:
        raise LintWorkerError(f"{len(missing)} file(s) were not checked by any worker")
    return results  # type: ignore[return-value]


def _stop(workers: list[Any], finished: bool) -> None:
    """Wait for the workers (done: they are exiting); after an error or Ctrl-C, terminate any
    still running, and kill one that does not stop."""
    for worker in workers:
        worker.join(STOP_GRACE_S if finished else 0)
        if worker.is_alive():
            worker.terminate()
            worker.join(STOP_GRACE_S)
        if worker.is_alive():
            worker.kill()
            worker.join()
