"""``parity convert --model {digits,signal1d} SRC DST``: torch .pt <-> Flax .msgpack."""

from __future__ import annotations

import argparse
import sys

from parity.registry import MODELS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity convert``."""
    parser.add_argument(
        "--model", required=True, choices=MODELS, help="architecture of the checkpoint (default widths)"
    )
    parser.add_argument("src", help="input checkpoint: .pt (torch state_dict) or .msgpack (Flax variables)")
    parser.add_argument("dst", help="output checkpoint, the other format; written atomically")


def run(args: argparse.Namespace) -> int:
    """Convert; exit 0 on success, 1 on a conversion error (nothing is written then)."""
    from parity.convert import ConversionError, convert_file

    try:
        direction = convert_file(args.model, args.src, args.dst)
    except (ConversionError, OSError) as e:
        print(f"parity convert: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.src} -> {args.dst} ({direction}, model {args.model})")
    return 0
