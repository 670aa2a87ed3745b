"""Flax targets of the weight conversion built from shapes, not from a random initialisation.

Converting torch weights into a Linen module needs its variables' tree, shapes and dtypes, not
their values: every leaf with a torch counterpart is overwritten. ``module.init`` of a
ResNet-18 draws 11.7 M truncated-normal numbers (30 to 40 s on the 2-core box, most of it XLA
compiling the initialisers); ``jax.eval_shape`` of it takes well under a second. The real
initialisation runs only when the port has leaves torch does not fill (their values are the
init's), or when the abstract route fails: the result is then exactly the one of the plain route.

An NNX port is built by its factory, which initialises it (26 s for the NNX ResNet-18 on that
box); :func:`build_flax` calls the factory under ``nnx.eval_shape`` instead, and
:func:`nnx_converted` keeps that abstract model only when the conversion filled every leaf of its
state (no random key, no Flax-only weight left abstract).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _concrete(tree: Any) -> bool:
    """True when no leaf of ``tree`` is abstract (a ``ShapeDtypeStruct``, or the object array a
    conversion makes of one it kept)."""
    import jax

    return all(
        not isinstance(leaf, jax.ShapeDtypeStruct) and getattr(leaf, "dtype", None) != np.dtype(object)
        for leaf in jax.tree.leaves(tree)
    )


def linen_converted(
    convert_into: Callable[[Any], Any],
    init: Callable[..., Any],
) -> Any:
    """``convert_into(target)`` on ``init(shapes_only=True)`` (shapes only), or, when that
    leaves a leaf unfilled or fails, on ``init()`` (the real variables).

    ``convert_into(target) -> variables``: the torch-to-Flax conversion into Linen variables
    ``target``; ``init(shapes_only: bool) -> variables``: :func:`parity.spec.linen_variables`
    with the input bound. Errors of the real route are the caller's (they are the plain route's).
    """
    try:
        converted = convert_into(init(shapes_only=True))
    except Exception:  # noqa: BLE001 - the real route below raises the user-facing error
        converted = None
    if converted is not None and _concrete(converted):
        return converted
    return convert_into(init(shapes_only=False))


def build_flax(spec: str) -> tuple[Any, str, bool]:
    """``(model, kind, abstract)`` of the Flax SPEC: an NNX model built under ``nnx.eval_shape``
    (``abstract``: its arrays are shapes only), or, for a Linen module or a factory that cannot
    run abstractly, :func:`parity.spec.build`'s result (errors are that function's)."""
    from flax import nnx

    from parity.spec import build, load_factory

    try:
        model = nnx.eval_shape(load_factory(spec))
    except Exception:  # noqa: BLE001 - the plain build below reports the user's error
        model = None
    if isinstance(model, nnx.Module):
        return model, "nnx", True
    model, kind = build(spec, ("linen", "nnx"))
    return model, kind, False


def nnx_converted(
    model: Any, abstract: bool, rebuild: Callable[[], Any], convert_into: Callable[[Any], Any]
) -> Any:
    """``convert_into(model)`` (an NNX model, updated in place and returned); an ``abstract``
    model is kept only when the conversion left no abstract leaf in its state, else
    ``convert_into(rebuild())`` on the real model (also when the abstract route fails)."""
    from flax import nnx

    if not abstract:
        return convert_into(model)
    try:
        converted = convert_into(model)
        if _concrete(nnx.split(converted)[1:]):
            return converted
    except Exception:  # noqa: BLE001 - the real route below raises the user-facing error
        pass
    return convert_into(rebuild())
