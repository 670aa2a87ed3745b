"""Convert checkpoint files: SRC and DST formats come from their suffixes (see
:mod:`parity.convert.checkpoint`); DST is written atomically, only after the whole conversion
succeeded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from parity.convert.checkpoint import checkpoint_side, read_flax_variables, read_torch_state, write_checkpoint
from parity.convert.common import ConversionError


def _direction(src: str, dst: str) -> tuple[str, str]:
    sides = (checkpoint_side(src), checkpoint_side(dst))
    if sides[0] == sides[1]:
        raise ConversionError(
            f"cannot convert {src!r} to {dst!r}: both are {sides[0]} files; one side must be torch "
            "(.pt/.pth/.safetensors), the other Flax (.msgpack)"
        )
    return sides


def convert_file(model: str, src: str, dst: str, **config) -> str:
    """Convert checkpoint ``src`` to ``dst`` for our architecture ``model``; return the direction.

    ``.pt -> .msgpack`` is torch -> Flax, ``.msgpack -> .pt`` is Flax -> torch.
    """
    from parity.convert.template import linen_to_torch, torch_to_linen
    from torch_impl.models import build_model

    sides = _direction(src, dst)
    template = build_model(model, **config)
    if sides[0] == "torch":
        write_checkpoint(dst, torch_to_linen(read_torch_state(src), template))
        return "torch -> flax"
    write_checkpoint(dst, linen_to_torch(read_flax_variables(src), template))
    return "flax -> torch"


def _quiet(text: str) -> None:
    """A ``step`` callback that says nothing."""


def load_models(
    torch_spec: str,
    flax_spec: str,
    first: Any = None,
    shapes_only: bool = False,
    extra: Any = None,
    step: Callable[[str], None] = _quiet,
) -> tuple[Any, Any, Callable[[], Any]]:
    """``(torch model, Flax target, real)`` from two SPECs (:mod:`parity.spec`): the target is
    Linen variables (initialised on ``first``, a :class:`parity.harness.specs.SpecInput` in torch
    layout) or an NNX module. ``shapes_only``: the target holds shapes, not values (Linen:
    ``jax.eval_shape`` of the init; NNX: the factory run under ``nnx.eval_shape``, see
    :mod:`parity.harness.lazy_init`), and ``real()`` builds the one with values (the factory's
    or ``module.init``'s), for the leaves a conversion does not fill; without it ``real()``
    returns the target. ``extra`` (:class:`parity.harness.outputs.ExtraInputs`): the other
    inputs and the Flax keyword arguments, given to both models whenever they are called with
    one input. ``step(text)`` is called once the torch model is built, before the Flax one is
    (the caller names the torch step: it may import torch before this function does)."""
    from parity.harness.lazy_init import build_flax
    from parity.spec import SpecError, build, linen_variables

    torch_model, _ = build(torch_spec, ("torch",))
    step(f"building the Flax model {flax_spec}" + (" from shapes" if shapes_only else ""))
    flax_model, kind, abstract = (
        build_flax(flax_spec) if shapes_only else (*build(flax_spec, ("linen", "nnx")), False)
    )
    if extra is not None:
        from parity.harness.outputs import adapt_flax, adapt_torch

        adapt_torch(torch_model, None, extra=extra)
        if kind == "linen":  # same fields and parameter paths; called with one input, gets them all
            flax_model = adapt_flax(flax_model, None, extra)
    if kind == "nnx":
        return (
            torch_model,
            flax_model,
            (lambda: build(flax_spec, ("nnx",))[0]) if abstract else (lambda: flax_model),
        )
    if first is None:
        raise SpecError(
            f"{flax_spec}: a Linen module has no weights until initialised: give --input-shape or --input"
        )
    init = lambda shapes: linen_variables(flax_model, first.shape, first.channels_last, first.dtype, shapes)
    variables = init(shapes_only)
    return torch_model, variables, (lambda: init(False)) if shapes_only else (lambda: variables)


def _torch_to_flax(state: Any, torch_model: Any, target: Any, **options: Any) -> dict:
    """``state`` converted into ``target``'s leaves (Linen variables or an NNX module, either
    possibly from shapes): a ``{'params': ..., 'batch_stats': ...}`` tree of numpy arrays, where
    a Flax-only leaf of a shapes-only target is an object array (:mod:`parity.harness.lazy_init`
    then converts again into the real target)."""
    import jax

    from parity.convert.common import unflatten_tree
    from parity.convert.general import flax_leaves, torch_to_flax

    leaves = flax_leaves(target)
    tree = unflatten_tree(
        {k: v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(v) for k, v in leaves.items()}
    )
    return torch_to_flax(state, torch_model, tree, **options)


def convert_models_file(
    torch_model: Any,
    flax_target: Any,
    src: str,
    dst: str,
    real: Callable[[], Any] | None = None,
    **options: Any,
) -> str:
    """Convert ``src`` to ``dst`` between ``torch_model`` and ``flax_target`` (Linen variables or
    an NNX module, which only gives the expected Flax names and shapes and may hold shapes
    only); return the direction and how flattens into Linear layers were found.
    ``real()``: the target with values, used (torch -> Flax) only when the conversion leaves a
    leaf of a shapes-only target unfilled, or fails on it (:func:`load_models` gives it).
    ``options`` go to :func:`torch_to_flax` / :func:`flax_to_torch` (``user_map``,
    ``flatten_shapes``, ``input_shape``)."""
    from parity.convert.common import flatten_tree, unflatten_tree, validated
    from parity.convert.flatten import detect_flattens
    from parity.convert.general import flax_leaves, flax_to_torch
    from parity.harness.lazy_init import linen_converted

    sides = _direction(src, dst)
    flatten = detect_flattens(torch_model, options.get("input_shape"), options.get("flatten_shapes"))
    options = {**options, "flatten_shapes": flatten.shapes}
    how = f"flatten {flatten.method}: " + (", ".join(f"{k}={v}" for k, v in flatten.shapes.items()) or "none")
    if sides[0] == "torch":
        state = read_torch_state(src)
        fill = lambda target: _torch_to_flax(state, torch_model, target, **options)
        init = lambda shapes_only: flax_target if shapes_only or real is None else real()
        write_checkpoint(dst, linen_converted(fill, init))
        return f"torch -> flax; {how}"
    leaves = flax_leaves(flax_target)
    tree = read_flax_variables(src)
    expected = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in leaves.items()}
    flat = validated(src, flatten_tree(tree), expected)
    write_checkpoint(dst, flax_to_torch(unflatten_tree(flat), torch_model, **options))
    return f"flax -> torch; {how}"
