"""Giving memory back between the phases of a check (issue 20 item 12: a ResNet-18 check in
at most 1.5 GB).

jax keeps every compiled program in its caches, and glibc keeps freed heap pages (many of them
in the arenas of the threads that compiled) instead of returning them to the system; both
count in the process's resident memory. :func:`trim` returns the second (compiling a ResNet-18
gradient program leaves ~170 MB of it), :func:`release` also drops the first. Neither changes
a value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import jax


@functools.cache
def _libc_trim():
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def trim() -> None:
    """Return the freed heap pages of every thread's arena to the system (glibc only)."""
    libc_trim = _libc_trim()
    if libc_trim is not None:
        libc_trim(0)


def release() -> None:
    """Drop jax's compiled programs (``jax.clear_caches``; programs held elsewhere, such as a
    side's gradient programs, stay), then :func:`trim`."""
    jax.clear_caches()
    trim()
