"""The check suite behind ``parity check``, driven by one frozen :class:`CheckConfig`.

:func:`run_suite` runs, per precision policy, one policy (:func:`run_policy`) for either kind
of model (:class:`ZooModels`, :class:`parity.harness.specs.SpecModels`): the foundation rows,
then the ``localize`` and ``trajectory`` sections; :func:`write_outputs` writes the JSON and
the plot atomically. Nothing here parses arguments (:mod:`parity.commands.check` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from parity.defaults import FLOAT32_REL_TOL
from parity.device import DEVICES
from parity.harness.results import Case, CaseInput, Check, CheckError, PolicyResult
from parity.registry import FLAX_FRAMEWORKS, MODELS, OPTIMIZERS
from parity.table import format_table

#: Tolerances per (device, precision policy). ``layers`` bounds each layer output and gradient
#: of ``localize``; ``trajectory`` multiplies :data:`parity.harness.trajectory.TRAJECTORY_TOL` for
#: the float32 trajectory (the float64 one is unaffected by TF32 and keeps its 1e-9). See
#: docs/HARNESS.md.
_FLOAT32 = {
    "forward": FLOAT32_REL_TOL,
    "gradient": FLOAT32_REL_TOL,
    "bn_state": FLOAT32_REL_TOL,
    "layers": FLOAT32_REL_TOL,
    "trajectory": 1.0,
}
POLICY_TOLERANCES = {
    ("cpu", "strict"): dict(_FLOAT32),
    ("cpu", "default"): dict(_FLOAT32),
    ("cuda", "strict"): dict(_FLOAT32),
    # TF32 keeps 10 mantissa bits (unit roundoff 2**-11 = 4.9e-4): provisional bounds, see docs
    ("cuda", "default"): {
        "forward": 1e-2,
        "gradient": 5e-2,
        "bn_state": 1e-2,
        "layers": 5e-2,
        "trajectory": 100.0,
    },
}
PRECISION_CHOICES = ("strict", "default", "both")
DROPOUT_CHOICES = ("shared", "off")
#: Output suffix each target must have (the JSON document, the PNG plot).
OUTPUT_SUFFIX = {"json": ".json", "plot": ".png"}


def policy_tolerances(device: str, precision: str) -> dict[str, float]:
    """Tolerances for ``device`` (``cpu``/``cuda``) under ``precision`` (``strict``/``default``).

    ``trajectory`` is a multiplier of :data:`parity.harness.trajectory.TRAJECTORY_TOL`.
    """
    return dict(POLICY_TOLERANCES[(device, precision)])


def _one_of(values: tuple[str, ...], allowed: tuple[str, ...], what: str) -> None:
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise CheckError(
            f"unknown {what} {', '.join(bad) or '(none given)'}; choose from {', '.join(allowed)}"
        )


@dataclass(frozen=True)
class CheckConfig:
    """Everything one ``parity check`` run needs; validated on construction (``ValueError``).

    ``trajectory`` is the number of steps (0: no trajectory); ``precision`` ``None`` means
    ``both`` on CUDA and ``strict`` on CPU; ``json`` / ``plot`` are output paths or ``None``.
    A ``plot`` without ``localize`` or ``trajectory`` turns ``localize`` on.
    """

    models: tuple[str, ...] = MODELS
    frameworks: tuple[str, ...] = FLAX_FRAMEWORKS
    localize: bool = False
    trajectory: int = 0
    optimizer: str = "sgd"
    dropout_masks: str = "shared"
    precision: str | None = None
    device: str = "auto"
    seed: int = 0
    batch_size: int = 128
    json: Path | None = None
    plot: Path | None = None

    def __post_init__(self) -> None:
        _one_of(self.models, MODELS, "model(s)")
        _one_of(self.frameworks, FLAX_FRAMEWORKS, "framework(s)")
        _one_of((self.optimizer,), OPTIMIZERS, "optimizer")
        _one_of((self.dropout_masks,), DROPOUT_CHOICES, "dropout masks")
        _one_of((self.device,), DEVICES, "device")
        if self.precision is not None:
            _one_of((self.precision,), PRECISION_CHOICES, "precision")
        if self.trajectory < 0:
            raise CheckError("--trajectory STEPS must be >= 0")
        if self.batch_size < 2:
            raise CheckError("--batch-size must be >= 2 (BatchNorm needs two samples)")
        if self.plot is not None and not (self.localize or self.trajectory):
            object.__setattr__(self, "localize", True)

    def precisions(self, device: str) -> list[str]:
        """The policies to run on the resolved ``device``."""
        if self.precision in ("strict", "default"):
            return [self.precision]
        return ["strict", "default"] if self.precision == "both" or device == "cuda" else ["strict"]


def validate_outputs(config: CheckConfig) -> None:
    """Refuse (``ValueError``) an output target that is a directory, has the wrong suffix, or
    sits in a directory that cannot be written, before any work starts."""
    for what, path in (("json", config.json), ("plot", config.plot)):
        if path is None:
            continue
        if path.is_dir():
            raise CheckError(f"--{what} {str(path)!r} is a directory; give a file name")
        if path.suffix.lower() != OUTPUT_SUFFIX[what]:
            raise CheckError(
                f"--{what} {str(path)!r}: unknown extension {path.suffix or '(none)'!r}; "
                f"use {OUTPUT_SUFFIX[what]}"
            )
        from parity.io import ensure_writable_dir

        try:
            ensure_writable_dir(path.resolve().parent)
        except OSError as e:
            raise CheckError(str(e)) from None


def validate_batch_size(config: CheckConfig) -> None:
    """Refuse (``ValueError``) a batch size larger than a chosen model's test split."""
    from parity.data import load
    from parity.harness.compare import check_batch_size
    from parity.registry import MODEL_DATASET

    for model in config.models:
        check_batch_size(config.batch_size, model, len(load(MODEL_DATASET[model]).x_test))


