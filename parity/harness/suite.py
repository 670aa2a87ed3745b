"""The check suite behind ``parity check``, driven by one frozen :class:`CheckConfig`.

:func:`run_suite` runs, per precision policy, the foundation comparisons
(:func:`parity.harness.compare.run_checks`), and optionally the per-layer / per-gradient reports
(``localize``) and the float64 + float32 trajectories (``trajectory``); :func:`write_outputs`
writes the JSON document and the plot atomically. Nothing here parses arguments: the command
(:mod:`parity.commands.check`) builds the config, and every bad setting is refused by
:meth:`CheckConfig.__post_init__` or :func:`validate_outputs` before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from parity.device import DEVICES
from parity.registry import FLAX_FRAMEWORKS, MODELS, OPTIMIZERS
from parity.table import format_table

#: Tolerances per (device, precision policy). ``layers`` bounds each layer output and gradient
#: of ``localize``; ``trajectory`` multiplies :data:`parity.harness.trajectory.TRAJECTORY_TOL` for
#: the float32 trajectory (the float64 one is unaffected by TF32 and keeps its 1e-9). See
#: docs/HARNESS.md.
_FLOAT32 = {"forward": 1e-5, "gradient": 1e-5, "bn_state": 1e-5, "layers": 1e-5, "trajectory": 1.0}
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
        raise ValueError(
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
            raise ValueError("--trajectory STEPS must be >= 0")
        if self.batch_size < 2:
            raise ValueError("--batch-size must be >= 2 (BatchNorm needs two samples)")
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
            raise ValueError(f"--{what} {str(path)!r} is a directory; give a file name")
        if path.suffix.lower() != OUTPUT_SUFFIX[what]:
            raise ValueError(
                f"--{what} {str(path)!r}: unknown extension {path.suffix or '(none)'!r}; "
                f"use {OUTPUT_SUFFIX[what]}"
            )
        from parity.io import ensure_writable_dir

        try:
            ensure_writable_dir(path.resolve().parent)
        except OSError as e:
            raise ValueError(str(e)) from e


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
            raise ValueError(f"batch size {batch_size} is larger than the training set ({len(x)})")
        out += epoch_batches
        epoch += 1
    return out[:steps]


@dataclass
class PolicyResult:
    """What one precision policy produced: check rows, JSON sections and plot inputs."""

    checks: list = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
    trajectory: list[dict] = field(default_factory=list)
    plot_layers: list[tuple] = field(default_factory=list)
    plot_traj: list[tuple] = field(default_factory=list)

    def extend(self, other: PolicyResult) -> None:
        """Append ``other``'s rows to this one's (checks included)."""
        for name in ("checks", "layers", "trajectory", "plot_layers", "plot_traj"):
            getattr(self, name).extend(getattr(other, name))


@dataclass(frozen=True)
class Case:
    """One model x framework under one precision policy."""

    model: str
    framework: str
    precision: str
    device: str
    tols: dict

    def pair(self, config: CheckConfig):
        """A fresh :class:`parity.harness.compare.ModelPair` (dropout per the config)."""
        from parity.harness.compare import ModelPair

        dropout = {} if config.dropout_masks == "shared" else {"dropout": 0.0}
        return ModelPair(self.model, self.framework, config.seed, self.device, **dropout)


def _kind_of_check(name: str) -> str | None:
    for prefix, kind in (("forward", "forward"), ("gradient", "gradient"), ("bn_", "bn_state")):
        if name.startswith(prefix):
            return kind
    return None  # round trip: exact on every device


def foundation_checks(config: CheckConfig, device: str, tols: dict) -> list:
    """:func:`parity.harness.compare.run_checks` with this policy's tolerances."""
    from parity.harness.compare import run_checks

    checks = []
    for c in run_checks(
        config.models, config.frameworks, seed=config.seed, batch_size=config.batch_size, device=device
    ):
        kind = _kind_of_check(c.check)
        if kind is not None:
            c = replace(c, tolerance=tols[kind], passed=bool(c.value <= tols[kind]))
        checks.append(c)
    return checks


