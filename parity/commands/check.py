"""``parity check``: the parity suite from the command line (options: ``parity check --help``).

A thin layer: it turns the options into a :class:`parity.harness.suite.CheckConfig` (and, for
``--torch/--flax``, a :class:`parity.harness.specs.SpecModels`), runs the suite and prints the
table. Errors reach :mod:`parity.cli` as :class:`parity.errors.ParityError`: exit 2 for usage,
device and output errors, 1 for models that do not convert or a data-parallel worker failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from parity.device import DEVICES
from parity.harness.results import CheckError, ModelsError
from parity.harness.suite import DROPOUT_CHOICES, PRECISION_CHOICES, CheckConfig
from parity.registry import FLAX_FRAMEWORKS, MODELS, OPTIMIZERS

if TYPE_CHECKING:
    from parity.harness.specs import SpecModels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity check``."""
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated models (default: {','.join(MODELS)})"
    )
    parser.add_argument(
        "--frameworks",
        default=",".join(FLAX_FRAMEWORKS),
        help=f"comma-separated Flax styles (default: {','.join(FLAX_FRAMEWORKS)})",
    )
    parser.add_argument(
        "--localize", action="store_true", help="per-layer (eval, train) and per-parameter gradient reports"
    )
    parser.add_argument(
        "--trajectory",
        type=int,
        default=0,
        metavar="STEPS",
        help="train both sides STEPS steps and report per-step differences",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="optimizer of --trajectory (matched torch.optim / optax; default sgd)",
    )
    parser.add_argument(
        "--dropout-masks",
        choices=DROPOUT_CHOICES,
        default="shared",
        help="shared: dropout on with identical masks; off: models built with dropout 0",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default=None,
        help="float32 precision policy (default: both on CUDA, strict on CPU)",
    )
    parser.add_argument(
        "--device", choices=DEVICES, default="auto", help="where both frameworks run (default: auto)"
    )
    parser.add_argument("--seed", type=int, default=0, help="weights, batch order and dropout masks seed")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON (atomically)")
    parser.add_argument("--plot", metavar="FILE", help="write a PNG: per-layer bars and trajectory envelope")
    add_spec_arguments(parser)
    parser.add_argument(
        "--data-parallel",
        type=int,
        default=None,
        metavar="N",
        help="data-parallel checks 1-4 instead: torch DDP over N gloo ranks and Flax on N simulated "
        "CPU devices against one device (--trajectory STEPS, default 3; --batch-size is global)",
    )
    parser.add_argument(
        "--mismatches",
        action="store_true",
        help="with --data-parallel: also measure the mismatch rows 10-14 of MODE_BUGS.md",
    )


def _names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def build_config(args: argparse.Namespace) -> CheckConfig:
    """The validated :class:`parity.harness.suite.CheckConfig` of the parsed options
    (:class:`parity.harness.results.CheckError` when a setting is refused)."""
    return CheckConfig(
        models=_names(args.models),
        frameworks=_names(args.frameworks),
        localize=args.localize,
        trajectory=args.trajectory,
        optimizer=args.optimizer,
        dropout_masks=args.dropout_masks,
        precision=args.precision,
        device=args.device,
        seed=args.seed,
        batch_size=args.batch_size,
        json=Path(args.json) if args.json else None,
        plot=Path(args.plot) if args.plot else None,
    )


def data_parallel_config(args: argparse.Namespace):
    """The validated :class:`parity.harness.data_parallel_suite.DataParallelConfig` of the parsed
    options (``ValueError`` with a one-line message when refused; nothing has started yet)."""
    from parity.harness.data_parallel_suite import DEFAULT_STEPS, DataParallelConfig
    from parity.replicas import gpu_count

    for option, value in (
        ("--localize", args.localize),
        ("--plot", args.plot),
        ("--precision", args.precision),
    ):
        if value:
            raise ValueError(f"{option} does not apply to --data-parallel")
    device = args.device if args.device != "auto" else ("cuda" if gpu_count() else "cpu")
    config = DataParallelConfig(
        world_size=args.data_parallel,
        models=_names(args.models),
        steps=args.trajectory or DEFAULT_STEPS,
        batch_size=args.batch_size,
        device=device,
        mismatches=args.mismatches,
        seed=args.seed,
        json=Path(args.json) if args.json else None,
    )
    config.validate()
    return config


