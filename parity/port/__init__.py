"""``parity port``: write the Flax port (NNX or Linen source) of a torch model.

:func:`build_port` reads the torch module tree and a ``torch.fx`` trace of each module class
(its submodules kept as leaves) and writes one Flax class per torch class, with the torch
attribute names (so :mod:`parity.convert` pairs them without a map), the torch
hyper-parameters written out, and each ``forward`` translated to ``jax.numpy``. What it cannot
translate becomes a marked stub raising ``NotImplementedError`` and a :class:`Stub`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stub:
    """A piece the generator could not translate (it emitted a NotImplementedError there)."""

    op: str  # the torch op / construct, e.g. "torch.nonzero" or "data-dependent if"
    where: str  # "ClassName.forward" plus source "file.py:LINE" when known
    message: str  # one line for the user


@dataclass(frozen=True)
class Port:
    """A generated port: the ``model.py`` text and what the caller needs to check it.

    ``factory``: the no-argument factory defined in ``source``; ``channels_last``: the port
    takes image-like input channels-last (NHWC), the harness default; ``False``: it takes
    torch's layout (check with ``--no-channels-last``). ``stubs``: empty when everything was
    translated. ``notes``: one-line facts for the user (layout, tied weights, constants).
    """

    source: str
    style: str
    factory: str
    channels_last: bool
    stubs: tuple[Stub, ...]
    notes: tuple[str, ...]


def build_port(
    module: Any, example_input: Any, style: str = "nnx", *, example_kwargs: Mapping[str, Any] | None = None
) -> Port:
    """The Flax port of torch ``module`` in ``style`` (``'nnx'`` or ``'linen'``).

    ``example_input``: a torch tensor, or a tuple of tensors for several inputs, in torch
    layout (NCHW); ``example_kwargs``: tensors passed by keyword (``mask=...``), which the
    port's ``__call__`` takes as keyword-only arguments of the same names. One eval-mode
    forward pass on them gives every submodule's input shapes.
    Bad arguments raise :class:`parity.errors.ParityError`; untranslatable code never
    raises: it becomes a stub (:attr:`Port.stubs`).
    """
    from parity.port._main import build

    return build(module, example_input, style, dict(example_kwargs or {}))


def generate(
    module: Any, example_input: Any, style: str = "nnx", *, example_kwargs: Mapping[str, Any] | None = None
) -> str:
    """The generated source of :func:`build_port` (the issue's public API)."""
    return build_port(module, example_input, style, example_kwargs=example_kwargs).source


__all__ = ["Port", "Stub", "build_port", "generate"]
