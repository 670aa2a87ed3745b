"""Convert checkpoint files: SRC and DST formats come from their suffixes (see
:mod:`parity.convert.checkpoint`); DST is written atomically, only after the whole conversion
succeeded."""

from __future__ import annotations

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


def load_models(
    torch_spec: str,
    flax_spec: str,
    first: Any = None,
    shapes_only: bool = False,
    extra: Any = None,
) -> tuple[Any, Any]:
    """``(torch model, Flax target)`` from two SPECs (:mod:`parity.spec`): the target is Linen
    variables (initialised on ``first``, a :class:`parity.harness.specs.SpecInput` in torch
    layout; ``shapes_only``: their shapes) or an NNX module. ``extra``
    (:class:`parity.harness.outputs.ExtraInputs`): the other inputs and the Flax keyword
    arguments, given to both models whenever they are called with one input."""
    from parity.spec import SpecError, build, linen_variables

    torch_model, _ = build(torch_spec, ("torch",))
    flax_model, kind = build(flax_spec, ("linen", "nnx"))
    if extra is not None:
        from parity.harness.outputs import adapt_flax, adapt_torch

        adapt_torch(torch_model, None, extra=extra)
        if kind == "linen":  # same fields and parameter paths; called with one input, gets them all
            flax_model = adapt_flax(flax_model, None, extra)
    if kind == "nnx":
        return torch_model, flax_model
    if first is None:
        raise SpecError(
            f"{flax_spec}: a Linen module has no weights until initialised: give --input-shape or --input"
        )
    variables = linen_variables(flax_model, first.shape, first.channels_last, first.dtype, shapes_only)
    return torch_model, variables


def convert_models_file(torch_model: Any, flax_target: Any, src: str, dst: str, **options: Any) -> str:
    """Convert ``src`` to ``dst`` between ``torch_model`` and ``flax_target`` (Linen variables or
    an NNX module, which only gives the expected Flax names and shapes); return the direction
    and how flattens into Linear layers were found.
    ``options`` go to :func:`torch_to_flax` / :func:`flax_to_torch` (``user_map``,
    ``flatten_shapes``, ``input_shape``)."""
    from parity.convert.common import flatten_tree, unflatten_tree, validated
    from parity.convert.flatten import detect_flattens
    from parity.convert.general import flax_leaves, flax_to_torch, torch_to_flax

    sides = _direction(src, dst)
    leaves = flax_leaves(flax_target)
    flatten = detect_flattens(torch_model, options.get("input_shape"), options.get("flatten_shapes"))
    options = {**options, "flatten_shapes": flatten.shapes}
    how = f"flatten {flatten.method}: " + (", ".join(f"{k}={v}" for k, v in flatten.shapes.items()) or "none")
    if sides[0] == "torch":
        target = unflatten_tree({k: np.asarray(v) for k, v in leaves.items()})
        write_checkpoint(dst, torch_to_flax(read_torch_state(src), torch_model, target, **options))
        return f"torch -> flax; {how}"
    tree = read_flax_variables(src)
    expected = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in leaves.items()}
    flat = validated(src, flatten_tree(tree), expected)
    write_checkpoint(dst, flax_to_torch(unflatten_tree(flat), torch_model, **options))
    return f"flax -> torch; {how}"
