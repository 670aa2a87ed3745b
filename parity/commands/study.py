"""``parity study``: the misplacement study from the command line (a thin layer over
:mod:`parity.study.runners` and :mod:`parity.study.report`).

Exit codes: 0 done; 1 done but a mode audit contradicted its expectation; 2 bad input
(unknown dataset or variant, unusable device, unwritable ``--out``; all checked before any
training); 130 interrupted (nothing written).
"""

from __future__ import annotations

import argparse
import sys

from parity.study.runners import LINEN_PATHS, QUICK, STUDY_DATASETS, VARIANT_NAMES, StudyConfig

DEFAULTS = StudyConfig()


def _variant_list(text: str) -> list[str]:
    """One ``--variants`` token: a name or a comma-separated list of names."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in VARIANT_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown variant {name!r}; choose from {', '.join(VARIANT_NAMES)}"
            )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity study``."""
    from parity.device import DEVICES, PRECISIONS

    parser.add_argument(
        "--dataset",
        choices=STUDY_DATASETS,
        default=DEFAULTS.dataset,
        help=f"dataset (default {DEFAULTS.dataset})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help=f"number of seeds 0..N-1 (default {DEFAULTS.seeds}; --quick {QUICK['seeds']})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per run (default {DEFAULTS.epochs}; --quick {QUICK['epochs']})",
    )
    parser.add_argument(
        "--lr", type=float, default=DEFAULTS.lr, help=f"SGD learning rate (default {DEFAULTS.lr})"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        help=f"batch size (default {DEFAULTS.batch_size})",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        type=_variant_list,
        default=None,
        metavar="VARIANT",
        help=f"variants to train, space- or comma-separated (default: all of {', '.join(VARIANT_NAMES)})",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULTS.device,
        help="auto: the GPU when torch and jax see one, else CPU (default auto)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="float32 policy on GPUs: strict = no TF32 in either framework, so "
        "both compute alike; default = each framework's own (default strict)",
    )
    parser.add_argument(
        "--linen-path",
        choices=LINEN_PATHS,
        default=DEFAULTS.linen_path,
        help="Linen execution: loop of jitted steps per seed, or a scan epoch "
        "vmap-ed over seeds; auto = loop on CPU, vmap on GPU (default auto)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads (default: 1 on CPU, where these small models "
        "gain nothing from more; torch's own on a GPU)",
    )
    parser.add_argument(
        "--out",
        default="./study-out",
        metavar="DIR",
        help="output directory for results.json, curves.png, report.md (default ./study-out)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a first look: {QUICK['seeds']} seeds x {QUICK['epochs']} epochs "
        "(explicit --seeds/--epochs win)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The :class:`StudyConfig` the options describe (``--quick`` fills unset seeds/epochs)."""
    base = QUICK if args.quick else {"seeds": DEFAULTS.seeds, "epochs": DEFAULTS.epochs}
    variants = (
        tuple(dict.fromkeys(n for token in args.variants for n in token)) if args.variants else VARIANT_NAMES
    )
    return StudyConfig(
        dataset=args.dataset,
        seeds=base["seeds"] if args.seeds is None else args.seeds,
        epochs=base["epochs"] if args.epochs is None else args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        variants=variants,
        device=args.device,
        precision=args.precision,
        linen_path=args.linen_path,
        torch_threads=args.torch_threads,
    )


def run(args: argparse.Namespace) -> int:
    """Run the study the options describe; print the table; write the outputs."""
    from parity.device import DeviceError
    from parity.io import ensure_writable_dir

    def fail(message: str) -> int:
        print(f"parity study: error: {message}", file=sys.stderr)
        return 2

    try:
        config = config_from_args(args)
        config.validate()
        out = ensure_writable_dir(args.out)  # before any training
    except (ValueError, OSError) as e:
        return fail(str(e))

    from parity.device import configure
    from parity.study.report import print_table, summarize, write_outputs
    from parity.study.runners import run_study

    try:
        runtime = configure(config.device, config.precision)
    except (DeviceError, ValueError) as e:
        return fail(str(e))
    try:
        results = run_study(config, progress=not args.no_progress, runtime=runtime)
    except ValueError as e:  # e.g. batch size larger than the data
        return fail(str(e))
    except KeyboardInterrupt:
        print(f"parity study: interrupted; nothing was written to {out}", file=sys.stderr)
        return 130
    paths = write_outputs(results, out)
    summary = summarize(results)
    print_table(
        summary,
        title=f"parity study: {config.dataset}, {config.seeds} seeds x {config.epochs} "
        f"epochs, {runtime.device} ({runtime.precision} float32), "
        f"{results['total_wall_time_s']:.0f} s",
    )
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    bad = [v for v, s in summary.items() if not s["audit"]["as_expected"]]
    if bad:
        print(f"parity study: mode audit contradicts the expectation for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
