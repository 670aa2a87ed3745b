"""The one entry point of the generator: check the arguments, build the class plan
(:mod:`parity.port._build`), render it (:mod:`parity.port._emit`) and wrap the result in a
:class:`parity.port.Port`. Kept apart so that the plan and the renderer do not import each other."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from parity.port import Port
from parity.port._build import Builder, PortError
from parity.port._emit import render


def build(module: Any, example_input: Any, style: str, kwargs: dict[str, Any]) -> Port:
    """:func:`parity.port.build_port`."""
    if style not in ("nnx", "linen"):
        raise PortError(f"style must be 'nnx' or 'linen', got {style!r}")
    if not isinstance(module, nn.Module):
        raise PortError(f"expected a torch.nn.Module, got {type(module).__name__}")
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise PortError("example_input must be a torch tensor or a tuple of tensors (torch layout)")
    _check_keywords(module, len(inputs), kwargs)
    b = Builder(module, tuple(inputs), style, kwargs)
    root = b.instance(
        module, "", [b.channels_last and x.dim() >= 3 and x.is_floating_point() for x in inputs]
    )
    source = render(b, root)
    layout = (
        "layout: channels-last (NHWC input), the layout of Flax's Conv and pooling"
        if b.channels_last
        else "layout: torch's axis order (no convolution or pooling takes the input)"
    )
    notes = (layout, *dict.fromkeys(b.notes))
    return Port(source, style, "make", b.channels_last, tuple(b.stubs), notes)


def _check_keywords(module: nn.Module, given: int, kwargs: dict[str, Any]) -> None:
    """Keyword inputs are tensors named by ``forward``'s parameters after the positional ones."""
    params = list(inspect.signature(module.forward).parameters.values())
    named = {p.name for p in params[given:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for name, value in kwargs.items():
        if name not in named or name in ("train", "rngs"):
            why = (
                "the Flax call's own argument"
                if name in named
                else "no parameter of forward after the inputs"
            )
            raise PortError(f"keyword input {name!r}: {why}")
        if not isinstance(value, torch.Tensor):
            raise PortError(f"keyword input {name!r} must be a torch tensor, got {type(value).__name__}")
