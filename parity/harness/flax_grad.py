"""The Flax side's gradients: the loss, the arguments and the compiled program of
:func:`flax_gradients` (issue 20 item 12: the programs can be compiled ahead, in a background
thread, by :func:`parity.harness.ahead.compile_gradients`).

A side is a :class:`parity.harness.sides.FlaxSide` (``apply``, ``params``, ``batch_stats``,
``rest``, ``pure``, ``programs``); inputs ``x`` are torch layout (NCHW / NCW), moved to Flax's
channels-last by the pair's input layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from parity.arrays import to_jax
from parity.harness import memory
from parity.harness.dropout import FlaxHook, flax_dropout_hook
from parity.layout import Layout, activation_to_flax


def flax_loss(name: str) -> Callable:
    """The same loss in jax: mean softmax cross-entropy, or mean squared error."""
    import optax

    if name == "cross_entropy":
        return lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y.astype(jnp.int32)).mean()
    if name == "mse":
        return lambda out, y: jnp.mean((out - y.astype(out.dtype)) ** 2)
    raise ValueError(f"unknown loss {name!r}; choose 'cross_entropy' or 'mse'")


def flax_gradients(
    side: Any,
    x: np.ndarray,
    y: np.ndarray,
    loss: str,
    train: bool,
    uniforms: Mapping | None,
    rng: jax.Array | None,
    float64: bool = False,
    *,
    input_layout: Layout = "channels_first",
    torch_layout: bool = False,
) -> dict:
    """The Flax gradient tree (numpy, Flax layout) of the mean ``loss``; ``float64`` casts the
    parameters, statistics and the input (torch layout ``x``, given to Flax per
    ``input_layout``) to float64 under ``jax.enable_x64``. ``uniforms`` (``{flax name: [u per
    call]}``, channels-last, or as torch drew them with ``torch_layout``) are the shared
    dropout masks (:func:`flax_dropout_hook`). Without masks the compiled program is the
    side's (:func:`gradient_program`: compiled once, possibly ahead of time)."""
    # an empty set of masks is no hook: the program is then a function of the arrays alone
    hook = flax_dropout_hook(uniforms, torch_layout=torch_layout) if uniforms else None
    with jax.enable_x64(True) if float64 else contextlib.nullcontext():
        args = gradient_arguments(side, x, y, rng, float64, input_layout)
        if hook is None:
            program = gradient_program(side, loss, train, args, take=True)
        else:
            program = jax.jit(jax.grad(gradient_loss(side, loss, train, hook)))
        grads = program(*args)
        del args  # a float64 copy of the weights: freed before the gradients are converted
        return side.pure(grads)


def gradient_arguments(
    side: Any, x: np.ndarray, y: np.ndarray, rng: jax.Array | None, float64: bool, input_layout: Layout
) -> tuple:
    """``(params, batch_stats, rest, x, y, rng)`` of :func:`gradient_loss`: the side's
    variables and ``x`` (torch layout, moved per ``input_layout``) cast to float64 when
    ``float64`` (call it under ``jax.enable_x64``)."""
    cast = float_cast(jnp.float64 if float64 else None)
    params, bstats, rest = (jax.tree.map(cast, t) for t in (side.params, side.batch_stats, side.rest))
    xf = cast(to_jax(activation_to_flax(x, layout=input_layout)))
    return params, bstats, rest, xf, to_jax(y), rng


def abstract_arguments(
    side: Any, x: np.ndarray, y: np.ndarray, rng: jax.Array | None, float64: bool, input_layout: Layout
) -> tuple:
    """``abstract(gradient_arguments(...))`` without making the arguments: no float64 copy of
    the weights just to learn their shapes (call it in the same ``jax.enable_x64`` state)."""

    def spec(a: Any) -> jax.ShapeDtypeStruct:
        floating = float64 and jnp.issubdtype(a.dtype, jnp.floating)
        return jax.ShapeDtypeStruct(
            np.shape(a), jax.dtypes.canonicalize_dtype(jnp.float64 if floating else a.dtype)
        )

    params, bstats, rest = (jax.tree.map(spec, t) for t in (side.params, side.batch_stats, side.rest))
    xf = spec(np.asarray(activation_to_flax(x, layout=input_layout)))
    return params, bstats, rest, xf, spec(np.asarray(y)), abstract(rng)


def gradient_loss(side: Any, loss: str, train: bool, hook: FlaxHook | None = None) -> Callable:
    """``f(params, batch_stats, rest, x, y, rng) -> mean loss`` of one pass in ``train`` or
    eval mode (``x`` in Flax layout): the function :func:`flax_gradients` differentiates."""
    lf = flax_loss(loss)

    def f(params, bstats, rest, xf, yj, rng):
        out, _, _ = side.apply(params, bstats, rest, xf, train=train, hook=hook, rng=rng)
        return lf(out, yj)

    return f


def gradient_program(side: Any, loss: str, train: bool, args: tuple, take: bool = False) -> Callable:
    """The compiled gradient (with respect to ``params``) of :func:`gradient_loss` for
    arguments shaped as ``args`` (:func:`gradient_arguments`; call under ``jax.enable_x64``
    for float64 ones): the one :func:`parity.harness.ahead.compile_gradients` put in
    ``side.programs``, waited for, or else compiled now. ``take`` drops it from
    ``side.programs`` (used once: its memory is freed)."""
    key = program_key(loss, train, args)
    pending = side.programs.pop(key, None) if take else side.programs.get(key)
    if pending is not None:
        return pending.result()
    return compile_gradient(side, loss, train, abstract(args))


def abstract(args: tuple) -> tuple:
    """``args`` with every array replaced by its shape and dtype."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), args)


def program_key(loss: str, train: bool, args: tuple) -> tuple:
    """What a gradient program depends on besides the side: loss, mode, whether it computes in
    float64, the input's and labels' shapes and dtypes, and whether an rng is passed."""
    params, _, _, xf, yj, rng = args
    float64 = any(a.dtype == jnp.float64 for a in jax.tree.leaves(params))
    return (loss, train, float64, xf.shape, str(xf.dtype), yj.shape, str(yj.dtype), rng is not None)


def compile_gradient(side: Any, loss: str, train: bool, shapes: tuple) -> Callable:
    """Compile :func:`gradient_loss`'s gradient for the ``shapes`` of :func:`abstract`."""
    program = jax.jit(jax.grad(gradient_loss(side, loss, train))).lower(*shapes).compile()
    memory.trim()  # the compiler's freed working memory
    return program


def with_x64(enabled: bool, fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` under ``jax.enable_x64(enabled)`` (thread-local: for a background thread)."""
    with jax.enable_x64(enabled):
        return fn(*args)


def float_cast(dtype) -> Callable:
    """Cast floating arrays to ``dtype`` (identity when ``dtype`` is None); others unchanged."""

    def cast(a):
        if dtype is None or not (hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating)):
            return a
        return a if isinstance(a, jax.Array) and a.dtype == dtype else to_jax(a, dtype)

    return cast
