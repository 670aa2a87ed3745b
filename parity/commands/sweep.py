"""``parity sweep``: the misplacement study over a grid of models x evaluation schedules (a thin
layer over :mod:`parity.sweep`).

Exit codes: 0 done; 1 done but a mode audit contradicted its expectation in some cell; 2 bad
input (unknown model or variant, bad schedule, unwritable ``--out``; checked before any
training); 130 interrupted (finished cells stay in ``--out/cells`` and are resumed next time; the
interrupted cell leaves no file).
"""

from __future__ import annotations

import argparse
import sys

from parity.commands.study import eval_schedule
from parity.study.config import LINEN_PATHS, STUDY_MODELS, VARIANT_NAMES
from parity.sweep.grid import QUICK, SweepConfig, with_overrides

DEFAULTS = SweepConfig()


def _names(choices: tuple[str, ...]):
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        for name in names:
            if name not in choices:
                raise argparse.ArgumentTypeError(f"unknown name {name!r}; choose from {', '.join(choices)}")
        return names

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity sweep``: the grid, the per-cell training, where the files go."""
    parser.add_argument(
        "--models",
        nargs="+",
        type=_names(STUDY_MODELS),
        default=None,
        metavar="MODEL",
        help=f"models (default: {' '.join(DEFAULTS.models)}; --quick {' '.join(QUICK.models)})",
    )
    parser.add_argument(
        "--schedules",
        nargs="+",
        type=eval_schedule,
        default=None,
        metavar="EVERY",
        help="--eval-every values: 'epoch', 'end' or a step count (default: "
        f"{' '.join(map(str, DEFAULTS.schedules))}; --quick {' '.join(map(str, QUICK.schedules))})",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        type=_names(VARIANT_NAMES),
        default=None,
        metavar="VARIANT",
        help=f"variants per cell, torch_correct included (default: {' '.join(DEFAULTS.variants)})",
    )
    _add_run_options(parser)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """How each cell trains and where the files go."""
    from parity.device import DEVICES, PRECISIONS

    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help=f"seeds per cell (default {DEFAULTS.seeds}; --quick {QUICK.seeds})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per run (default {DEFAULTS.epochs}; --quick {QUICK.epochs})",
    )
    parser.add_argument(
        "--train-subset",
        type=int,
        default=None,
        metavar="N",
        help=f"train on the first N examples only (default: all; --quick {QUICK.train_subset})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a first look in a few minutes on a 2-core CPU (explicit options win)",
    )
    parser.add_argument("--device", choices=DEVICES, default=DEFAULTS.device, help="as for parity study")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=DEFAULTS.precision, help="as for parity study"
    )
    parser.add_argument(
        "--linen-path",
        choices=LINEN_PATHS,
        default=DEFAULTS.linen_path,
        help="as for parity study (a step-count schedule always uses the loop)",
    )
    parser.add_argument(
        "--out",
        default="./sweep-out",
        metavar="DIR",
        help="output directory: sweep.json, sweep.md, sweep.png, cells/ (default ./sweep-out)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    """The :class:`SweepConfig` the options describe (``--quick`` is the base grid when given)."""
    base = QUICK if args.quick else DEFAULTS
    return with_overrides(
        base,
        models=_flat(args.models),
        schedules=tuple(dict.fromkeys(args.schedules)) if args.schedules else None,
        variants=_flat(args.variants),
        seeds=args.seeds,
        epochs=args.epochs,
        train_subset=args.train_subset,
        device=args.device,
        precision=args.precision,
        linen_path=args.linen_path,
    )


def _flat(tokens: list[list[str]] | None) -> tuple[str, ...] | None:
    """``--models a,b c`` -> ``('a', 'b', 'c')`` (repeats dropped), ``None`` when not given."""
    return tuple(dict.fromkeys(n for t in tokens for n in t)) if tokens else None


def run(args: argparse.Namespace) -> int:
    """Run the grid, resuming finished cells; write sweep.json, sweep.md, sweep.png."""
    from parity.io import ensure_writable_dir
    from parity.sweep.grid import SweepError

    config = config_from_args(args)
    config.validate()
    try:
        out = ensure_writable_dir(args.out)
    except OSError as e:
        raise SweepError(str(e)) from e
    from parity.sweep.outputs import write_summary_files
    from parity.sweep.runner import run_sweep

    try:
        document = run_sweep(config, out, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(
            f"parity sweep: interrupted; finished cells are kept in {out / 'cells'} and resumed next time",
            file=sys.stderr,
        )
        return 130
    paths = write_summary_files(document, out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    bad = [
        c["cell"]
        for c in document["cells"]
        if any(s["audit_as_expected"] is False for s in c["variants"].values())
    ]
    if bad:
        print(f"parity sweep: mode audit contradicts the expectation in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
