"""What a training trajectory reports: per-step differences (:class:`StepRow`) of the two
sides' states (:class:`TrainingState`), gathered in a :class:`TrajectoryReport`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn as tnn

from parity.harness.metrics import rel_l2
from parity.table import format_table

METRICS = ("loss", "param", "bn_state", "optimizer_state")


@dataclass(frozen=True)
class StepRow:
    """Differences after optimizer step ``step`` (0-based), Flax against torch.

    ``<metric>_rel`` is the *global* relative L2 difference of that metric (all tensors of the
    kind concatenated; for the optimizer state the worst of momentum / first / second moment;
    for the loss ``|lf - lt| / |lt|``); it is what ``passed`` checks. ``<metric>_max`` is the
    largest per-tensor relative L2 difference and ``<metric>_worst`` names that tensor: where to
    look. ``f64_<metric>`` (optional) is torch float32 against a float64 torch copy trained on the
    same batches and masks: float32's own envelope for that metric. ``tolerances`` holds the
    bound each metric was checked against at this step. ``envelope`` is the running maximum of
    ``param_rel`` up to this step: the error envelope of the weights. ``port64_over_bound`` (set
    only at a step where float32 leaves its bound, with a float64 reference) is the worst metric
    of the float64 Flax twin against the float64 torch twin divided by
    :data:`TRAJECTORY_TOL_FLOAT64`: at most 1 means the port follows torch exactly where float32
    cannot, and the step passes (docs/HARNESS.md, "decisions float32 cannot resolve").
    """

    step: int
    loss_torch: float
    loss_flax: float
    loss_rel: float
    param_rel: float
    param_max: float
    param_worst: str
    bn_rel: float
    bn_max: float
    bn_worst: str
    opt_rel: float
    opt_max: float
    opt_worst: str
    envelope: float
    tolerances: dict
    passed: bool
    f64_loss_rel: float | None = None
    f64_param_rel: float | None = None
    f64_bn_rel: float | None = None
    f64_opt_rel: float | None = None
    port64_over_bound: float | None = None

    def metrics(self) -> dict[str, tuple[float, str]]:
        """``{metric: (global value, worst tensor)}`` in the order they are checked."""
        return {
            "loss": (self.loss_rel, "loss"),
            "param": (self.param_rel, self.param_worst),
            "bn_state": (self.bn_rel, self.bn_worst),
            "optimizer_state": (self.opt_rel, self.opt_worst),
        }

    def failures(self) -> list[tuple[str, str, float, float]]:
        """``(metric, worst tensor, value, tolerance)`` for every metric above its tolerance; none
        when the float64 twins agree (``port64_over_bound <= 1``)."""
        if self.port64_over_bound is not None and self.port64_over_bound <= 1.0:
            return []
        return [
            (m, name, v, self.tolerances[m])
            for m, (v, name) in self.metrics().items()
            if not v <= self.tolerances[m]
        ]


@dataclass
class TrajectoryReport:
    """Per-step rows, the tolerances, and the trained states of both sides.

    ``torch_model`` is the trained torch copy; ``flax_variables`` the trained Flax
    ``{'params', 'batch_stats'}`` (numpy, Linen layout, Flax's biased running variance);
    ``corrected_batch_stats`` the same statistics with ``var`` in torch's unbiased convention.
    """

    rows: list[StepRow]
    tol: dict
    optimizer: dict
    meta: dict = field(default_factory=dict)
    torch_model: tnn.Module | None = None
    flax_variables: dict | None = None
    corrected_batch_stats: dict | None = None

    @property
    def first_divergent(self) -> tuple[int, str, str, float] | None:
        """``(step, metric, worst tensor, value)`` of the first metric above its tolerance."""
        for r in self.rows:
            f = r.failures()
            if f:
                return r.step, f[0][0], f[0][1], f[0][2]
        return None

    @property
    def passed(self) -> bool:
        """True when every step is within tolerance."""
        return self.first_divergent is None

    @property
    def envelope(self) -> list[float]:
        """The running max of the parameter difference, one value per step."""
        return [r.envelope for r in self.rows]

    def summary(self) -> str:
        """One line: the final envelope, or the first divergent step, metric and tensor."""
        opt = self.optimizer.get("name", "?")
        head = f"trajectory ({opt}, {len(self.rows)} steps, {self.meta.get('flax', '?')})"
        for r in self.rows:
            f = r.failures()
            if f:
                metric, name, value, tol = f[0]
                return (
                    f"{head}: first divergent step {r.step}: {metric} {value:.3e} > tol {tol:.1e} "
                    f"(worst tensor {name}: {getattr(r, _MAX[metric]):.3e})"
                )
        return f"{head}: within tolerance at every step (envelope {self.envelope[-1]:.2e})"

    def format(self) -> str:
        """Summary and a per-step table."""
        ref = any(r.f64_param_rel is not None for r in self.rows)
        head = (
            "step",
            "loss_torch",
            "loss_flax",
            "loss_rel",
            "param_rel",
            "bn_rel",
            "opt_rel",
            *(("f64_param", "f64_opt") if ref else ()),
            "envelope",
            "worst tensor",
            "pass",
        )
        body = []
        for r in self.rows:
            worst = max(((r.param_max, r.param_worst), (r.bn_max, r.bn_worst), (r.opt_max, r.opt_worst)))
            body.append(
                (
                    str(r.step),
                    f"{r.loss_torch:.6f}",
                    f"{r.loss_flax:.6f}",
                    f"{r.loss_rel:.2e}",
                    f"{r.param_rel:.2e}",
                    f"{r.bn_rel:.2e}",
                    f"{r.opt_rel:.2e}",
                    *((f"{r.f64_param_rel:.1e}", f"{r.f64_opt_rel:.1e}") if ref else ()),
                    f"{r.envelope:.2e}",
                    f"{worst[1]} {worst[0]:.1e}",
                    "ok" if r.passed else "FAIL",
                )
            )
        return self.summary() + "\n" + format_table(head, body)

    def __str__(self) -> str:
        return self.format()

    def as_dict(self) -> dict:
        """JSON form: ``{'tol', 'passed', 'first_divergent', 'optimizer', 'steps': [...], **meta}``."""
        first = self.first_divergent
        return {
            "tol": self.tol,
            "passed": self.passed,
            "optimizer": self.optimizer,
            "first_divergent": None
            if first is None
            else dict(zip(("step", "metric", "tensor", "value"), first)),
            "steps": [asdict(r) for r in self.rows],
            **self.meta,
        }


_MAX = {"loss": "loss_rel", "param": "param_max", "bn_state": "bn_max", "optimizer_state": "opt_max"}


def _global_rel(cands: Mapping[str, np.ndarray], refs: Mapping[str, np.ndarray]) -> tuple[float, float, str]:
    """``(global rel L2, max per-tensor rel L2, worst tensor)`` of ``cands`` against ``refs``."""
    num = den = 0.0
    worst, name = 0.0, "-"
    for k, ref in refs.items():
        c = cands.get(k)
        r = np.asarray(ref, np.float64)
        if c is None or np.shape(c) != np.shape(ref):
            return math.inf, math.inf, k
        d = np.asarray(c, np.float64) - r
        num += float(np.sum(d * d))
        den += float(np.sum(r * r))
        v = rel_l2(c, ref)
        if not v <= worst:
            worst, name = v, k
    glob = math.sqrt(num / den) if den > 0 else math.sqrt(num)
    return glob, worst, name


def compare_states(c: TrainingState, r: TrainingState) -> dict[str, tuple[float, float, str]]:
    """``{metric: (global, max, worst)}`` of candidate ``c`` against reference ``r``."""
    out = {
        "loss": ((abs(c.loss - r.loss) / abs(r.loss) if r.loss else abs(c.loss)),) * 2 + ("loss",),
        "param": _global_rel(c.params, r.params),
        "bn_state": _global_rel(c.bn, r.bn),
    }
    opt = (0.0, 0.0, "-")
    for kind in sorted(set(c.opt) | set(r.opt)):
        if kind not in c.opt or kind not in r.opt:
            side = "optax" if kind not in c.opt else "torch"
            opt = (math.inf, math.inf, f"{kind} missing in {side}")
            break
        g, mx, name = _global_rel(c.opt[kind], r.opt[kind])
        if not g <= opt[0]:
            opt = (g, mx, f"{name}.{kind}")
    out["optimizer_state"] = opt
    return out


def metric_tolerances(tol: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(tol, Mapping):
        missing = set(METRICS) - set(tol)
        if missing:
            raise ValueError(f"tol is missing metric(s) {', '.join(sorted(missing))}; give all of {METRICS}")
        return {m: float(tol[m]) for m in METRICS}
    return {m: float(tol) for m in METRICS}


@dataclass
class TrainingState:
    """One side's state after a step, in torch names and layout: the loss, the parameters,
    the BN running statistics (``{bn}.running_mean`` / ``{bn}.running_var``) and the optimizer
    moments (``{torch moment name: {param: array}}``)."""

    loss: float
    params: dict[str, np.ndarray]
    bn: dict[str, np.ndarray]
    opt: dict[str, dict[str, np.ndarray]]