def training_batches(x, y, batch_size: int, seed: int, steps: int) -> list:
    """``steps`` shuffled ``(x, y)`` training batches (channels-first), epoch after epoch."""
    from parity.data import iterate_batches

    out, epoch = [], 0
    while len(out) < steps:
        epoch_batches = list(iterate_batches(x, y, batch_size, seed, epoch))
        if not epoch_batches:
            raise CheckError(f"batch size {batch_size} is larger than the training set ({len(x)})")
        out += epoch_batches
        epoch += 1
    return out[:steps]


class Models(Protocol):
    """What :func:`run_policy` checks: :class:`ZooModels` or
    :class:`parity.harness.specs.SpecModels`."""

    def foundation(
        self, config: CheckConfig, device: str, precision: str, tols: dict
    ) -> tuple[list[Check], list[CaseInput]]: ...


@dataclass(frozen=True)
class ZooModels:
    """The project's models (``config.models`` x ``config.frameworks``) on their real data."""

    def foundation(
        self, config: CheckConfig, device: str, precision: str, tols: dict
    ) -> tuple[list[Check], list[CaseInput]]:
        """:func:`parity.harness.compare.run_checks` judged at ``tols``, and one case per model
        and framework (the test batch, the training batches of ``--trajectory``)."""
        from functools import partial

        from parity.data import load
        from parity.harness.compare import run_checks, zoo_pair
        from parity.registry import MODEL_DATASET

        checks = run_checks(config.models, config.frameworks, config.seed, config.batch_size, device, tols)
        dropout = {} if config.dropout_masks == "shared" else {"dropout": 0.0}
        cases = []
        for model in config.models:
            ds = load(MODEL_DATASET[model])
            x, y = ds.x_test[: config.batch_size], ds.y_test[: config.batch_size]
            train = (
                training_batches(ds.x_train, ds.y_train, config.batch_size, config.seed, config.trajectory)
                if config.trajectory
                else []
            )
            for fw in config.frameworks:
                make = partial(zoo_pair, model, fw, config.seed, device, **dropout)
                cases.append(CaseInput(Case(model, fw, precision, device, tols), make, x, y, train))
        return checks, cases


def localize_section(config: CheckConfig, ci: CaseInput, log: Callable[[str], None]) -> PolicyResult:
    """Per-layer reports (eval, train) and the per-parameter gradient report of one case
    (those the foundation rows already computed are reused)."""
    from parity.harness.localize import GradientOptions, LocalizeOptions, localize, localize_gradients

    pair, tol, seed = ci.make_pair(), ci.case.tols["layers"], config.seed
    reports = {}
    for mode in ("eval", "train"):
        name = f"layers_{mode}"
        reports[name] = ci.reports.get(name) or localize(pair, ci.x, LocalizeOptions(mode, tol, seed=seed))
    reports["gradients_train"] = ci.reports.get("gradients_train") or localize_gradients(
        pair, ci.x, ci.y, GradientOptions(tol=tol, seed=seed)
    )
    return layer_reports_section(ci.case, reports, log)


