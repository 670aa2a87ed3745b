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
  Tolerances depend on device and policy (:func:`policy_tolerances`).
* ``--device {auto,cpu,cuda}``: ``cuda`` without a GPU is an error (exit 2).
* ``--json FILE``: ``{"passed", "device", "precisions", "checks": [...], "layers": [...],
  "trajectory": [...]}``, written atomically.
* ``--plot FILE``: PNG with the per-layer divergence bars (log scale) and the trajectory
  envelope; implies ``--localize`` when neither ``--localize`` nor ``--trajectory`` is given.

Exit codes: 0 all within tolerance, 1 a check failed, 2 usage or device error.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace

from parity.device import DEVICES
from parity.registry import FLAX_FRAMEWORKS, MODELS, OPTIMIZERS
from parity.table import format_table

#: Tolerances per (device, precision policy). ``layers`` bounds each layer output and gradient
#: of ``--localize``; ``trajectory`` multiplies :data:`parity.harness.trajectory.TRAJECTORY_TOL` for the
#: float32 trajectory (the float64 one is unaffected by TF32 and keeps its 1e-9). See
#: docs/HARNESS.md.
POLICY_TOLERANCES = {
    ("cpu", "strict"): {
        "forward": 1e-5,
        "gradient": 1e-5,
        "bn_state": 1e-5,
        "layers": 1e-5,
        "trajectory": 1.0,
    },
    ("cpu", "default"): {
        "forward": 1e-5,
        "gradient": 1e-5,
        "bn_state": 1e-5,
        "layers": 1e-5,
        "trajectory": 1.0,
    },
    ("cuda", "strict"): {
        "forward": 1e-5,
        "gradient": 1e-5,
        "bn_state": 1e-5,
        "layers": 1e-5,
        "trajectory": 1.0,
    },
    # TF32 keeps 10 mantissa bits (unit roundoff 2**-11 = 4.9e-4): provisional bounds, see docs
    ("cuda", "default"): {
        "forward": 1e-2,
        "gradient": 5e-2,
        "bn_state": 1e-2,
        "layers": 5e-2,
        "trajectory": 100.0,
    },
}


def policy_tolerances(device: str, precision: str) -> dict[str, float]:
    """Tolerances for ``device`` (``cpu``/``cuda``) under ``precision`` (``strict``/``default``).

    ``trajectory`` is a multiplier of :data:`parity.harness.trajectory.TRAJECTORY_TOL`.
    """
    return dict(POLICY_TOLERANCES[(device, precision)])


