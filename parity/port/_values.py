"""Values of a forward being translated: a tensor's source name and its layout, literals.

A tensor is either in torch's axis order or **channels-last** (``cl``): a torch tensor of
rank ``r >= 3`` ``(N, C, *S)`` held as ``(N, *S, C)``. :func:`jax_axis` maps a torch axis to
the axis of the array the generated code holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Raw:
    """Source text that is not a literal (``rngs=rngs``, ``jax.nn.relu``): never a parameter."""

    text: str

    def __repr__(self) -> str:
        return self.text


@dataclass
class Value:
    """One value of the generated code: ``expr`` (a variable name), ``kind`` (``'tensor'``,
    ``'shape'`` (the torch shape of ``of``), ``'seq'`` (``items``), ``'int'``), ``cl``
    (channels-last) and the torch ``shape`` when known."""

    expr: str
    kind: str = "tensor"
    cl: bool = False
    shape: tuple[int, ...] | None = None
    items: list = field(default_factory=list)
    of: Value | None = None
    dtype: str | None = None  # the torch dtype's name when known ("torch.bool")
    fixed: bool = False  # a parameter: its shape is the same on every call

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def __repr__(self) -> str:
        return self.expr


def is_tensor(v: Any) -> bool:
    return isinstance(v, Value) and v.kind == "tensor"


def jax_axis(axis: int, rank: int, cl: bool) -> int:
    """The array axis holding torch axis ``axis`` (negative allowed) of a rank-``rank`` tensor."""
    a = axis % rank
    if not cl:
        return a
    return 0 if a == 0 else rank - 1 if a == 1 else a - 1


def cl_order(rank: int) -> list[int]:
    """Torch axes in the order a channels-last array holds them: ``[0, 2, ..., r-1, 1]``."""
    return [0, *range(2, rank), 1]


def literal(x: Any) -> str:
    """Python source of a literal (``-inf`` as ``-jnp.inf``; tuples, lists, slices, Values)."""
    if isinstance(x, (Value, Raw)):
        return repr(x)
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return repr(x)
    if isinstance(x, float):
        if math.isinf(x):
            return "jnp.inf" if x > 0 else "-jnp.inf"
        if math.isnan(x):
            return "jnp.nan"
        return repr(x)
    if isinstance(x, tuple):
        inner = ", ".join(literal(v) for v in x)
        return f"({inner},)" if len(x) == 1 else f"({inner})"
    if isinstance(x, list):
        return "[" + ", ".join(literal(v) for v in x) + "]"
    if isinstance(x, slice):
        parts = ["" if p is None else literal(p) for p in (x.start, x.stop, x.step)]
        return ":".join(parts[:2]) + (f":{parts[2]}" if parts[2] else "")
    if x is Ellipsis:
        return "..."
    raise TypeError(f"no literal for {type(x).__name__}")


def index_literal(idx: Any) -> str:
    """A subscript's source: ``(slice(None), 0)`` -> ``:, 0``."""
    if isinstance(idx, tuple):
        return ", ".join(index_literal(i) for i in idx) if idx else "()"
    if idx is None:
        return "None"
    return literal(idx)
