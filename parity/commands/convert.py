"""``parity convert``: a checkpoint between torch (.pt/.pth/.safetensors) and Flax (.msgpack).

``--model {digits,signal1d}`` for the project's models, or ``--torch SPEC --flax SPEC`` for
yours (with ``--map``, ``--input-shape``/``--input``, ``--flatten`` as in ``parity map``). The direction
comes from the suffixes. Exit 0 ok, 1 a conversion error (one line; nothing written), 2 usage.
"""

from __future__ import annotations

import argparse
import sys

from parity.commands.map import add_model_arguments
from parity.errors import ParityError
from parity.registry import MODELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity convert``."""
    parser.add_argument("--model", choices=MODELS, help="one of our architectures (default widths)")
    add_model_arguments(parser, required=False)
    parser.add_argument("src", help="input checkpoint: .pt/.pth/.safetensors (torch) or .msgpack (Flax)")
    parser.add_argument("dst", help="output checkpoint, the other side; written atomically")
    parser.set_defaults(_parser=parser)


def _convert(args: argparse.Namespace, bar) -> str:
    """Convert, each long step named on ``bar`` (a :class:`parity.progress.Progress`)."""
    if args.model:
        bar.describe(f"converting {args.src} -> {args.dst} (model {args.model})")
        from parity.convert.files import convert_file

        return convert_file(args.model, args.src, args.dst)
    from parity.commands.map import load_models, steps

    step = steps(bar)
    # shapes only: `real` builds the values only when a Flax leaf is not filled by torch
    torch_model, target, options, real = load_models(args, shapes_only=True, step=step)
    step(f"converting {args.src} -> {args.dst}")
    from parity.convert.files import convert_models_file

    return convert_models_file(torch_model, target, args.src, args.dst, real, **options)


class ConvertFailed(ParityError):
    """A conversion that could not be done; nothing was written (exit 1)."""

    exit_code = 1


def run(args: argparse.Namespace) -> int:
    """Convert; exit 0 on success, 1 on a conversion error (nothing is written then)."""
    if bool(args.model) == bool(args.torch or args.flax) or (
        not args.model and not (args.torch and args.flax)
    ):
        args._parser.error("give either --model or both --torch SPEC and --flax SPEC")
    from parity.progress import Progress

    steps = 1 if args.model else 3
    with Progress("steps", steps, enabled=sys.stderr.isatty(), transient=True) as bar:
        try:
            direction = _convert(args, bar)
        except (ParityError, OSError) as e:
            from parity.convert import ConversionError
            from parity.spec import SpecError

            if isinstance(e, ConversionError | SpecError | OSError):  # nothing was written: exit 1
                raise ConvertFailed(str(e)) from e
            raise
    source = f"model {args.model}" if args.model else f"{args.torch} / {args.flax}"
    print(f"{args.src} -> {args.dst} ({direction}, {source})")
    return 0
