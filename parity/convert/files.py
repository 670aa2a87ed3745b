"""Convert checkpoint files: SRC and DST formats come from their suffixes (see
:mod:`parity.convert.checkpoint`); DST is written atomically, only after the whole conversion
succeeded."""

from __future__ import annotations

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