def _check_kind(name: str) -> str | None:
    if name.startswith("forward"):
        return "forward"
    if name.startswith("gradient"):
        return "gradient"
    if name.startswith("bn_"):
        return "bn_state"
    return None  # round trip: exact on every device


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
        choices=["shared", "off"],
        default="shared",
        help="shared: dropout on with identical masks; off: models built with dropout 0",
    )
    parser.add_argument(
        "--precision",
        choices=["strict", "default", "both"],
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


def _split(value: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(
            f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}"
        )
    return items


def _batches(x, y, batch_size: int, seed: int, steps: int) -> list:
    from parity.data import iterate_batches

    out, epoch = [], 0
    while len(out) < steps:
        epoch_batches = list(iterate_batches(x, y, batch_size, seed, epoch))
        if not epoch_batches:
            raise ValueError(f"batch size {batch_size} is larger than the training set ({len(x)})")
        out += epoch_batches
        epoch += 1
    return out[:steps]


def _run_policy(args, models, frameworks, runtime, tols, progress) -> dict:
    """Everything for one precision policy: check rows, layer rows, trajectory rows."""
    from parity.data import load
    from parity.harness.compare import Check, Pair, run_checks
    from parity.registry import MODEL_DATASET

    precision = runtime.precision
    checks = []
    for c in run_checks(
        models, frameworks, seed=args.seed, batch_size=args.batch_size, device=runtime.device
    ):
        kind = _check_kind(c.check)
        if kind is not None:
            c = replace(c, tolerance=tols[kind], passed=bool(c.value <= tols[kind]))
        checks.append(c)
    layers, traj, plot_layers, plot_traj = [], [], [], []
    dropout = {} if args.dropout_masks == "shared" else {"dropout": 0.0}
    for model in models:
        ds = load(MODEL_DATASET[model])
        x, y = ds.x_test[: args.batch_size], ds.y_test[: args.batch_size]
        for fw in frameworks:
            if args.localize:
                from parity.harness.localize import localize, localize_gradients

                pair = Pair(model, fw, args.seed, runtime.device, **dropout)
                fm, var = (pair.nnx, None) if fw == "nnx" else (pair.linen, pair.variables)
                reports = [
                    localize(pair.torch, fm, x, variables=var, mode=mode, tol=tols["layers"], seed=args.seed)
                    for mode in ("eval", "train")
                ]
                reports.append(
                    localize_gradients(
                        pair.torch, fm, x, y, variables=var, tol=tols["layers"], seed=args.seed
                    )
                )
                for name, rep in zip(("layers_eval", "layers_train", "gradients_train"), reports):
                    worst = max((r.rel_l2 for r in rep.rows), default=0.0)
                    checks.append(Check(model, fw, f"{name}_max_rel_l2", worst, tols["layers"], rep.passed))
                    first = rep.first_divergent
                    for r in rep.rows:
                        layers.append(
                            {
                                "model": model,
                                "framework": fw,
                                "precision": precision,
                                "report": name,
                                **r.as_dict(),
                            }
                        )
                    plot_layers.append((model, fw, precision, name, rep))
                    if first is not None:
                        progress(f"{model}/{fw} {precision}: {rep.summary()}")
            if args.trajectory:
                from parity.harness.trajectory import TRAJECTORY_TOL, TRAJECTORY_TOL_FLOAT64, trajectory

                batches = _batches(ds.x_train, ds.y_train, args.batch_size, args.seed, args.trajectory)
                for dtype in ("float64", "float32"):
                    pair = Pair(model, fw, args.seed, runtime.device, **dropout)
                    fm, var = (pair.nnx, None) if fw == "nnx" else (pair.linen, pair.variables)
                    base = TRAJECTORY_TOL_FLOAT64 if dtype == "float64" else TRAJECTORY_TOL
                    bounds = {
                        k: v * (1.0 if dtype == "float64" else tols["trajectory"]) for k, v in base.items()
                    }
                    rep = trajectory(
                        pair.torch,
                        fm,
                        batches,
                        variables=var,
                        optimizer=args.optimizer,
                        seed=args.seed,
                        tol=bounds,
                        dtype=dtype,
                        float64_reference=dtype == "float32",
                        progress=True,
                    )
                    worst = max(
                        max(
                            v / r.tolerances[m] if r.tolerances[m] else math.inf
                            for m, (v, _) in r.metrics().items()
                        )
                        for r in rep.rows
                    )
                    if dtype == "float64":
                        # the parity check: float64 on both sides, where rounding cannot flip a decision
                        name = f"trajectory_{args.optimizer}_{args.trajectory}_float64_worst_over_bound"
                        checks.append(Check(model, fw, name, worst, 1.0, rep.passed))
                        if not rep.passed:
                            progress(f"{model}/{fw} {precision}: {rep.summary()}")
                    elif not rep.passed:
                        # float32: reported, not a check (see docs/HARNESS.md, "discrete events")
                        progress(f"{model}/{fw} {precision} float32 (informational): {rep.summary()}")
                    for r in rep.rows:
                        traj.append(
                            {
                                "model": model,
                                "framework": fw,
                                "precision": precision,
                                "dtype": dtype,
                                "optimizer": args.optimizer,
                                **r.__dict__,
                            }
                        )
                    if dtype == "float32":
                        plot_traj.append((model, fw, precision, rep))
    return {
        "checks": checks,
        "layers": layers,
        "trajectory": traj,
        "plot_layers": plot_layers,
        "plot_traj": plot_traj,
    }


def format_checks(results: dict[str, list]) -> str:
    """One table; with two policies, their values side by side (``results`` by precision)."""
    precisions = list(results)
    if len(precisions) == 1:
        rows = [
            [
                c.model,
                c.framework,
                c.check,
                f"{c.value:.3e}",
                f"{c.tolerance:.1e}",
                "ok" if c.passed else "FAIL",
            ]
            for c in results[precisions[0]]
        ]
        return format_table(["model", "framework", "check", "value", "tolerance", "pass"], rows)
    head = ["model", "framework", "check"]
    for p in precisions:
        head += [f"{p} value", f"{p} tol", f"{p} pass"]
    keyed = [{(c.model, c.framework, c.check): c for c in results[p]} for p in precisions]
    rows = []
    for key in keyed[0]:
        row = list(key)
        for k in keyed:
            c = k.get(key)
            row += (
                ["-", "-", "-"]
                if c is None
                else [f"{c.value:.3e}", f"{c.tolerance:.1e}", "ok" if c.passed else "FAIL"]
            )
        rows.append(row)
    return format_table(head, rows)


def run(args: argparse.Namespace) -> int:
    """Run the checks; 0 if all pass, 1 if any fails, 2 for a usage or device error."""
    from parity.device import DeviceError, configure, library_versions

    def err(msg: str) -> int:
        print(f"parity check: error: {msg}", file=sys.stderr)
        return 2

    try:
        models = _split(args.models, MODELS, "model(s)")
        frameworks = _split(args.frameworks, FLAX_FRAMEWORKS, "framework(s)")
    except ValueError as e:
        return err(str(e))
    if args.trajectory < 0:
        return err("--trajectory STEPS must be >= 0")
    if args.batch_size < 2:
        return err("--batch-size must be >= 2 (BatchNorm needs two samples)")
    if args.plot and not (args.localize or args.trajectory):
        args.localize = True
    if args.json:
        from pathlib import Path

        from parity.io import ensure_writable_dir

        try:
            ensure_writable_dir(Path(args.json).resolve().parent)
        except OSError as e:
            return err(str(e))
    try:
        runtime = configure(args.device, "strict")
    except (DeviceError, ValueError) as e:
        return err(str(e))
    precisions = (
        [args.precision]
        if args.precision in ("strict", "default")
        else ["strict", "default"]
        if args.precision == "both" or runtime.device == "cuda"
        else ["strict"]
    )

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr)

    results, sections = {}, {"layers": [], "trajectory": [], "plot_layers": [], "plot_traj": []}
    for precision in precisions:
        runtime = configure(args.device, precision)
        print(
            f"# device {runtime.device} ({runtime.settings['torch_device_name']}), precision {precision}",
            file=sys.stderr,
        )
        out = _run_policy(
            args, models, frameworks, runtime, policy_tolerances(runtime.device, precision), progress
        )
        results[precision] = out["checks"]
        for k in sections:
            sections[k] += out[k]
    print(format_checks(results))
    passed = all(c.passed for cs in results.values() for c in cs)
    print(
        f"\n{'PASS' if passed else 'FAIL'}: "
        f"{sum(c.passed for cs in results.values() for c in cs)}/{sum(len(cs) for cs in results.values())} checks "
        f"within tolerance on {runtime.device} ({', '.join(precisions)})"
    )

    if args.json:
        from parity.io import atomic_write_json

        doc = {
            "passed": passed,
            "device": runtime.device,
            "precisions": precisions,
            "versions": library_versions(),
            "checks": [{**c.as_dict(), "precision": p} for p, cs in results.items() for c in cs],
        }
        if args.localize:
            doc["layers"] = sections["layers"]
        if args.trajectory:
            doc["trajectory"] = sections["trajectory"]
        atomic_write_json(args.json, doc)  # strict JSON: a non-finite value (a shape mismatch's inf) is null
    if args.plot:
        from parity.harness.plots import divergence_figure

        divergence_figure(sections["plot_layers"], sections["plot_traj"], args.plot)
    return 0 if passed else 1
