"""Training-trajectory parity: train torch and Flax side by side and watch the gap.

:func:`trajectory` trains a torch model and its Flax port (Linen or NNX) for K steps from the
same weights on the same batches with matched optimizers (:func:`make_optimizer_pair`), dropout
active with identical masks (:class:`parity.harness.localize.SharedDropout`), and reports per step the
loss of each side, the parameter, BatchNorm-state and optimizer-state differences (SGD momentum
buffer, Adam first and second moments), and the error *envelope*: the running maximum of the
parameter difference, which grows over the steps because training amplifies rounding
differences.

Optimizer conventions that must be matched (each has a test in ``tests/test_trajectory.py``):

================================  ===========================  ==================================
convention                        torch                        optax, matched
================================  ===========================  ==================================
Adam eps placement                ``m / (sqrt(v) + eps)``      ``adam(eps=eps, eps_root=0)``; eps
                                                               *inside* the sqrt is ``eps_root``
AdamW default weight decay        ``1e-2``                     ``1e-4``: pass it explicitly
``weight_decay`` in SGD / Adam    coupled L2: ``g + wd * p``   ``chain(add_decayed_weights(wd),
                                  before momentum / moments    sgd(...) / adam(...))``, in that
                                                               order (``adamw`` is decoupled)
AdamW decay                       ``p *= 1 - lr * wd``         ``adamw(weight_decay=wd)``: also
                                                               decoupled and scaled by lr
momentum                          ``b = mu b + g; p -= lr b``  ``sgd(lr, momentum=mu)`` (trace);
                                  (dampening 0)                dampening != 0 has no optax form
nesterov                          ``g + mu b``                 ``sgd(..., nesterov=True)``: set on
                                                               both sides
================================  ===========================  ==================================
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn as tnn

from parity import convert
from parity.harness.compare import REF_FACTOR, rel_l2, unbiased_running_var
from parity.harness.sides import (
    FlaxSide,
    Layout,
    SharedDropout,
    activation_to_flax,
    flax_bn_stats,
    flax_dropout_hook,
    flax_loss,
    float_cast,
    name_mapper,
    to_numpy,
    torch_device,
    torch_loss,
    torch_shared_dropout,
)
from parity.progress import Progress
from parity.registry import OPTIMIZERS
from parity.table import format_table

DEFAULT_LR = {"sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}

#: Per-step tolerance of every trajectory difference (loss, parameters, BN state, optimizer
#: state), float32 on CPU, for up to 50 steps; see docs/HARNESS.md for the measured envelopes
#: it bounds and the margin.
TRAJECTORY_TOL = {"loss": 1e-4, "param": 1e-4, "bn_state": 1e-4, "optimizer_state": 1e-3}
#: The same bounds for ``dtype='float64'`` runs: rounding is 2**-53 ~ 1.1e-16 instead of
#: 2**-24 ~ 6e-8, and the measured 50-step envelopes stay below ~1e-12 (docs/HARNESS.md).
TRAJECTORY_TOL_FLOAT64 = {"loss": 1e-9, "param": 1e-9, "bn_state": 1e-9, "optimizer_state": 1e-9}
#: With ``float64_reference=True`` a metric passes at a step when it is at most ``REF_FACTOR``
#: (:data:`parity.harness.compare.REF_FACTOR`, 10) times torch float32's own distance from the
#: float64 trajectory (or within ``tol``).


# ------------------------------------------------------------------------------ optimizers


@dataclass(frozen=True)
class OptimizerPair:
    """A torch optimizer factory and the optax transformation built to match it.

    ``torch(params) -> torch.optim.Optimizer``; ``optax`` is a ``GradientTransformation``;
    ``settings`` records every hyper-parameter, both sides use the same values.
    """

    name: str
    torch: Callable[[Iterable[tnn.Parameter]], torch.optim.Optimizer]
    optax: optax.GradientTransformation
    settings: dict


def make_optimizer_pair(
    name: str,
    lr: float | None = None,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> OptimizerPair:
    """Matched torch.optim / optax optimizers (see the convention table in the module docs).

    * ``sgd``: ``torch.optim.SGD(lr, momentum, nesterov, weight_decay)`` and
      ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum, nesterov))``.
    * ``adam``: ``torch.optim.Adam(lr, betas, eps, weight_decay)`` (coupled L2) and
      ``optax.chain(optax.add_decayed_weights(wd), optax.adam(lr, b1, b2, eps, eps_root=0))``.
    * ``adamw``: ``torch.optim.AdamW(lr, betas, eps, weight_decay)`` and
      ``optax.adamw(lr, b1, b2, eps, eps_root=0, weight_decay=wd)``; ``weight_decay`` defaults
      to torch's ``1e-2`` on both sides (optax's own default is ``1e-4``).

    ``weight_decay`` defaults to ``0`` for sgd and adam. ``lr`` defaults to 0.05 (sgd) or 1e-3.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[name] if lr is None else float(lr)
    wd = (1e-2 if name == "adamw" else 0.0) if weight_decay is None else float(weight_decay)
    b1, b2 = betas
    if name == "sgd":
        settings = {"lr": lr, "momentum": momentum, "nesterov": nesterov, "weight_decay": wd}
        tx = optax.sgd(lr, momentum=momentum or None, nesterov=nesterov)
        if wd:
            tx = optax.chain(optax.add_decayed_weights(wd), tx)
        return OptimizerPair(
            name,
            lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd),
            tx,
            settings,
        )
    settings = {"lr": lr, "betas": (b1, b2), "eps": eps, "weight_decay": wd}
    if name == "adam":
        tx = optax.adam(lr, b1=b1, b2=b2, eps=eps, eps_root=0.0)
        if wd:
            tx = optax.chain(optax.add_decayed_weights(wd), tx)
        return OptimizerPair(
            name, lambda p: torch.optim.Adam(p, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), tx, settings
        )
    tx = optax.adamw(lr, b1=b1, b2=b2, eps=eps, eps_root=0.0, weight_decay=wd)
    return OptimizerPair(
        name, lambda p: torch.optim.AdamW(p, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd), tx, settings
    )


