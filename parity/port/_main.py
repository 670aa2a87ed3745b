"""The one entry point of the generator: check the arguments, build the class plan
(:mod:`parity.port._build`), render it (:mod:`parity.port._emit`) and wrap the result in a
:class:`parity.port.Port`. Kept apart so that the plan and the renderer do not import each other."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from parity.port import Port
from parity.port._build import Builder, PortError
from parity.port._emit import render


def build(module: Any, example_input: Any, style: str) -> Port:
    """:func:`parity.port.build_port`."""
    if style not in ("nnx", "linen"):
        raise PortError(f"style must be 'nnx' or 'linen', got {style!r}")
    if not isinstance(module, nn.Module):
        raise PortError(f"expected a torch.nn.Module, got {type(module).__name__}")
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise PortError("example_input must be a torch tensor or a tuple of tensors (torch layout)")
    b = Builder(module, tuple(inputs), style)
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
