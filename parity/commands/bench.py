"""``parity bench``: argparse only; the benchmark itself is :mod:`parity.bench`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from parity.bench import (
    SEEDS,
    STYLES,
    BenchConfig,
    benchmark,
    check_output_paths,
    format_report,
    validate,
    write_outputs,
)
from parity.device import DEVICES, PRECISIONS
from parity.registry import MODELS


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(p.strip()) for p in text.split(",") if p.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {e}") from e

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity bench``."""
    parser.add_argument(
        "--models",
        type=_csv(str),
        default=None,
        help=f"comma-separated, from {', '.join(MODELS)} (default: both; --quick on cuda: digits)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=_csv(int),
        default=None,
        help="comma-separated (default: 128,1024,8192 on cuda; 128,1024 on cpu; "
        "--quick: 128,8192 on cuda, 128 on cpu)",
    )
    parser.add_argument(
        "--styles",
        type=_csv(str),
        default=None,
        help=f"comma-separated, from {', '.join(STYLES)} (default: all)",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="auto: cuda when torch and jax see a GPU, else cpu"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="strict",
        help="float32 policy for timing (parity.device); the gate is always strict",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; --quick 3)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="steps per repeat (default: by device and batch size, see default_steps)",
    )
    parser.add_argument("--seeds", type=int, default=SEEDS, help="models in the vmap style (default 8)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads on CPU (default: torch's own, one per core)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a shorter run: fewer batch sizes, repeats and steps, no scan styles on CPU "
        "(7 min 39 s on the 2-core AVX2 dev box, BENCHMARKS.md)",
    )
    parser.add_argument("--json", metavar="FILE.json", help="write the full report as JSON (atomically)")
    parser.add_argument(
        "--plot", metavar="FILE", help="write a bar chart (log scale): .png, .svg or .pdf, e.g. bench.png"
    )


#: batch sizes when --batch-sizes is not given, by (device, --quick)
DEFAULT_BATCHES: dict[tuple[str, bool], tuple[int, ...]] = {
    ("cuda", False): (128, 1024, 8192),
    ("cuda", True): (128, 8192),
    ("cpu", False): (128, 1024),
    ("cpu", True): (128,),
}


def _config(args: argparse.Namespace) -> BenchConfig:
    """The frozen, validated :class:`BenchConfig` of the command line (names are checked before
    torch and jax load; ``--device auto`` is resolved, which loads them)."""
    from parity.device import configure

    styles = tuple(args.styles) if args.styles is not None else tuple(STYLES)
    models = tuple(args.models) if args.models is not None else None
    validate(models or MODELS, styles, args.batch_sizes if args.batch_sizes is not None else (128,))
    device = configure(args.device, "strict").device
    if models is None:
        models = ("digits",) if args.quick and device == "cuda" else MODELS
    return BenchConfig(
        models=models,
        batch_sizes=args.batch_sizes if args.batch_sizes is not None else DEFAULT_BATCHES[device, args.quick],
        styles=styles,
        device=device,
        precision=args.precision,
        repeats=args.repeats if args.repeats is not None else (3 if args.quick else 5),
        steps=args.steps,
        seeds=args.seeds,
        quick=args.quick,
        torch_threads=args.torch_threads,
        explicit_styles=args.styles is not None,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 0, 1 if a style failed its gate or checks or raised. Bad input
    (:class:`BenchError`, :class:`parity.device.DeviceError`, a configuration that would measure
    nothing) reaches :mod:`parity.cli`: one line, exit 2, nothing measured or written."""
    from parity.bench.spec import check_runnable
    from parity.progress import Progress

    check_output_paths(args.json, args.plot)
    cfg = _config(args)
    check_runnable(cfg)
    total = len(cfg.models) * len(cfg.batch_sizes) * len(cfg.styles)
    with Progress("units", total) as bar:
        report = benchmark(cfg, bar)
    print(format_report(report))
    write_outputs(report, args.json, args.plot)
    bad = [r for r in report["results"] if r["status"] in ("failed", "error")]
    for r in bad:
        print(
            f"parity bench: {r['model']} batch {r['batch_size']} {r['style']}: {r['status']}: {r['reason']}",
            file=sys.stderr,
        )
    return 1 if bad else 0