def layer_reports_section(case: Case, reports: dict, log: Callable[[str], None]) -> PolicyResult:
    """Check rows, JSON rows and plot inputs of ``{report name: LocalizationReport}``."""
    out = PolicyResult()
    for name, rep in reports.items():
        out.checks.append(
            Check(case.model, case.framework, f"{name}_max_rel_l2", rep.worst_judged(), rep.tol, rep.passed)
        )
        keys = {"model": case.model, "framework": case.framework, "precision": case.precision, "report": name}
        out.layers += [{**keys, **r.as_dict()} for r in rep.rows]
        out.plot_layers.append((case.model, case.framework, case.precision, name, rep))
        if rep.first_divergent is not None:
            log(f"{case.model}/{case.framework} {case.precision}: {rep.summary()}")
    return out


def _worst_over_bound(rep) -> float:
    return max(
        max(v / r.tolerances[m] if r.tolerances[m] else math.inf for m, (v, _) in r.metrics().items())
        for r in rep.rows
    )


def trajectory_section(config: CheckConfig, ci: CaseInput, log: Callable[[str], None]) -> PolicyResult:
    """The float64 trajectory (the check) and the float32 one (reported) of one case, each
    from a pair of :meth:`CaseInput.make_pair`."""
    from parity.harness.trajectory import (
        TRAJECTORY_TOL,
        TRAJECTORY_TOL_FLOAT64,
        TrajectoryOptions,
        trajectory,
    )

    case = ci.case
    out, label = PolicyResult(), f"{case.model}/{case.framework} {case.precision}"
    float32_only = getattr(ci.make_pair(), "float32_only", False)
    for dtype in ("float32",) if float32_only else ("float64", "float32"):
        scale = 1.0 if dtype == "float64" else case.tols["trajectory"]
        base = TRAJECTORY_TOL_FLOAT64 if dtype == "float64" else TRAJECTORY_TOL
        options = TrajectoryOptions(
            optimizer=config.optimizer,
            seed=config.seed,
            tol={k: v * scale for k, v in base.items()},
            dtype=dtype,
            float64_reference=dtype == "float32" and not float32_only,
            progress=True,
        )
        rep = trajectory(ci.make_pair(), ci.batches, options)
        if dtype == "float64" or float32_only:
            # the parity check: float64 on both sides, where rounding cannot flip a decision
            # (float32 when a side cannot compute in float64: the notes say why)
            name = f"trajectory_{config.optimizer}_{config.trajectory}_{dtype}_worst_over_bound"
            out.checks.append(
                Check(case.model, case.framework, name, _worst_over_bound(rep), 1.0, rep.passed)
            )
            if not rep.passed:
                log(f"{label}: {rep.summary()}")
                log(f"{label}: {_first_failing_step(ci, rep, options)}")
        else:
            # float32: reported, not a check (see docs/HARNESS.md, "discrete events")
            if not rep.passed:
                log(f"{label} float32 (informational): {rep.summary()}")
            out.plot_traj.append((case.model, case.framework, case.precision, rep))
        keys = {"model": case.model, "framework": case.framework, "precision": case.precision}
        out.trajectory += [
            {**keys, "dtype": dtype, "optimizer": config.optimizer, **r.__dict__} for r in rep.rows
        ]
    return out


def _first_failing_step(ci: CaseInput, rep: Any, options: Any) -> str:
    """One line localising the first step at which the trajectory ``rep`` fails
    (:func:`parity.harness.trajectory.localize_step`): its first diverging layer (with the
    row's note: probable cause, code between layers) and worst gradient, or why it could not."""
    from parity.harness.trajectory import localize_step

    try:
        found = localize_step(ci.make_pair(), ci.batches, rep, options)
    except Exception as e:  # a diagnosis, not the check: the FAIL above stands either way
        return f"trajectory: the first failing step could not be localised ({type(e).__name__}: {e})"
    step, layers, grads = found["step"], found["layers"], found["gradients"]
    first = layers.first_divergent
    where = (
        f"layer {first.name} ({first.kind}{'; ' + first.note if first.note else ''})"
        if first is not None
        else "every layer matches"
    )
    worst = grads.first_divergent
    grad = f"; first failing gradient {worst.name}" if worst is not None else "; every gradient row passes"
    return f"trajectory step {step}, the first that fails, localised: {where}{grad}"


