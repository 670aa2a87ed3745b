"""``parity map --torch SPEC --flax SPEC``: how a torch model's weights pair with a Flax model's.

Prints one row per pairing (torch key and shape -> Flax path and shape, the rule used), then
every unmatched torch key and Flax leaf, every note (tied weights, constant buffers, copies,
Linen auto-names) and every problem (a layer with no rule, a shape or dtype mismatch), one line
each. ``--json FILE`` writes the same atomically. Exit 0 when
everything is paired, 1 otherwise or when the models do not load (a one-line
:class:`parity.errors.ParityError` for :mod:`parity.cli`), 2 for usage errors.
"""

from __future__ import annotations

import argparse

from parity.spec import parse_shape


def _flatten_option(text: str) -> tuple[str, tuple[int, ...]]:
    layer, sep, shape = text.partition("=")
    if not sep or not layer:
        raise argparse.ArgumentTypeError(f"expected LAYER=C,H,W, got {text!r}")
    try:
        return layer, parse_shape(shape)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _shape_option(text: str) -> tuple[int, ...]:
    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--torch``, ``--flax``, ``--map``, ``--input-shape``, ``--input-dtype``,
    ``--no-channels-last``, ``--flatten`` (shared with ``parity convert``)."""
    parser.add_argument(
        "--torch", metavar="SPEC", required=required, help="package.module:factory or file.py:factory"
    )
    parser.add_argument("--flax", metavar="SPEC", required=required, help="factory of a Linen or NNX module")
    parser.add_argument("--map", metavar="FILE", help="name rules 'REGEX -> FLAX/PATH', one per line")
    parser.add_argument(
        "--input-shape",
        type=_shape_option,
        metavar="N,C,H,W",
        help="input shape in torch layout: initialises a Linen module and sharpens flatten detection",
    )
    parser.add_argument("--input-dtype", default="float32", help="dtype of that input (default float32)")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="give Flax the input shape as is (e.g. token ids), not moved to channels-last",
    )
    parser.add_argument(
        "--flatten",
        type=_flatten_option,
        action="append",
        metavar="LAYER=C,H,W",
        help="the channels-first map flattened into Linear LAYER, when tracing cannot find it",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity map``."""
    add_model_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="write the pairing as JSON (atomically)")


def load_models(args: argparse.Namespace, shapes_only: bool = False):
    """``(torch model, Flax target, options for the converter)`` from the parsed options."""
    from parity.convert.files import load_models as load

    torch_model, target = load(
        args.torch, args.flax, args.input_shape, args.channels_last, args.input_dtype, shapes_only
    )
    options = {"user_map": args.map, "flatten_shapes": dict(args.flatten or ()) or None}
    options["input_shape"] = args.input_shape if args.input_dtype.startswith("float") else None
    return torch_model, target, options


def _shape(s) -> str:
    return "" if s is None else str(tuple(s))


def _report(pairing, rows) -> str:
    from parity.table import format_table

    table = format_table(
        ["torch key", "shape", "Flax path", "shape", "rule"],
        [
            [
                r["torch"] or "-",
                _shape(r["torch_shape"]),
                r["flax"] or "-",
                _shape(r["flax_shape"]),
                r["rule"],
            ]
            for r in rows
        ],
    )
    lines = [table, "", f"flatten detection: {pairing.flatten.method}"]
    lines += [f"  {k} <- {_shape(v)} (C, *spatial)" for k, v in pairing.flatten.shapes.items()]
    lines.append(
        f"unmatched torch keys ({len(pairing.unmatched_torch)}): "
        + (", ".join(pairing.unmatched_torch) or "none")
    )
    lines.append(
        f"unmatched Flax leaves ({len(pairing.unmatched_flax)}): "
        + (", ".join(pairing.unmatched_flax) or "none")
    )
    lines += [f"note: {n}" for n in pairing.notes]
    lines += [f"problem: {p}" for p in pairing.problems]
    lines.append("all paired" if pairing.ok else f"NOT all paired: {len(pairing.problems)} problem(s)")
    return "\n".join(lines)


def _pairing(args: argparse.Namespace):
    """``(pairing, rows)`` of the models; a model that does not load or convert, or a file that
    cannot be read or written, is one :class:`parity.harness.results.ModelsError` (exit 1)."""
    from parity.convert import ConversionError, map_models
    from parity.harness.results import ModelsError
    from parity.spec import SpecError

    try:
        torch_model, target, options = load_models(args, shapes_only=True)
        return map_models(torch_model, target, **options)
    except (ConversionError, SpecError, OSError) as e:
        raise ModelsError(str(e)) from None


def _write_json(path: str, pairing, rows) -> None:
    from parity.harness.results import ModelsError
    from parity.io import atomic_write_json

    doc = {
        "ok": pairing.ok,
        "pairs": rows,
        "unmatched_torch": pairing.unmatched_torch,
        "unmatched_flax": pairing.unmatched_flax,
        "problems": pairing.problems,
        "notes": pairing.notes,
        "ties": pairing.ties,
        "constants": pairing.constants,
        "flatten": {"method": pairing.flatten.method, "shapes": pairing.flatten.shapes},
    }
    try:
        atomic_write_json(path, doc)
    except OSError as e:
        raise ModelsError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Print the pairing; exit 0 when all paired, 1 otherwise."""
    pairing, rows = _pairing(args)
    if args.json:
        _write_json(args.json, pairing, rows)
    print(_report(pairing, rows))
    return 0 if pairing.ok else 1
