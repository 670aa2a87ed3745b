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
import sys

from parity.spec import parse_shape


def _flatten_option(text: str) -> tuple[str, tuple[int, ...]]:
    layer, sep, shape = text.partition("=")
    if not sep or not layer:
        raise argparse.ArgumentTypeError(f"expected LAYER=C,H,W, got {text!r}")
    try:
        return layer, parse_shape(shape)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def shape_option(text: str) -> tuple[int, ...]:
    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def input_option(text: str) -> tuple[str, tuple[tuple[int, ...], str, int | None]]:
    """``[NAME=]SHAPE[:DTYPE[:HIGH]]`` -> ``(name or '', (shape, dtype, high))``."""
    name, _, rest = text.rpartition("=")
    parts = rest.split(":")
    if len(parts) > 3 or (name and not name.isidentifier()):
        raise argparse.ArgumentTypeError(f"expected [NAME=]SHAPE[:DTYPE[:HIGH]], got {text!r}")
    try:
        shape = parse_shape(parts[0])
        high = int(parts[2]) if len(parts) == 3 else None
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name, (shape, parts[1] if len(parts) > 1 else "float32", high)


def add_input_arguments(parser: argparse.ArgumentParser, shape_help: str, required: bool = False) -> None:
    """``--input-shape``, ``--input-dtype``, ``--input-high`` and the repeatable ``--input`` (shared
    by ``map``, ``convert``, ``check`` and ``port``)."""
    parser.add_argument(
        "--input-shape", type=shape_option, required=required, metavar="N,C,H,W", help=shape_help
    )
    parser.add_argument("--input-dtype", default="float32", help="dtype of that input (default float32)")
    parser.add_argument(
        "--input-high", type=int, metavar="N", help="integer inputs (token ids) are drawn from [0, N)"
    )
    parser.add_argument(
        "--input",
        dest="extra_inputs",
        action="append",
        type=input_option,
        metavar="[NAME=]SHAPE[:DTYPE[:HIGH]]",
        help="a model input, torch layout; repeat for several: positional in the order given, or "
        "keyword NAME (e.g. --input 4,3,32,32 --input t=4:int64:1000). Without --input-shape the "
        "first positional --input is the main input; with it, every --input comes after it",
    )


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--torch``, ``--flax``, ``--map``, ``--input-shape``, ``--input-dtype``, ``--input-high``,
    ``--input`` (repeatable), ``--no-channels-last``, ``--flatten`` (shared by ``parity map``,
    ``parity convert`` and ``parity check``; :func:`model_inputs` reads the inputs)."""
    parser.add_argument(
        "--torch", metavar="SPEC", required=required, help="package.module:factory or file.py:factory"
    )
    parser.add_argument("--flax", metavar="SPEC", required=required, help="factory of a Linen or NNX module")
    parser.add_argument("--map", metavar="FILE", help="name rules 'REGEX -> FLAX/PATH', one per line")
    add_input_arguments(
        parser, "input shape in torch layout: initialises a Linen module and sharpens flatten detection"
    )
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


def model_inputs(args: argparse.Namespace, draws: bool = True) -> tuple:
    """``(main input or None, ((name, input), ...) after it)`` as
    :class:`parity.harness.specs.SpecInput` from ``--input-shape/--input-dtype/--input-high``
    and the ``--input`` options (the first positional ``--input`` is the main input when there
    is no ``--input-shape``). ``draws=False`` (``map``, ``convert``: only shapes and dtypes
    matter) lets integer inputs go without a range (ids 0). Invalid settings raise
    :class:`parity.harness.results.CheckError`."""
    from parity.harness.results import CheckError
    from parity.harness.specs import SpecInput

    def spec_input(shape, dtype, high):
        if not draws and high is None and dtype.startswith(("int", "uint")):
            high = 1
        return SpecInput(shape, dtype, high, args.channels_last)

    given = list(args.extra_inputs or ())
    if args.input_shape is not None:
        first = spec_input(args.input_shape, args.input_dtype, args.input_high)
    else:
        if given and (args.input_high is not None or args.input_dtype != "float32"):
            raise CheckError(
                "--input-dtype/--input-high describe --input-shape; with --input give them in it "
                "(--input SHAPE:DTYPE:HIGH)"
            )
        main = next((i for i, (name, _) in enumerate(given) if not name), None)
        if main is None:
            if given:
                raise CheckError(
                    "the main input is positional: give --input-shape or an --input with no NAME="
                )
            return None, ()
        first = spec_input(*given.pop(main)[1])
    return first, tuple((name, spec_input(*e)) for name, e in given)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity map``."""
    add_model_arguments(parser)
    parser.add_argument("--json", metavar="FILE", help="write the pairing as JSON (atomically)")


def load_models(args: argparse.Namespace, shapes_only: bool = False, step=None) -> tuple:
    """``(torch model, Flax target, options for the converter, real)`` from the parsed options;
    ``shapes_only`` and ``real``: :func:`parity.convert.files.load_models`; ``step(text)``
    names each long step (a :class:`parity.progress.Progress`'s ``describe``)."""
    step = step or (lambda text: None)
    step(f"loading the torch model {args.torch}")  # before the imports below (torch, jax)
    from parity.convert.files import load_models as load
    from parity.harness.outputs import extra_inputs

    first, extra = model_inputs(args, draws=False)
    more = extra_inputs(args.flax, first, extra) if first is not None else None
    torch_model, target, real = load(
        args.torch, args.flax, first, shapes_only, more, step or (lambda t: None)
    )
    options = {"user_map": args.map, "flatten_shapes": dict(args.flatten or ()) or None}
    options["input_shape"] = first.shape if first is not None and first.is_float else None
    return torch_model, target, options, real


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


def _pairing(args: argparse.Namespace, bar):
    """``(pairing, rows)`` of the models, each step named on ``bar`` (a
    :class:`parity.progress.Progress`); a model that does not load or convert, or a file that
    cannot be read or written, is one :class:`parity.harness.results.ModelsError` (exit 1)."""
    from parity.errors import ParityError

    try:  # the first step is named before torch or jax is imported
        step = steps(bar)
        torch_model, target, options, _ = load_models(args, shapes_only=True, step=step)
        step("pairing the weights")
        from parity.convert import map_models

        return map_models(torch_model, target, **options)
    except (ParityError, OSError) as e:
        from parity.convert import ConversionError
        from parity.harness.results import ModelsError
        from parity.spec import SpecError

        if isinstance(e, ConversionError | SpecError | OSError):
            raise ModelsError(str(e)) from None
        raise


def steps(bar):
    """A ``step(text)`` callback that names the step on ``bar`` and counts the one before."""
    started = [False]

    def step(text: str) -> None:
        if started[0]:
            bar.advance()
        started[0] = True
        bar.describe(text)

    return step


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
    """Print the pairing; exit 0 when all paired, 1 otherwise. On a terminal, a transient bar
    on stderr names each step as it starts (the first before torch or jax is imported); in a
    pipe or log stderr holds nothing but a failure's one line."""
    from parity.progress import Progress

    with Progress("steps", 3, enabled=sys.stderr.isatty(), transient=True) as bar:
        pairing, rows = _pairing(args, bar)
    if args.json:
        _write_json(args.json, pairing, rows)
    print(_report(pairing, rows))
    return 0 if pairing.ok else 1
