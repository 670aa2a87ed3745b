"""One background thread for work that releases the GIL, such as XLA compiling a program
while the main thread runs the eager passes of a check (:meth:`FlaxSide.compile_gradient_ahead`).

One worker: the main thread and one compile use the two cores of a small machine; a second
compile would only compete with them. The pool's thread is joined at interpreter exit, so a
compile still running then delays the exit rather than being killed inside XLA.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_pool: ThreadPoolExecutor | None = None


def submit(fn: Callable[[], Any]) -> Future:
    """Run ``fn()`` in the background thread; its :class:`~concurrent.futures.Future`."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parity-background")
    return _pool.submit(fn)
