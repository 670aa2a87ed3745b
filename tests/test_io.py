"""Atomic output and strict JSON, shared by every command that writes a file."""

import json
import math
import os
import stat

import numpy as np
import pytest

from parity.io import atomic_open, atomic_write_json, ensure_writable_dir, json_safe


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
