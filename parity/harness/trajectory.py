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
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn as tnn

from parity import convert
from parity.harness.compare import rel_l2, unbiased_running_var
from parity.harness.localize import (
    DropoutMasks,
    FlaxSide,
    SharedDropout,
    _flax_bn_stats,
    _invert,
    _np,
    _torch_device,
    activation_to_flax,
    flax_dropout_hook,
    flax_loss,
    torch_loss,
    torch_shared_dropout,
)
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
#: With ``float64_reference=True`` a metric passes at a step when it is at most this many times
#: torch float32's own distance from the float64 trajectory (or within ``tol``).
REF_FACTOR = 10.0


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
                out.setdefault(key, {})[name] = _np(value)
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
                    tmom.setdefault(key, {})[index[id(p)]] = _np(value)
        fmom = {
            MOMENT_NAMES[f]: jax.tree.map(np.asarray, dict(tree)) for f, tree in optax_moments(state).items()
        }
        diffs = _compare(
            _State(0.0, {n: np.asarray(v) for n, v in fparams.items()}, {}, fmom),
            _State(0.0, {n: _np(p) for n, p in tparams.items()}, {}, tmom),
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
    ``param_rel`` up to this step: the error envelope of the weights.
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

    def metrics(self) -> dict[str, tuple[float, str]]:
        """``{metric: (global value, worst tensor)}`` in the order they are checked."""
        return {
            "loss": (self.loss_rel, "loss"),
            "param": (self.param_rel, self.param_worst),
            "bn_state": (self.bn_rel, self.bn_worst),
            "optimizer_state": (self.opt_rel, self.opt_worst),
        }

    def failures(self) -> list[tuple[str, str, float, float]]:
        """``(metric, worst tensor, value, tolerance)`` for every metric above its tolerance."""
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


@contextlib.contextmanager
def _progress(total: int, label: str, enabled: bool) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


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
class _State:
    """One side's state after a step, in torch names and layout."""

    loss: float
    params: dict[str, np.ndarray]
    bn: dict[str, np.ndarray]
    opt: dict[str, dict[str, np.ndarray]]


def _torch_state(model: tnn.Module, optimizer: torch.optim.Optimizer, loss: float) -> _State:
    bn = {}
    for n, m in model.named_modules():
        if isinstance(m, tnn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            bn[f"{n}.running_mean"] = _np(m.running_mean)
            bn[f"{n}.running_var"] = _np(m.running_var)
    return _State(loss, {n: _np(p) for n, p in model.named_parameters()}, bn, torch_moments(optimizer, model))


def _compare(c: _State, r: _State) -> dict[str, tuple[float, float, str]]:
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


def _cast(dtype):
    def cast(a):
        return a.astype(dtype) if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) else a

    return cast


def _tolerances(tol: float | Mapping[str, float]) -> dict[str, float]:
    if isinstance(tol, Mapping):
        missing = set(METRICS) - set(tol)
        if missing:
            raise ValueError(f"tol is missing metric(s) {', '.join(sorted(missing))}; give all of {METRICS}")
        return {m: float(tol[m]) for m in METRICS}
    return {m: float(tol) for m in METRICS}


def trajectory(
    torch_model: tnn.Module,
    flax_model: Any,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    variables: Mapping | None = None,
    optimizer: str | OptimizerPair = "sgd",
    steps: int | None = None,
    loss: str = "cross_entropy",
    dropout_masks: DropoutMasks = "shared",
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

    The Flax step is one ``jax.jit``-ed function (forward, gradient, optax update); the masks
    are its inputs, so the compiled step is reused for every step.
    """
    if dropout_masks not in ("shared", "independent"):
        raise ValueError(f"dropout_masks must be 'shared' or 'independent', got {dropout_masks!r}")
    if bn_var not in ("corrected", "raw"):
        raise ValueError(f"bn_var must be 'corrected' or 'raw', got {bn_var!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    double = dtype == "float64"
    if double and float64_reference:
        raise ValueError(
            "float64_reference compares float32 with float64; with dtype='float64' there is "
            "nothing to compare: drop one of them"
        )
    tols = _tolerances((TRAJECTORY_TOL_FLOAT64 if double else TRAJECTORY_TOL) if tol is None else tol)
    pair = make_optimizer_pair(optimizer) if isinstance(optimizer, str) else optimizer
    batches = list(batches) if steps is None else [b for _, b in zip(range(steps), batches)]
    if steps is not None and len(batches) < steps:
        raise ValueError(f"asked for {steps} steps but only {len(batches)} batches were given")
    if not batches:
        raise ValueError("trajectory needs at least one batch")

    tm = copy.deepcopy(torch_model).train()
    if double:
        tm = tm.double()
    topt = pair.torch(tm.parameters())
    t_loss = torch_loss(loss)
    dev = _torch_device(tm)
    ref = ref_opt = None
    if float64_reference:
        ref = copy.deepcopy(torch_model).double().train()
        ref_opt = pair.torch(ref.parameters())
    masks = SharedDropout(seed) if dropout_masks == "shared" else None
    bns = {
        n: m
        for n, m in tm.named_modules()
        if isinstance(m, tnn.modules.batchnorm._BatchNorm) and m.running_mean is not None
    }
    counts: dict[str, int] = {}
    bn_hooks = [
        m.register_forward_pre_hook(lambda m, a, n=n: counts.__setitem__(n, a[0].numel() // a[0].shape[1]))
        for n, m in bns.items()
    ]

    side = FlaxSide(flax_model, variables, call_kwargs)
    to_flax = _invert(layer_map)
    f_loss = flax_loss(loss)
    tx = pair.optax
    to_torch = param_map or (lambda tree: convert.params_to_torch(tree, torch_model))

    def flax_step(params, batch_stats, rest, opt_state, x, y, uniforms, rng):
        hook = flax_dropout_hook(uniforms) if uniforms else None

        def objective(p):
            out, nbs, nrest = side.apply(p, batch_stats, rest, x, train=True, hook=hook, rng=rng)
            return f_loss(out, y), (nbs, nrest)

        (value, (nbs, nrest)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), nbs, nrest, opt_state, value

    step_fn = jax.jit(flax_step)
    x64 = jax.enable_x64(True) if double else contextlib.nullcontext()
    fdtype = jnp.float64 if double else jnp.float32
    with x64:
        params, bstats, rest = (
            jax.tree.map(_cast(fdtype), t) for t in (side.params, side.batch_stats, side.rest)
        )
        opt_state = tx.init(params)
    prev_var = {n: (_flax_bn_stats(side.pure(bstats), to_flax(n)) or {}).get("var") for n in bns}
    corrected = {n: None if v is None else np.asarray(v, np.float64) for n, v in prev_var.items()}
    rows: list[StepRow] = []
    envelope = 0.0

    def torch_train_step(model, opt, x, y, given=None):
        with contextlib.ExitStack() as stack:
            rec = stack.enter_context(torch_shared_dropout(model, masks, k, given=given)) if masks else {}
            opt.zero_grad(set_to_none=True)
            xt = torch.from_numpy(x).to(dev)
            if xt.is_floating_point():
                xt = xt.to(next(model.parameters()).dtype)
            value = t_loss(model(xt), torch.from_numpy(y).to(dev))
            value.backward()
            opt.step()
        return float(value.detach()), rec

    try:
        with x64, _progress(len(batches), f"trajectory ({pair.name}, {dtype})", progress) as advance:
            for k, (x, y) in enumerate(batches):
                x, y = np.asarray(x), np.asarray(y)
                lt, rec = torch_train_step(tm, topt, x, y)
                tstate = _torch_state(tm, topt, lt)
                uniforms = {
                    to_flax(n): [jnp.asarray(activation_to_flax(u)) for u in us] for n, us in rec.items()
                }
                rng = jax.random.fold_in(jax.random.key(seed), k) if dropout_masks == "independent" else None
                xf = jnp.asarray(activation_to_flax(x))
                params, bstats, rest, opt_state, lf = step_fn(
                    params,
                    bstats,
                    rest,
                    opt_state,
                    xf.astype(fdtype) if jnp.issubdtype(xf.dtype, jnp.floating) else xf,
                    jnp.asarray(y),
                    uniforms,
                    rng,
                )

                # Flax state in torch names and layout; BN variance in torch's convention
                pure_bs = side.pure(bstats)
                fbn = {}
                for n, m in bns.items():
                    fs = _flax_bn_stats(pure_bs, to_flax(n))
                    if fs is None:
                        continue
                    if prev_var[n] is not None and m.momentum is not None and counts.get(n, 0) > 1:
                        mom = 1.0 - float(m.momentum)
                        corrected[n] = unbiased_running_var(
                            [prev_var[n], fs["var"]], counts[n], momentum=mom
                        ) + mom * (corrected[n] - np.asarray(prev_var[n], np.float64))
                    else:
                        corrected[n] = np.asarray(fs["var"], np.float64)
                    prev_var[n] = fs["var"]
                    fbn[f"{n}.running_mean"] = fs["mean"]
                    fbn[f"{n}.running_var"] = corrected[n] if bn_var == "corrected" else fs["var"]
                fopt = {
                    MOMENT_NAMES[f]: to_torch(side.pure(tree)) for f, tree in optax_moments(opt_state).items()
                }
                fstate = _State(float(lf), to_torch(side.pure(params)), fbn, fopt)
                diffs = _compare(fstate, tstate)

                bounds = dict(tols)
                f64 = {}
                if ref is not None:
                    lr_, _ = torch_train_step(ref, ref_opt, x, y, given=rec)
                    f64 = {m: v[0] for m, v in _compare(tstate, _torch_state(ref, ref_opt, lr_)).items()}
                    bounds = {m: max(tols[m], ref_factor * f64[m]) for m in METRICS}
                envelope = max(envelope, diffs["param"][0])
                ok = all(diffs[m][0] <= bounds[m] for m in METRICS)
                rows.append(
                    StepRow(
                        k,
                        lt,
                        float(lf),
                        diffs["loss"][0],
                        *diffs["param"],
                        *diffs["bn_state"],
                        *diffs["optimizer_state"],
                        envelope,
                        bounds,
                        ok,
                        *(
                            (f64["loss"], f64["param"], f64["bn_state"], f64["optimizer_state"])
                            if f64
                            else ()
                        ),
                    )
                )
                advance()
    finally:
        for h in bn_hooks:
            h.remove()
    corrected_bs = convert.unflatten_tree(
        {
            **convert.flatten_tree(side.pure(bstats)),
            **{
                f"{to_flax(n).replace('.', '/')}/var": np.asarray(v, fdtype)
                for n, v in corrected.items()
                if v is not None
            },
        }
    )
    meta = {
        "flax": side.kind,
        "dtype": dtype,
        "loss": loss,
        "dropout_masks": dropout_masks,
        "bn_var": bn_var,
        "seed": seed,
        "float64_reference": float64_reference,
        "ref_factor": ref_factor if float64_reference else None,
    }
    return TrajectoryReport(
        rows,
        tols,
        {"name": pair.name, **pair.settings},
        meta,
        tm,
        side.variables(params, bstats),
        corrected_bs,
    )
