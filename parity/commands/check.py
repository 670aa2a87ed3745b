"""``parity check``: the parity suite from the command line.

Without options it runs the foundation comparisons (:func:`parity.harness.compare.run_checks`: eval and
train forward, BN running statistics, gradients, round trip) for every model and Flax style on
the current device, prints one row per check (model, framework, check, value, tolerance, pass)
and exits 1 if any check fails. Options add the harness's sections:

* ``--localize``: per-layer report in eval and train mode (dropout on, shared masks) and the
  per-parameter gradient report (backward order); JSON section ``layers``.
* ``--trajectory STEPS`` with ``--optimizer {sgd,adam,adamw}``: train both sides STEPS steps
  (dropout per ``--dropout-masks``) twice. In float64 on both sides: that run is the check (any
  difference above 1e-9 is the port). In float32, with a float64 torch copy alongside: that run
  is reported (JSON section ``trajectory``, the plot, a line on stderr when it leaves its
  tolerance) but is not a check, because a float32 trajectory can leave any fixed tolerance
  through a ReLU decision that sits within rounding distance of zero (docs/HARNESS.md).
* ``--precision {strict,default,both}``: ``strict`` turns TF32 off in torch and sets jax's
  matmul precision to ``highest``; ``default`` keeps each framework's defaults. Without the
  option: ``both`` on CUDA (side by side), ``strict`` on CPU (where the two are identical).
  Tolerances depend on device and policy (:func:`parity.harness.suite.policy_tolerances`).
* ``--device {auto,cpu,cuda}``: ``cuda`` without a GPU is an error (exit 2).
* ``--json FILE``: ``{"passed", "device", "precisions", "checks": [...], "layers": [...],
  "trajectory": [...]}``, written atomically.
* ``--plot FILE``: PNG with the per-layer divergence bars (log scale) and the trajectory
  envelope; implies ``--localize`` when neither ``--localize`` nor ``--trajectory`` is given.

Your models: ``--torch SPEC --flax SPEC --input-shape N,C,H,W`` (SPEC is
``package.module:factory`` or ``path/file.py:factory``; see :mod:`parity.spec`) checks a torch
model against its Flax port (Linen or NNX, whatever the factory returns) instead of
``--models``: the torch weights are converted into the Flax model (``--map``, ``--flatten`` as
in ``parity map``), the input is drawn in torch layout (``--input-dtype``; integer ids in
``[0, --input-high)``) and given to Flax channels-last by rank, or as it is with
``--no-channels-last`` (tokens); labels come from the output's last dimension. The same
options add the same sections (:mod:`parity.harness.user`); ``--models``, ``--frameworks``
and ``--batch-size`` do not apply (the batch is ``--input-shape``'s first dimension). A SPEC
that does not import or returns the wrong type, a layer with no rule, an unmatched key, a
shape or dtype mismatch: one line on stderr naming the module and key, exit 1.

Exit codes: 0 all within tolerance, 1 a check failed (or the user models do not convert), 2
usage or device error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from parity.device import DEVICES
from parity.harness.suite import DROPOUT_CHOICES, PRECISION_CHOICES, CheckConfig
from parity.registry import FLAX_FRAMEWORKS, MODELS, OPTIMIZERS

if TYPE_CHECKING:
    from parity.harness.user import SpecModels


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
        default=0,
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
    (``ValueError`` with a one-line message when a setting is refused)."""
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

    try:
        config = data_parallel_config(args)
        if config.json is not None:
            validate_outputs(CheckConfig(json=config.json))
    except ValueError as e:
        print(f"parity check: error: {e}", file=sys.stderr)
        return 2
    try:
        result = suite.run_data_parallel(config, lambda msg: print(msg, file=sys.stderr))
    except (WorkerError, RuntimeError) as e:
        print(f"parity check: error: {e}", file=sys.stderr)
        return 1
    print(suite.format_rows(result.rows))
    print(f"\n{'all data-parallel checks pass' if result.passed else 'a data-parallel check FAILED'}")
    if config.json is not None:
        suite.write_json(result, config.json)
    return 0 if result.passed else 1


def run(args: argparse.Namespace) -> int:
    """Run the checks; 0 if all pass, 1 if any fails, 2 for a usage or device error."""
    if args.data_parallel:
        return run_data_parallel(args)
    from parity.device import DeviceError
    from parity.harness.suite import format_checks, resolve_device, run_suite, validate_outputs, write_outputs

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    if args.torch or args.flax:
        return run_spec(args, log)
    try:
        config = build_config(args)
        validate_outputs(config)
        resolve_device(config)
    except (DeviceError, ValueError) as e:
        print(f"parity check: error: {e}", file=sys.stderr)
        return 2
    result = run_suite(config, log)
    print(format_checks(result.checks))
    print(f"\n{result.verdict()}")
    write_outputs(config, result)
    return 0 if result.passed else 1


# ------------------------------------------------------------------------ user models (SPECs)


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    """``--torch``, ``--flax``, ``--map``, ``--input-shape``, ``--input-dtype``,
    ``--no-channels-last``, ``--flatten`` (as in ``parity map``) and ``--input-high``."""
    from parity.commands.map import add_model_arguments

    add_model_arguments(parser, required=False)
    parser.add_argument(
        "--input-high", type=int, metavar="N", help="integer inputs (token ids) are drawn from [0, N)"
    )


def spec_models(args: argparse.Namespace) -> SpecModels:
    """The :class:`parity.harness.user.SpecModels` of the parsed options (``ValueError`` with a
    one-line message for a usage error)."""
    from parity.harness.user import SpecInput, SpecModels

    if not (args.torch and args.flax):
        raise ValueError("give both --torch SPEC and --flax SPEC")
    if args.input_shape is None:
        raise ValueError("--torch/--flax need --input-shape N,C,... (torch layout) to draw the input")
    inp = SpecInput(args.input_shape, args.input_dtype, args.input_high, args.channels_last)
    return SpecModels(args.torch, args.flax, inp, args.map, dict(args.flatten or ()) or None)


def run_spec(args: argparse.Namespace, log: Callable[[str], None]) -> int:
    """``parity check --torch SPEC --flax SPEC``: 0 all pass, 1 a check fails or the models do
    not convert (one line), 2 usage or device error."""
    from parity.convert import ConversionError
    from parity.device import DeviceError, configure
    from parity.harness.suite import format_checks, run_suite, validate_outputs, write_outputs
    from parity.harness.user import spec_policy, validate_spec
    from parity.spec import SpecError

    try:
        spec = spec_models(args)
        config = build_config(args)
        validate_outputs(config)
        configure(config.device, "strict")
    except (DeviceError, ValueError) as e:
        print(f"parity check: error: {e}", file=sys.stderr)
        return 2
    try:
        validate_spec(spec, config)  # one line before any output when the models do not convert
        result = run_suite(config, log, lambda cfg, dev, prec, log_: spec_policy(cfg, spec, dev, prec, log_))
    except (SpecError, ConversionError, OSError) as e:
        print(f"parity check: error: {e}", file=sys.stderr)
        return 1
    print(format_checks(result.checks))
    print(f"\n{result.verdict()}")
    write_outputs(config, result)
    return 0 if result.passed else 1
