"""The frame-stack room of ``parity lint`` (:mod:`parity.lint._stack`): same results, and deep
calls that go up and down no longer map fresh stack chunks (counted in page faults, not time)."""

from __future__ import annotations

import platform
import resource
import sys

import pytest

from parity.lint._stack import ROOM_SLOTS, with_stack_room

DEPTH = 400  # ~ 400 frames of a few slots each: more than one 16 KiB chunk of CPython's frame stack
REPEATS = 1_000


def _down(depth: int) -> int:
    return 0 if depth == 0 else 1 + _down(depth - 1)


def _up_and_down() -> int:
    """Fall to DEPTH and back REPEATS times; the minor page faults this process took meanwhile."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(REPEATS):
        assert _down(DEPTH) == DEPTH
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_the_function_runs_once_and_its_result_and_errors_pass_through() -> None:
    calls = []
    assert with_stack_room(lambda: calls.append(1) or "done") == "done"
    assert calls == [1]
    with pytest.raises(ZeroDivisionError):
        with_stack_room(lambda: 1 / 0)
    assert with_stack_room.__code__.co_nlocals > ROOM_SLOTS


@pytest.mark.skipif(
    platform.python_implementation() != "CPython" or not sys.platform.startswith("linux"),
    reason="CPython's frame-stack chunks, counted by Linux page faults",
)
def test_deep_calls_inside_the_room_map_no_new_stack_chunks() -> None:
    _up_and_down()  # warm: anything allocated once is allocated now
    outside = _up_and_down()
    inside = with_stack_room(_up_and_down)
    assert outside >= REPEATS  # each fall maps a chunk and touches its first page
    assert inside < REPEATS // 10
