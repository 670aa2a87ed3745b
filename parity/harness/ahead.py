"""Work started ahead, in one background thread, while the main thread runs the passes of a
check (issue 20 item 12): :func:`compile_gradients` compiles the Flax gradient programs of
:func:`parity.harness.localize.localize_gradients` (XLA compiles without holding the GIL) while
the eager forward passes and the layer reports run.

One worker: the main thread and one compile use the two cores of a small machine; a second
would only compete with them. Nothing here changes a value: a program compiled ahead is the one
the main thread would have compiled. The pool's thread is joined at interpreter exit, so a
compile still running then delays the exit rather than being killed inside XLA.

Also tried and left out (2026-12-07, BENCHMARKS.md): running the float64 eval, float32 train and
float64 train Flax passes ahead to warm jax's eager-operation caches. It moved compile time off
the main thread but raised the Linen ResNet-18 peak by ~150 MB, and gained no wall time that
the box's noise could show.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from parity.harness import flax_grad
from parity.harness.dropout import active_dropout
from parity.harness.localize import GradientOptions, independent_rng
from parity.harness.pair import ModelPair

_pool: ThreadPoolExecutor | None = None


def submit(fn: Callable[[], Any]) -> Future:
    """Run ``fn()`` in the background thread; its :class:`~concurrent.futures.Future` (an error
    stays in it until the result is asked for)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parity-ahead")
    return _pool.submit(fn)


def compile_gradients(pair: ModelPair, x: np.ndarray, y: np.ndarray, options: GradientOptions) -> None:
    """Start compiling the Flax gradient programs that
    :func:`parity.harness.localize.localize_gradients` with the same arguments will run
    (float32, and the float64 one of ``float64_check``, needed whenever a float32 row fails)
    into the side's ``programs`` (:func:`parity.harness.flax_grad.gradient_program` takes
    them; an error surfaces there). A model whose dropout runs in ``options.mode`` is left out:
    its shared masks, drawn by torch, are part of the program. Changes no value."""
    train = options.mode == "train"
    if train and options.dropout_masks == "shared" and active_dropout(pair.torch):
        return
    side = pair.flax_side()
    rng = independent_rng(train, options.dropout_masks, options.seed, options.step)
    for float64 in (False, True) if options.float64_check else (False,):
        with jax.enable_x64(True) if float64 else contextlib.nullcontext():
            shapes = flax_grad.abstract_arguments(
                side, np.asarray(x), np.asarray(y), rng, float64, pair.input_layout
            )
        key = flax_grad.program_key(options.loss, train, shapes)
        if key not in side.programs:
            task = (float64, flax_grad.compile_gradient, side, options.loss, train, shapes)
            side.programs[key] = submit(lambda task=task: flax_grad.with_x64(*task))
