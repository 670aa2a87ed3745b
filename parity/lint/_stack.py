"""Room on CPython's frame stack for the interpreter's deep recursion (a speed measure only).

CPython (3.11 and later) keeps the frames of Python calls on a per-thread stack made of 16 KiB
chunks.  A call that does not fit in the current chunk maps a new one (``mmap``), and the
return that leaves it unmaps it again, so code whose call depth keeps crossing a chunk boundary
pays a system call and fresh zeroed pages each time.  The lint interpreter recurses through
the syntax tree and does exactly that: 24,289 chunk mappings for 20 torch files, and without
this measure about a tenth of ``parity lint``'s CPU time was system time.

:func:`with_stack_room` calls its function from a frame with 65,000 unused local slots:
CPython gives that frame a chunk of its own, sized to the next power of two (1 MiB), and the
half it does not use holds every deeper frame of the run (about 66,000 slots; the default
recursion limit of 1,000 calls needs far fewer), so no chunk is mapped while it runs.
Nothing else changes: the same calls run in the same order.  The check of
``tests/test_lint_stack.py`` gives the same counts on CPython 3.11, 3.12 and 3.13 (8,000 page
faults outside the room, 11 inside).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: unused local slots of the calling frame: 520 KB of a 1 MiB chunk, the rest left for the run
ROOM_SLOTS = 65_000


def with_stack_room(run: Callable[[], T]) -> T:
    """``run()``, called from a frame whose stack chunk leaves room for the run's deep calls."""
    return run()


if sys.implementation.name == "cpython":  # measured on 3.11, 3.12 and 3.13; others: a plain call
    _code = with_stack_room.__code__
    with_stack_room.__code__ = _code.replace(
        co_varnames=_code.co_varnames + tuple(f"_room{index}" for index in range(ROOM_SLOTS)),
        co_nlocals=_code.co_nlocals + ROOM_SLOTS,
    )
    del _code