def run_policy(
    config: CheckConfig, models: Models, device: str, precision: str, log: Callable[[str], None]
) -> PolicyResult:
    """Everything for one precision policy: the foundation rows, then per case the layer
    reports (``config.localize``) and the trajectories (``config.trajectory``)."""
    tols = policy_tolerances(device, precision)
    checks, cases = models.foundation(config, device, precision, tols)
    for note in getattr(models, "notes", list)():
        log(note)
    out = PolicyResult(checks=checks)
    for ci in cases:
        if config.localize:
            out.extend(localize_section(config, ci, log))
        if config.trajectory:
            out.extend(trajectory_section(config, ci, log))
    return out


@dataclass
class SuiteResult:
    """The checks per precision policy, the merged sections, the device and library versions."""

    checks: dict[str, list]
    sections: PolicyResult
    device: str
    versions: dict
    #: per policy, :func:`parity.device.precision_probe`: did TF32 take effect where expected
    probes: dict[str, dict] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every check of every policy passed."""
        return all(c.passed for cs in self.checks.values() for c in cs)

    def verdict(self) -> str:
        """``PASS: k/n checks within tolerance on DEVICE (policies)`` (or ``FAIL: ...``)."""
        n_ok = sum(c.passed for cs in self.checks.values() for c in cs)
        total = sum(len(cs) for cs in self.checks.values())
        return (
            f"{'PASS' if self.passed else 'FAIL'}: {n_ok}/{total} checks within tolerance on "
            f"{self.device} ({', '.join(self.checks)})"
        )


def resolve_device(config: CheckConfig) -> str:
    """Validate what needs the data or the hardware (batch size against each test split, the
    device) before any work; the resolved device (``cpu`` / ``cuda``). Raises ``ValueError`` or
    :class:`parity.device.DeviceError`."""
    from parity.device import configure

    validate_batch_size(config)
    return configure(config.device, "strict").device


def run_suite(config: CheckConfig, log: Callable[[str], None], models: Models | None = None) -> SuiteResult:
    """Run every precision policy of ``config`` (after :func:`resolve_device`) on ``models``
    (default :class:`ZooModels`)."""
    from parity.device import configure, library_versions, precision_probe

    checks, sections, device, probes = {}, PolicyResult(), config.device, {}
    for precision in config.precisions(configure(config.device, "strict").device):
        runtime = configure(config.device, precision)
        device = runtime.device
        log(f"# device {device} ({runtime.settings['torch_device_name']}), precision {precision}")
        probes[precision] = precision_probe(runtime)
        result = run_policy(config, models or ZooModels(), device, precision, log)
        checks[precision] = result.checks
        result.checks = []
        sections.extend(result)
    return SuiteResult(checks, sections, device, library_versions(), probes)


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


def write_outputs(config: CheckConfig, result: SuiteResult) -> None:
    """The JSON document ``{"passed", "device", "precisions", "versions", "precision_probe",
    "checks", "layers"?, "trajectory"?}`` and the PNG, each written atomically (strict JSON: a non-finite value, a
    shape mismatch's inf, is null)."""
    if config.json is not None:
        from parity.io import atomic_write_json

        doc = {
            "passed": result.passed,
            "device": result.device,
            "precisions": list(result.checks),
            "versions": result.versions,
            "precision_probe": result.probes,
            "checks": [{**c.as_dict(), "precision": p} for p, cs in result.checks.items() for c in cs],
        }
        if config.localize:
            doc["layers"] = result.sections.layers
        if config.trajectory:
            doc["trajectory"] = result.sections.trajectory
        atomic_write_json(config.json, doc)
    if config.plot is not None:
        from parity.harness.plots import divergence_figure

        divergence_figure(result.sections.plot_layers, result.sections.plot_traj, config.plot)
