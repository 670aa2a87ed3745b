"""Atomic output and strict JSON, shared by every command that writes a file."""

import json
import math
import os
import re
import stat

import numpy as np
import pytest

from parity.errors import ParityError
from parity.io import (
    OutputError,
    atomic_open,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    json_safe,
)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_open(path) as f:
        f.write("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_a_finished_write_has_the_usual_permissions(tmp_path):
    path = tmp_path / "new.json"
    atomic_write_json(path, {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_json_safe_is_strict_json():
    obj = {1: (np.float32(0.5), np.int64(3), float("nan"), np.array([1.0, np.inf]), np.bool_(True), math.inf)}
    assert json_safe(obj) == {"1": [0.5, 3, None, [1.0, None], True, None]}
    json.dumps(json_safe(obj), allow_nan=False)


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="not writable"):
        ensure_writable_dir(blocker / "sub")


def test_a_symlink_is_written_through_to_its_target(tmp_path):
    """The link stays a link; its target gets the new content and keeps its permission bits."""
    target = tmp_path / "real.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_json(link, {"a": 1})
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.json", "real.json"]


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "new.txt")
    atomic_write_text(link, "hi")
    assert link.is_symlink() and (tmp_path / "new.txt").read_text() == "hi"


def test_a_fifo_or_directory_is_refused_and_left_as_it_was(tmp_path):
    fifo, folder = tmp_path / "fifo", tmp_path / "dir"
    os.mkfifo(fifo)
    folder.mkdir()
    for path, kind in ((fifo, "a FIFO"), (folder, "a directory")):
        with pytest.raises(OutputError, match=f"^{re.escape(str(path))}: cannot write: it is {kind}"):
            atomic_write_json(path, {"a": 1})
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir()
    assert sorted(os.listdir(tmp_path)) == ["dir", "fifo"]  # no temporary left


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_device_node_is_refused_not_replaced(tmp_path):
    """``/dev/full`` was replaced by a regular file (as root) and the write reported success."""
    with pytest.raises(OutputError, match="^/dev/full: cannot write: it is a character device"):
        atomic_write_bytes("/dev/full", b"x")
    assert stat.S_ISCHR(os.lstat("/dev/full").st_mode)
    link = tmp_path / "to-full"
    link.symlink_to("/dev/full")
    with pytest.raises(OutputError, match="to-full: cannot write: it is a character device"):
        atomic_write_bytes(link, b"x")


def test_a_write_error_names_the_users_path_not_the_temporary(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir" / "out.json"
    with pytest.raises(OutputError) as e:
        atomic_write_json(missing, {})
    assert str(e.value).startswith(f"{missing}: cannot write: ") and ".tmp" not in str(e.value)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    path = tmp_path / "out.json"
    with pytest.raises(OutputError, match=f"^{re.escape(str(path))}: cannot write: No space left"):
        atomic_write_json(path, {})
    assert os.listdir(tmp_path) == []  # an OSError too, so callers that catch OSError still do
    assert isinstance(e.value, OSError) and isinstance(e.value, ParityError)