#: optax state field -> torch ``optimizer.state[p]`` key
MOMENT_NAMES = {"trace": "momentum_buffer", "mu": "exp_avg", "nu": "exp_avg_sq"}


def optax_moments(opt_state: Any) -> dict[str, Any]:
    """``{'trace' | 'mu' | 'nu': params-shaped tree}`` found anywhere in an optax state."""
    out = {}
    for field_name in MOMENT_NAMES:
        found = optax.tree_utils.tree_get_all_with_path(opt_state, field_name)
        if found:
            out[field_name] = found[0][1]
    return out


def torch_moments(optimizer: torch.optim.Optimizer, model: tnn.Module) -> dict[str, dict[str, np.ndarray]]:
    """``{'momentum_buffer' | 'exp_avg' | 'exp_avg_sq': {param name: array}}`` of a torch optimizer."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, p in model.named_parameters():
        for key, value in optimizer.state.get(p, {}).items():
            if key in MOMENT_NAMES.values() and isinstance(value, torch.Tensor):
                out.setdefault(key, {})[name] = to_numpy(value)
    return out


def optimizer_differences(
    pair: OptimizerPair,
    params: Mapping[str, np.ndarray],
    grads: Iterable[Mapping[str, np.ndarray]],
    tol: float = 1e-6,
) -> TrajectoryReport:
    """The optimizers alone: apply both sides of ``pair`` to the same parameters and gradients.

    ``params`` is ``{name: array}`` and each element of ``grads`` a gradient for every name
    (any layout: both sides see the same arrays). Per step the parameters and the optimizer
    state (momentum buffer, Adam moments) are compared, as in :func:`trajectory` but without a
    model, so the only differences left are the optimizers' conventions and float32 rounding
    (``tol`` 1e-6: a handful of float32 ulps per update). This is how the convention table is
    tested; it is also the quickest way to check a hand-built :class:`OptimizerPair`.
    """
    tparams = {n: tnn.Parameter(torch.tensor(np.asarray(v, np.float32))) for n, v in params.items()}
    topt = pair.torch(list(tparams.values()))
    fparams = {n: jnp.asarray(v, jnp.float32) for n, v in params.items()}
    state = pair.optax.init(fparams)
    index = {id(p): n for n, p in tparams.items()}
    rows: list[StepRow] = []
    envelope = 0.0
    tols = _tolerances(tol)
    for k, g in enumerate(grads):
        for n, p in tparams.items():
            p.grad = torch.tensor(np.asarray(g[n], np.float32))
        topt.step()
        updates, state = pair.optax.update(
            {n: jnp.asarray(g[n], jnp.float32) for n in fparams}, state, fparams
        )
        fparams = optax.apply_updates(fparams, updates)
        tmom: dict[str, dict[str, np.ndarray]] = {}
        for p, st in topt.state.items():
            for key, value in st.items():
                if key in MOMENT_NAMES.values():
                    tmom.setdefault(key, {})[index[id(p)]] = to_numpy(value)
        fmom = {
            MOMENT_NAMES[f]: jax.tree.map(np.asarray, dict(tree)) for f, tree in optax_moments(state).items()
        }
        diffs = _compare(
            TrainingState(0.0, {n: np.asarray(v) for n, v in fparams.items()}, {}, fmom),
            TrainingState(0.0, {n: to_numpy(p) for n, p in tparams.items()}, {}, tmom),
        )
        envelope = max(envelope, diffs["param"][0])
        ok = all(diffs[m][0] <= tols[m] for m in METRICS)
        rows.append(
            StepRow(
                k,
                0.0,
                0.0,
                0.0,
                *diffs["param"],
                *diffs["bn_state"],
                *diffs["optimizer_state"],
                envelope,
                tols,
                ok,
            )
        )
    return TrajectoryReport(rows, tols, {"name": pair.name, **pair.settings}, {"flax": "optax only"})


# ------------------------------------------------------------------------------- reporting

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


# ------------------------------------------------------------------------------ the runner


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


@dataclass
class TrainingState:
    """One side's state after a step, in torch names and layout: the loss, the parameters,
    the BN running statistics (``{bn}.running_mean`` / ``{bn}.running_var``) and the optimizer
    moments (``{torch moment name: {param: array}}``)."""

    loss: float
    params: dict[str, np.ndarray]
    bn: dict[str, np.ndarray]
    opt: dict[str, dict[str, np.ndarray]]


def _torch_state(model: tnn.Module, optimizer: torch.optim.Optimizer, loss: float) -> TrainingState:
    bn = {}
    for n, m in model.named_modules():
        if isinstance(m, tnn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            bn[f"{n}.running_mean"] = to_numpy(m.running_mean)
            bn[f"{n}.running_var"] = to_numpy(m.running_var)
    return TrainingState(
        loss, {n: to_numpy(p) for n, p in model.named_parameters()}, bn, torch_moments(optimizer, model)
    )


def _compare(c: TrainingState, r: TrainingState) -> dict[str, tuple[float, float, str]]:
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


def _tolerances(tol: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(tol, Mapping):
        missing = set(METRICS) - set(tol)
        if missing:
            raise ValueError(f"tol is missing metric(s) {', '.join(sorted(missing))}; give all of {METRICS}")
        return {m: float(tol[m]) for m in METRICS}
    return {m: float(tol) for m in METRICS}


class _TorchTrainer:
    """A private copy of the torch model (float32 or float64) and its optimizer."""

    def __init__(self, model: tnn.Module, pair: OptimizerPair, loss: str, masks, float64: bool) -> None:
        self.model = copy.deepcopy(model).train()
        if float64:
            self.model = self.model.double()
        self.opt = pair.torch(self.model.parameters())
        self.loss_fn, self.masks = torch_loss(loss), masks
        self.dev = torch_device(self.model)

    def step(self, k: int, x: np.ndarray, y: np.ndarray, given: Mapping | None = None) -> tuple[float, dict]:
        """One optimizer step on channels-first ``x``; ``(loss, dropout uniforms used)``."""
        with contextlib.ExitStack() as stack:
            rec = (
                stack.enter_context(torch_shared_dropout(self.model, self.masks, k, given=given))
                if self.masks
                else {}
            )
            self.opt.zero_grad(set_to_none=True)
            xt = torch.from_numpy(x).to(self.dev)
            if xt.is_floating_point():
                xt = xt.to(next(self.model.parameters()).dtype)
            value = self.loss_fn(self.model(xt), torch.from_numpy(y).to(self.dev))
            value.backward()
            self.opt.step()
        return float(value.detach()), rec

    def state(self, loss: float) -> TrainingState:
        """Parameters, BN statistics and optimizer moments after the last step."""
        return _torch_state(self.model, self.opt, loss)


class _BnVariance:
    """The Flax running variances of each BN, step by step, in torch's unbiased convention.

    ``counts[bn]`` (values per channel of the last forward) is filled by a torch pre-hook; the
    correction is exact algebra (:func:`parity.harness.compare.unbiased_running_var`).
    """

    def __init__(
        self, bns: Mapping[str, tnn.Module], to_flax: Callable, first_bs: Mapping, counts: dict
    ) -> None:
        self.bns, self.to_flax, self.counts = bns, to_flax, counts
        self.prev = {n: (flax_bn_stats(first_bs, to_flax(n)) or {}).get("var") for n in bns}
        self.corrected = {n: None if v is None else np.asarray(v, np.float64) for n, v in self.prev.items()}

    def observe(self, pure_bs: Mapping, raw: bool) -> dict[str, np.ndarray]:
        """``{bn.running_mean, bn.running_var}`` after a step (``var`` corrected unless ``raw``)."""
        out = {}
        for n, m in self.bns.items():
            stats = flax_bn_stats(pure_bs, self.to_flax(n))
            if stats is None:
                continue
            prev = self.prev[n]
            if prev is not None and m.momentum is not None and self.counts.get(n, 0) > 1:
                mom = 1.0 - float(m.momentum)
                self.corrected[n] = unbiased_running_var(
                    [prev, stats["var"]], self.counts[n], momentum=mom
                ) + mom * (self.corrected[n] - np.asarray(prev, np.float64))
            else:
                self.corrected[n] = np.asarray(stats["var"], np.float64)
            self.prev[n] = stats["var"]
            out[f"{n}.running_mean"] = stats["mean"]
            out[f"{n}.running_var"] = stats["var"] if raw else self.corrected[n]
        return out

    def corrected_tree(self, pure_bs: Mapping, dtype) -> dict:
        """``pure_bs`` with every ``var`` replaced by its corrected value (Linen layout)."""
        flat = convert.flatten_tree(pure_bs)
        for n, v in self.corrected.items():
            if v is not None:
                flat[f"{self.to_flax(n).replace('.', '/')}/var"] = np.asarray(v, dtype)
        return convert.unflatten_tree(flat)


class _FlaxTrainer:
    """The Flax side's training state (float32 or float64) and its jitted step.

    The step (forward, gradient, optax update) is one ``jax.jit``-ed function; the dropout
    masks are its inputs, so the compiled step is reused for every step. A float64 trainer runs
    every call under ``jax.enable_x64``.
    """

    def __init__(self, side: FlaxSide, tx: optax.GradientTransformation, loss: str, float64: bool) -> None:
        self.side, self.tx, self.float64 = side, tx, float64
        self.dtype = jnp.float64 if float64 else jnp.float32
        f_loss = flax_loss(loss)

        def flax_step(params, batch_stats, rest, opt_state, x, y, uniforms, rng):
            hook = flax_dropout_hook(uniforms, torch_layout=True) if uniforms else None

            def objective(p):
                out, nbs, nrest = side.apply(p, batch_stats, rest, x, train=True, hook=hook, rng=rng)
                return f_loss(out, y), (nbs, nrest)

            (value, (nbs, nrest)), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), nbs, nrest, opt_state, value

        self._step = jax.jit(flax_step)
        with self._precision():
            cast = float_cast(self.dtype)
            self.params, self.bstats, self.rest = (
                jax.tree.map(cast, t) for t in (side.params, side.batch_stats, side.rest)
            )
            self.opt_state = tx.init(self.params)

    def _precision(self):
        return jax.enable_x64(True) if self.float64 else contextlib.nullcontext()

    def step(self, x: np.ndarray, y: np.ndarray, uniforms: Mapping, rng: jax.Array | None) -> float:
        """One step on ``x`` (Flax layout) with the torch side's dropout ``uniforms`` (Flax names,
        torch layout: each is brought to its dropout input's layout inside the step); returns
        the loss."""
        with self._precision():
            xf = jnp.asarray(x)
            if jnp.issubdtype(xf.dtype, jnp.floating):
                xf = xf.astype(self.dtype)
            self.params, self.bstats, self.rest, self.opt_state, value = self._step(
                self.params, self.bstats, self.rest, self.opt_state, xf, jnp.asarray(y), uniforms, rng
            )
        return float(value)

    def state(self, loss: float, to_torch: Callable, bn: dict) -> TrainingState:
        """The state in torch names and layout (``bn``: from :meth:`_BnVariance.observe`)."""
        fopt = {
            MOMENT_NAMES[f]: to_torch(self.side.pure(tree))
            for f, tree in optax_moments(self.opt_state).items()
        }
        return TrainingState(loss, to_torch(self.side.pure(self.params)), bn, fopt)


@dataclass
class _Twin:
    """Both sides of one precision: a torch trainer, a Flax trainer and its BN tracker."""

    torch: _TorchTrainer
    flax: _FlaxTrainer
    bn: _BnVariance
    hooks: list = field(default_factory=list)

    def close(self) -> None:
        """Remove the values-per-channel hooks from the torch copy."""
        for h in self.hooks:
            h.remove()
        self.hooks.clear()

    def step(
        self, k: int, x, y, run: _RunSettings, given: Mapping | None = None
    ) -> tuple[TrainingState, TrainingState, dict]:
        """Step both sides on one batch; ``(torch state, flax state, torch dropout uniforms)``."""
        lt, rec = self.torch.step(k, x, y, given=given)
        uniforms = {run.to_flax(n): [jnp.asarray(u) for u in us] for n, us in rec.items()}
        rng = jax.random.fold_in(jax.random.key(run.seed), k) if run.dropout_masks == "independent" else None
        lf = self.flax.step(activation_to_flax(x, layout=run.input_layout), y, uniforms, rng)
        fbn = self.bn.observe(self.flax.side.pure(self.flax.bstats), raw=run.bn_var == "raw")
        return self.torch.state(lt), self.flax.state(lf, run.to_torch, fbn), rec


@dataclass(frozen=True)
class _RunSettings:
    """What every step of one :func:`trajectory` run shares."""

    to_flax: Callable[[str], str]
    to_torch: Callable[[dict], dict]
    seed: int
    dropout_masks: str
    bn_var: str
    tols: dict
    ref_factor: float
    input_layout: str = "channels_first"


def _make_twin(
    torch_model, flax_model, variables, call_kwargs, pair, loss, masks, float64, run, counts
) -> _Twin:
    """Private copies of both sides, in float64 or float32, from the same weights."""
    tt = _TorchTrainer(torch_model, pair, loss, masks, float64)
    side = FlaxSide(flax_model, variables, call_kwargs)
    bns = {
        n: m
        for n, m in tt.model.named_modules()
        if isinstance(m, tnn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    }
    hooks = [
        m.register_forward_pre_hook(lambda m, a, n=n: counts.__setitem__(n, a[0].numel() // a[0].shape[1]))
        for n, m in bns.items()
    ]
    return _Twin(
        tt,
        _FlaxTrainer(side, pair.optax, loss, float64),
        _BnVariance(bns, run.to_flax, side.pure(side.batch_stats), counts),
        hooks,
    )


def _step_row(
    k: int, t32: TrainingState, f32: TrainingState, envelope: float, run: _RunSettings, ref
) -> StepRow:
    """The row of step ``k``: float32 differences, the float64 reference (torch float32 vs torch
    float64) and, where float32 leaves its bound, the float64 port verdict."""
    diffs = _compare(f32, t32)
    bounds, f64, port = dict(run.tols), (), None
    if ref is not None:
        t64, f64s = ref
        f64d = {m: v[0] for m, v in _compare(t32, t64).items()}
        bounds = {m: max(run.tols[m], run.ref_factor * f64d[m]) for m in METRICS}
        f64 = tuple(f64d[m] for m in METRICS)
        if not all(diffs[m][0] <= bounds[m] for m in METRICS):
            port64 = _compare(f64s, t64)
            port = max(port64[m][0] / TRAJECTORY_TOL_FLOAT64[m] for m in METRICS)
    envelope = max(envelope, diffs["param"][0])
    ok = all(diffs[m][0] <= bounds[m] for m in METRICS) or (port is not None and port <= 1.0)
    return StepRow(
        k,
        t32.loss,
        f32.loss,
        diffs["loss"][0],
        *diffs["param"],
        *diffs["bn_state"],
        *diffs["optimizer_state"],
        envelope,
        bounds,
        ok,
        *f64,
        port64_over_bound=port,
    )


def _validate(dropout_masks: str, bn_var: str, dtype: str, float64_reference: bool) -> None:
    if dropout_masks not in ("shared", "independent"):
        raise ValueError(f"dropout_masks must be 'shared' or 'independent', got {dropout_masks!r}")
    if bn_var not in ("corrected", "raw"):
        raise ValueError(f"bn_var must be 'corrected' or 'raw', got {bn_var!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if dtype == "float64" and float64_reference:
        raise ValueError(
            "float64_reference compares float32 with float64; with dtype='float64' there is "
            "nothing to compare: drop one of them"
        )


def _take(batches: Iterable, steps: int | None) -> list:
    out = list(batches) if steps is None else [b for _, b in zip(range(steps), batches)]
    if steps is not None and len(out) < steps:
        raise ValueError(f"asked for {steps} steps but only {len(out)} batches were given")
    if not out:
        raise ValueError("trajectory needs at least one batch")
    return out


def trajectory(
    torch_model: tnn.Module,
    flax_model: Any,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    variables: Mapping | None = None,
    optimizer: str | OptimizerPair = "sgd",
    steps: int | None = None,
    loss: str = "cross_entropy",
    dropout_masks: Literal["shared", "independent"] = "shared",
    seed: int = 0,
    tol: float | Mapping[str, float] | None = None,
    bn_var: Literal["corrected", "raw"] = "corrected",
    float64_reference: bool = False,
    ref_factor: float = REF_FACTOR,
    layer_map: Mapping[str, str] | None = None,
    param_map: Callable[[dict], dict[str, np.ndarray]] | None = None,
    call_kwargs: Callable[[bool], dict] | None = None,
    dtype: Literal["float32", "float64"] = "float32",
    progress: bool = False,
    input_layout: Layout = "channels_first",
) -> TrajectoryReport:
    """Train both sides ``steps`` steps in train mode from the same weights on the same batches.

    Args:
        torch_model: the reference (deep-copied; the copy is trained and returned in the report).
        flax_model: Linen module (with ``variables``) or NNX module, same weights converted.
        batches: ``(x, y)`` pairs, ``x`` channels-first numpy (NCHW / NCW / ``(N, F)``).
        optimizer: ``'sgd'``, ``'adam'``, ``'adamw'`` (defaults of :func:`make_optimizer_pair`)
            or an :class:`OptimizerPair`.
        steps: how many batches to use (default: all of ``batches``).
        loss: ``'cross_entropy'`` (integer labels) or ``'mse'``.
        dropout_masks: ``'shared'`` (identical masks on both sides) or ``'independent'``.
        tol: per-step bound of each metric's global relative difference: one float, or
            ``{'loss', 'param', 'bn_state', 'optimizer_state'}``; default :data:`TRAJECTORY_TOL`.
        bn_var: ``'corrected'`` compares torch's unbiased ``running_var`` with the Flax variance
            brought to torch's convention (exact algebra, per step, with each step's ``n``);
            ``'raw'`` compares the Flax variance as stored (what a plain copy would give).
        float64_reference: also train a float64 torch copy on the same batches and masks and
            report torch float32 against it (``f64_*``); each metric's bound at a step then
            becomes ``max(tol, ref_factor * f64 value)``: parity as close as float32 itself can
            follow the exact trajectory.
        layer_map: ``{torch name: flax name}`` where names differ (dropout layers, BN layers).
        param_map: ``flax params-shaped tree -> {torch name: array}`` for models outside
            :func:`parity.convert.params_to_torch`'s rules.
        dtype: ``'float32'`` (what training runs in) or ``'float64'``: both sides in double
            precision (torch ``.double()``, the Flax side under ``jax.enable_x64``), where
            rounding is ~1e-16 and no ReLU or max-pool decision sits within rounding distance of
            its threshold, so any difference above :data:`TRAJECTORY_TOL_FLOAT64` is the port,
            not float32. The default ``tol`` follows the dtype.
        progress: show a rich progress bar on stderr.
        input_layout: ``'channels_first'`` (images, signals: moved to channels-last for Flax) or
            ``'same'`` (tokens, ids: given to Flax as they are). Dropout masks follow each
            dropout input's own layout (:func:`parity.harness.sides.torch_to_flax_layout`).

    The Flax step is one ``jax.jit``-ed function (forward, gradient, optax update); the masks
    are its inputs, so the compiled step is reused for every step.
    """
    _validate(dropout_masks, bn_var, dtype, float64_reference)
    double = dtype == "float64"
    tols = _tolerances((TRAJECTORY_TOL_FLOAT64 if double else TRAJECTORY_TOL) if tol is None else tol)
    pair = make_optimizer_pair(optimizer) if isinstance(optimizer, str) else optimizer
    batches = _take(batches, steps)
    to_torch = param_map or (lambda tree: convert.params_to_torch(tree, torch_model))
    run = _RunSettings(
        name_mapper(layer_map), to_torch, seed, dropout_masks, bn_var, tols, ref_factor, input_layout
    )
    masks = SharedDropout(seed) if dropout_masks == "shared" else None
    sides = (torch_model, flax_model, variables, call_kwargs, pair, loss, masks)
    main = _make_twin(*sides, double, run, {})
    ref = _make_twin(*sides, True, run, {}) if float64_reference else None
    try:
        with Progress("steps", len(batches), enabled=progress, transient=True) as bar:
            bar.describe(f"trajectory ({pair.name}, {dtype})")
            rows = _train_side_by_side(main, ref, batches, run, bar)
    finally:
        for twin in (main, ref):
            if twin is not None:
                twin.close()
    return _report(main, rows, pair, run, dtype, loss, float64_reference)


def _train_side_by_side(
    main: _Twin, ref: _Twin | None, batches: list, run: _RunSettings, bar
) -> list[StepRow]:
    """Step both twins on every batch (the float64 one replays the float32 one's masks); one
    row per step."""
    rows: list[StepRow] = []
    envelope = 0.0
    for k, (x, y) in enumerate(batches):
        x, y = np.asarray(x), np.asarray(y)
        t32, f32, rec = main.step(k, x, y, run)
        ref_states = ref.step(k, x, y, run, given=rec)[:2] if ref is not None else None
        rows.append(_step_row(k, t32, f32, envelope, run, ref_states))
        envelope = rows[-1].envelope
        bar.advance()
    return rows


def _report(main: _Twin, rows, pair, run: _RunSettings, dtype, loss, float64_reference) -> TrajectoryReport:
    """The report with the trained states of both sides (main precision)."""
    side, pure_bs = main.flax.side, main.flax.side.pure(main.flax.bstats)
    meta = {
        "flax": side.kind,
        "dtype": dtype,
        "loss": loss,
        "dropout_masks": run.dropout_masks,
        "bn_var": run.bn_var,
        "seed": run.seed,
        "float64_reference": float64_reference,
        "ref_factor": run.ref_factor if float64_reference else None,
    }
    return TrajectoryReport(
        rows,
        run.tols,
        {"name": pair.name, **pair.settings},
        meta,
        main.torch.model,
        side.variables(main.flax.params, main.flax.bstats),
        main.bn.corrected_tree(pure_bs, main.flax.dtype),
    )
