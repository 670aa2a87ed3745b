"""Atomic file output: a file is either absent, or complete. Nothing half-written.

Only a regular file or a new path is ever replaced; a symlink is written through to its target,
and a device, FIFO, socket or directory is refused (:class:`OutputError`, naming the user's path).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from parity.errors import ParityError

_KINDS = {
    stat.S_ISDIR: "a directory",
    stat.S_ISFIFO: "a FIFO",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
}


class OutputError(ParityError, OSError):
    """An output path that cannot be written, named as the user gave it (one line).

    Also an :class:`OSError`, so callers that catch ``OSError`` around a write still do.
    """

    def __init__(self, path: str | os.PathLike, reason: str, errno: int = 0) -> None:
        OSError.__init__(self, errno, reason, os.fspath(path))

    def __str__(self) -> str:
        return f"{self.filename}: cannot write: {self.strerror}"


def output_target(path: str | os.PathLike) -> tuple[Path, int | None]:
    """The file a write to ``path`` replaces, and that file's permission bits (None: a new file).

    A symlink (chain) resolves to its final target, so the link survives and its target gets the
    new content. Anything that exists and is not a regular file raises :class:`OutputError`.
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target, None
    except OSError as e:
        raise OutputError(path, e.strerror or type(e).__name__, e.errno or 0) from None
    if stat.S_ISREG(st.st_mode):
        return target, stat.S_IMODE(st.st_mode)
    kind = next((name for test, name in _KINDS.items() if test(st.st_mode)), "not a regular file")
    raise OutputError(path, f"it is {kind}; only a regular file or a new path is replaced")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``'s target; on success rename it over the target.

    On any exception (including KeyboardInterrupt) the temporary file is removed and ``path``
    is left as it was. ``mode`` is ``"w"`` (text, UTF-8) or ``"wb"``. The target is
    :func:`output_target`: a symlink is written through, a special file refused. A replaced file
    keeps its permission bits; a new one gets ``0o666 & ~umask``. An ``OSError``
    of the write becomes :class:`OutputError` naming ``path``, never the temporary file.
    """
    target, keep_mode = output_target(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise OutputError(path, e.strerror or type(e).__name__, e.errno or 0) from None
    umask = os.umask(0)
    os.umask(umask)
    # mkstemp makes 0600; give the file the usual permissions, or those of the file it replaces
    os.fchmod(fd, 0o666 & ~umask if keep_mode is None else keep_mode)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # an OSError of the write itself (no file name, or the temporary's) names the user's path
        if isinstance(e, OSError) and not isinstance(e, OutputError) and e.filename in (None, tmp):
            raise OutputError(path, e.strerror or type(e).__name__, e.errno or 0) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create directory ``path`` if needed and prove it is writable; raise ``OSError`` if not."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        raise OSError(f"output directory {str(path)!r} is not writable: {e.strerror or e}") from e
    return path


def json_safe(obj: Any) -> Any:
    """``obj`` made strict-JSON ready: numpy scalars and arrays become Python numbers and lists,
    tuples lists, keys strings, and non-finite floats ``None`` (JSON has no NaN or Infinity)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy / jax scalars and arrays
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """Write ``obj`` as strict JSON (:func:`json_safe`) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False) + "\n")