def localize_section(config: CheckConfig, case: Case, x, y, log: Callable[[str], None]) -> PolicyResult:
    """Per-layer reports (eval, train) and the per-parameter gradient report of one case."""
    from parity.harness.localize import localize, localize_gradients

    pair, tol = case.pair(config), case.tols["layers"]
    fm, var = pair.flax_model()
    reports = {
        f"layers_{mode}": localize(pair.torch, fm, x, variables=var, mode=mode, tol=tol, seed=config.seed)
        for mode in ("eval", "train")
    }
    reports["gradients_train"] = localize_gradients(
        pair.torch, fm, x, y, variables=var, tol=tol, seed=config.seed
    )
    return layer_reports_section(case, reports, log)


def layer_reports_section(case: Case, reports: dict, log: Callable[[str], None]) -> PolicyResult:
    """Check rows, JSON rows and plot inputs of ``{report name: LocalizationReport}``."""
    from parity.harness.compare import Check

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


def trajectory_section(config: CheckConfig, case: Case, batches, log: Callable[[str], None]) -> PolicyResult:
    """The float64 trajectory (the check) and the float32 one (reported) of one case."""

    def sides():
        pair = case.pair(config)
        fm, var = pair.flax_model()
        return pair.torch, fm, {"variables": var}

    return trajectory_rows(config, case, sides, batches, log)


def trajectory_rows(config: CheckConfig, case: Case, sides: Callable, batches, log: Callable[[str], None]):
    """:func:`trajectory_section` for any pair: ``sides() -> (torch model, flax model, keyword
    arguments of trajectory)`` gives fresh sides for each run."""
    from parity.harness.compare import Check
    from parity.harness.trajectory import TRAJECTORY_TOL, TRAJECTORY_TOL_FLOAT64, trajectory

    out, label = PolicyResult(), f"{case.model}/{case.framework} {case.precision}"
    for dtype in ("float64", "float32"):
        tm, fm, kwargs = sides()
        scale = 1.0 if dtype == "float64" else case.tols["trajectory"]
        base = TRAJECTORY_TOL_FLOAT64 if dtype == "float64" else TRAJECTORY_TOL
        rep = trajectory(
            tm,
            fm,
            batches,
            **kwargs,
            optimizer=config.optimizer,
            seed=config.seed,
            tol={k: v * scale for k, v in base.items()},
            dtype=dtype,
            float64_reference=dtype == "float32",
            progress=True,
        )
        if dtype == "float64":
            # the parity check: float64 on both sides, where rounding cannot flip a decision
            name = f"trajectory_{config.optimizer}_{config.trajectory}_float64_worst_over_bound"
            out.checks.append(
                Check(case.model, case.framework, name, _worst_over_bound(rep), 1.0, rep.passed)
            )
            if not rep.passed:
                log(f"{label}: {rep.summary()}")
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


def run_policy(config: CheckConfig, device: str, precision: str, log: Callable[[str], None]) -> PolicyResult:
    """Everything for one precision policy: check rows, layer rows, trajectory rows."""
    from parity.data import load
    from parity.registry import MODEL_DATASET

    tols = policy_tolerances(device, precision)
    out = PolicyResult(checks=foundation_checks(config, device, tols))
    for model in config.models:
        ds = load(MODEL_DATASET[model])
        x, y = ds.x_test[: config.batch_size], ds.y_test[: config.batch_size]
        batches = (
            training_batches(ds.x_train, ds.y_train, config.batch_size, config.seed, config.trajectory)
            if config.trajectory
            else []
        )
        for fw in config.frameworks:
            case = Case(model, fw, precision, device, tols)
            if config.localize:
                out.extend(localize_section(config, case, x, y, log))
            if config.trajectory:
                out.extend(trajectory_section(config, case, batches, log))
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


def run_suite(config: CheckConfig, log: Callable[[str], None], policy: Callable | None = None) -> SuiteResult:
    """Run every precision policy of ``config`` (after :func:`resolve_device`); ``policy(config,
    device, precision, log) -> PolicyResult`` replaces :func:`run_policy` (user models)."""
    from parity.device import configure, library_versions, precision_probe

    checks, sections, device, probes = {}, PolicyResult(), config.device, {}
    for precision in config.precisions(configure(config.device, "strict").device):
        runtime = configure(config.device, precision)
        device = runtime.device
        log(f"# device {device} ({runtime.settings['torch_device_name']}), precision {precision}")
        probes[precision] = precision_probe(runtime)
        result = (policy or run_policy)(config, device, precision, log)
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