def run_data_parallel(args: argparse.Namespace) -> int:
    """``--data-parallel N``: checks 1-4 (and ``--mismatches``); 0 all pass, 1 one fails or a
    worker failed (named), 2 refused before anything started."""
    from parity.harness import data_parallel_suite as suite
    from parity.harness.suite import validate_outputs
    from torch_impl.data_parallel import WorkerError

    try:  # the data-parallel modules raise ValueError / WorkerError: one line each
        config = data_parallel_config(args)
        if config.json is not None:
            validate_outputs(CheckConfig(json=config.json))
    except ValueError as e:
        raise CheckError(str(e)) from None
    try:
        result = suite.run_data_parallel(config, lambda msg: print(msg, file=sys.stderr))
    except (WorkerError, RuntimeError) as e:
        raise ModelsError(str(e)) from None
    print(suite.format_rows(result.rows))
    print(f"\n{'all data-parallel checks pass' if result.passed else 'a data-parallel check FAILED'}")
    if config.json is not None:
        suite.write_json(result, config.json)
    return 0 if result.passed else 1


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run the checks; 0 if all pass, 1 if any fails (errors: :class:`ParityError`)."""
    if args.data_parallel is not None:
        return run_data_parallel(args)
    models = spec_models(args) if (args.torch or args.flax) else None
    result = run_spec_check(build_config(args), models, _log)
    return 0 if result.passed else 1


def run_spec_check(config: CheckConfig, models: SpecModels | None, log=_log):
    """The check command's path after the options: refuse what would fail later, run the suite
    on ``models`` (``None``: the zoo), print the table and the verdict, write ``--json`` and
    ``--plot``; the :class:`parity.harness.suite.SuiteResult` (``parity port`` runs it too)."""
    from parity.harness.suite import format_checks, run_suite, write_outputs

    _prepare(config, models)
    result = run_suite(config, log, models)
    print(format_checks(result.checks))
    print(f"\n{result.verdict()}")
    write_outputs(config, result)
    return result


def _prepare(config: CheckConfig, models: SpecModels | None) -> None:
    """Refuse what would fail later before any output: the outputs, the device, the batch
    size (zoo) or the user models (built, converted and run once)."""
    from parity.device import configure
    from parity.harness.suite import resolve_device, validate_outputs

    validate_outputs(config)
    if models is None:
        resolve_device(config)  # batch size (CheckError) and device (DeviceError)
    else:
        configure(config.device, "strict")
        models.validate(config)


# ------------------------------------------------------------------------ user models (SPECs)


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options of ``parity map`` (:func:`parity.commands.map.add_model_arguments`:
    ``--torch``, ``--flax``, ``--map``, the inputs, ``--flatten``) and ``--output``."""
    from parity.commands.map import add_model_arguments

    add_model_arguments(parser, required=False)
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="models returning a tuple, dict or dataclass: compare only this output leaf "
        "(e.g. 0, logits, aux.1); default: every tensor leaf both return, the first one trained on",
    )


def spec_models(args: argparse.Namespace) -> SpecModels:
    """The :class:`parity.harness.specs.SpecModels` of the parsed options
    (:class:`parity.harness.results.CheckError` for a usage error)."""
    from parity.commands.map import model_inputs
    from parity.harness.specs import SpecModels

    if not (args.torch and args.flax):
        raise CheckError("give both --torch SPEC and --flax SPEC")
    inp, extra = model_inputs(args)
    if inp is None:
        raise CheckError(
            "--torch/--flax need --input-shape N,C,... or --input N,C,... (torch layout) to draw the input"
        )
    flatten = dict(args.flatten or ()) or None
    return SpecModels(args.torch, args.flax, inp, args.map, flatten, output=args.output, extra_inputs=extra)
