"""``parity bench``: argparse only; the benchmark itself is :mod:`parity.bench`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from parity.bench import (
    SEEDS,
    STYLES,
    BenchConfig,
    BenchError,
    benchmark,
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
        "--quick", action="store_true", help="a short run (under a minute on the 2-core CPU dev box)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the full report as JSON (atomically)")
    parser.add_argument("--plot", metavar="FILE", help="write a bar chart (log scale), e.g. bench.png")


def _progress_bar():
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; exit 0, 1 if a style failed its gate or raised, 2 for bad input."""
    from parity.device import DeviceError, configure
    from parity.io import ensure_writable_dir

    err = lambda msg: print(f"parity bench: error: {msg}", file=sys.stderr)
    styles = args.styles if args.styles is not None else list(STYLES)
    try:
        validate(args.models if args.models is not None else MODELS, styles, args.batch_sizes or [128])
        if (
            (args.repeats is not None and args.repeats < 1)
            or (args.steps is not None and args.steps < 1)
            or args.seeds < 1
            or (args.torch_threads is not None and args.torch_threads < 1)
        ):
            raise BenchError("--repeats, --steps, --seeds and --torch-threads must be >= 1")
        for out in (args.json, args.plot):
            if out:
                ensure_writable_dir(os.path.dirname(os.path.abspath(out)))
        device = configure(args.device, "strict").device
    except (BenchError, DeviceError, OSError) as e:
        err(e)
        return 2
    if args.models is not None:
        models = args.models
    else:
        models = ["digits"] if args.quick and device == "cuda" else list(MODELS)
    if args.batch_sizes is not None:
        batches = args.batch_sizes
    elif device == "cuda":
        batches = [128, 8192] if args.quick else [128, 1024, 8192]
    else:
        batches = [128] if args.quick else [128, 1024]
    cfg = BenchConfig(
        models=models,
        batch_sizes=batches,
        styles=styles,
        device=device,
        precision=args.precision,
        repeats=args.repeats or (3 if args.quick else 5),
        steps=args.steps,
        seeds=args.seeds,
        quick=args.quick,
        torch_threads=args.torch_threads,
        explicit_styles=args.styles is not None,
    )
    total = len(cfg.models) * len(cfg.batch_sizes) * len(cfg.styles)
    bar = _progress_bar()
    if bar.console.is_terminal:
        with bar:
            task = bar.add_task("starting", total=total)
            report = benchmark(cfg, lambda desc, adv: bar.update(task, description=desc, advance=adv))
    else:  # a log file or pipe: one line per unit of work instead of a redrawn bar
        done = [0]

        def log(desc: str, advance: int) -> None:
            done[0] += advance
            if not advance:
                print(f"[{done[0]}/{total}] {desc}", file=sys.stderr, flush=True)

        report = benchmark(cfg, log)
    print(format_report(report))
    write_outputs(report, args.json, args.plot)
    bad = [r for r in report["results"] if r["status"] in ("failed", "error")]
    for r in bad:
        err(f"{r['model']} batch {r['batch_size']} {r['style']}: {r['status']}: {r['reason']}")
    return 1 if bad else 0
