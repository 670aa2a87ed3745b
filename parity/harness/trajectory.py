"""Training-trajectory parity: train torch and Flax side by side and watch the gap.

:func:`trajectory` trains both sides of a :class:`~parity.harness.pair.ModelPair` for K steps
from the same weights on the same batches with matched optimizers
(:mod:`parity.harness.optim`), dropout active with identical masks, and reports per step the
loss, parameter, BatchNorm-state and optimizer-state differences and the error envelope
(:mod:`parity.harness.trajectory_report`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn as tnn

from parity import convert
from parity.defaults import FLOAT64_REL_TOL
from parity.harness.dropout import SharedDropout, flax_dropout_hook, torch_shared_dropout
from parity.harness.flax_grad import flax_loss, float_cast
from parity.harness.metrics import REF_FACTOR, unbiased_running_var
from parity.harness.optim import (
    MOMENT_NAMES,
    OptimizerPair,
    make_optimizer_pair,
    optax_moments,
    optimizer_differences,
    torch_moments,
)
from parity.harness.pair import ModelPair
from parity.harness.sides import (
    FlaxSide,
    flax_bn_stats,
    to_numpy,
    torch_device,
    torch_loss,
)
from parity.harness.trajectory_report import (
    METRICS,
    StepRow,
    TrainingState,
    TrajectoryReport,
    compare_states,
    metric_tolerances,
)
from parity.layout import activation_to_flax
from parity.progress import Progress

#: Re-exported: the optimizers and the report live in their own modules.
__all__ = [
    "TRAJECTORY_TOL",
    "TRAJECTORY_TOL_FLOAT64",
    "OptimizerPair",
    "StepRow",
    "TrajectoryOptions",
    "TrajectoryReport",
    "localize_step",
    "make_optimizer_pair",
    "optimizer_differences",
    "pair_from_torch_weights",
    "trajectory",
]

#: Per-step tolerance of every trajectory difference (loss, parameters, BN state, optimizer
#: state), float32 on CPU, for up to 50 steps; see docs/HARNESS.md for the measured envelopes
#: it bounds and the margin.
TRAJECTORY_TOL = {"loss": 1e-4, "param": 1e-4, "bn_state": 1e-4, "optimizer_state": 1e-3}
#: The same bounds for ``dtype='float64'`` runs: rounding is 2**-53 ~ 1.1e-16 instead of
#: 2**-24 ~ 6e-8, and the measured 50-step envelopes stay below ~1e-12 (docs/HARNESS.md).
TRAJECTORY_TOL_FLOAT64 = dict.fromkeys(("loss", "param", "bn_state", "optimizer_state"), FLOAT64_REL_TOL)
#: With ``float64_reference=True`` a metric passes at a step when it is at most ``REF_FACTOR``
#: (:data:`parity.harness.metrics.REF_FACTOR`, 10) times torch float32's own distance from the
#: float64 trajectory (or within ``tol``).


def _torch_state(model: tnn.Module, optimizer: torch.optim.Optimizer, loss: float) -> TrainingState:
    bn = {}
    for n, m in model.named_modules():
        if isinstance(m, tnn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            bn[f"{n}.running_mean"] = to_numpy(m.running_mean)
            bn[f"{n}.running_var"] = to_numpy(m.running_var)
    return TrainingState(
        loss, {n: to_numpy(p) for n, p in model.named_parameters()}, bn, torch_moments(optimizer, model)
    )


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
    correction is exact algebra (:func:`parity.harness.metrics.unbiased_running_var`).
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


def _make_twin(pair: ModelPair, opt: OptimizerPair, loss: str, masks, float64: bool, run, counts) -> _Twin:
    """Private copies of both sides, in float64 or float32, from the same weights."""
    tt = _TorchTrainer(pair.torch, opt, loss, masks, float64)
    side = pair.flax_side()
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
        _FlaxTrainer(side, opt.optax, loss, float64),
        _BnVariance(bns, run.to_flax, side.pure(side.batch_stats), counts),
        hooks,
    )


def _step_row(
    k: int, t32: TrainingState, f32: TrainingState, envelope: float, run: _RunSettings, ref
) -> StepRow:
    """The row of step ``k``: float32 differences, the float64 reference (torch float32 vs torch
    float64) and, where float32 leaves its bound, the float64 port verdict."""
    diffs = compare_states(f32, t32)
    bounds, f64, port = dict(run.tols), (), None
    if ref is not None:
        t64, f64s = ref
        f64d = {m: v[0] for m, v in compare_states(t32, t64).items()}
        bounds = {m: max(run.tols[m], run.ref_factor * f64d[m]) for m in METRICS}
        f64 = tuple(f64d[m] for m in METRICS)
        if not all(diffs[m][0] <= bounds[m] for m in METRICS):
            port64 = compare_states(f64s, t64)
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


def _take(batches: Iterable, steps: int | None) -> list:
    out = list(batches) if steps is None else [b for _, b in zip(range(steps), batches)]
    if steps is not None and len(out) < steps:
        raise ValueError(f"asked for {steps} steps but only {len(out)} batches were given")
    if not out:
        raise ValueError("trajectory needs at least one batch")
    return out


@dataclass(frozen=True)
class TrajectoryOptions:
    """How :func:`trajectory` trains and judges.

    ``optimizer``: ``'sgd'``, ``'adam'``, ``'adamw'`` (defaults of
    :func:`parity.harness.optim.make_optimizer_pair`) or an :class:`OptimizerPair`. ``steps``:
    how many batches to use (default: all). ``loss``: ``'cross_entropy'`` (integer labels) or
    ``'mse'``. ``dropout_masks``: ``'shared'`` (identical masks) or ``'independent'``. ``tol``:
    per-step bound of each metric's global relative difference, one float or
    ``{'loss', 'param', 'bn_state', 'optimizer_state'}``; default :data:`TRAJECTORY_TOL` (or
    :data:`TRAJECTORY_TOL_FLOAT64`). ``bn_var``: ``'corrected'`` compares torch's unbiased
    ``running_var`` with the Flax variance brought to torch's convention (exact algebra, per
    step); ``'raw'`` the Flax variance as stored. ``float64_reference``: also train a float64
    torch copy and bound each metric by ``max(tol, ref_factor * torch float32's distance from
    it)``. ``dtype``: ``'float32'`` or ``'float64'`` (both sides in double precision, where any
    difference above :data:`TRAJECTORY_TOL_FLOAT64` is the port, not rounding). ``progress``: a
    progress bar on stderr. Invalid settings raise ``ValueError``.
    """

    optimizer: str | OptimizerPair = "sgd"
    steps: int | None = None
    loss: str = "cross_entropy"
    dropout_masks: Literal["shared", "independent"] = "shared"
    seed: int = 0
    tol: float | Mapping[str, float] | None = None
    bn_var: Literal["corrected", "raw"] = "corrected"
    float64_reference: bool = False
    ref_factor: float = REF_FACTOR
    dtype: Literal["float32", "float64"] = "float32"
    progress: bool = False

    def __post_init__(self) -> None:
        if self.dropout_masks not in ("shared", "independent"):
            raise ValueError(f"dropout_masks must be 'shared' or 'independent', got {self.dropout_masks!r}")
        if self.bn_var not in ("corrected", "raw"):
            raise ValueError(f"bn_var must be 'corrected' or 'raw', got {self.bn_var!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.dtype == "float64" and self.float64_reference:
            raise ValueError(
                "float64_reference compares float32 with float64; with dtype='float64' there is "
                "nothing to compare: drop one of them"
            )

    def tolerances(self) -> dict[str, float]:
        """Each metric's bound: ``tol``, or the default for ``dtype``."""
        default = TRAJECTORY_TOL_FLOAT64 if self.dtype == "float64" else TRAJECTORY_TOL
        return metric_tolerances(default if self.tol is None else self.tol)


def trajectory(
    pair: ModelPair,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    options: TrajectoryOptions = TrajectoryOptions(),
) -> TrajectoryReport:
    """Train both sides of ``pair`` in train mode from the same weights on the same ``(x, y)``
    batches (``x`` torch layout); neither model is modified (the report holds trained copies).

    The Flax step is one ``jax.jit``-ed function (forward, gradient, optax update); the dropout
    masks are its inputs, so the compiled step is reused for every step.
    """
    o = options
    opt = make_optimizer_pair(o.optimizer) if isinstance(o.optimizer, str) else o.optimizer
    batches = _take(batches, o.steps)
    tols, narrow = o.tolerances(), None
    if o.dtype == "float64":
        tols, narrow = _float32_scale_if_narrow(pair, batches[0][0], tols)
    run = _RunSettings(
        pair.to_flax(),
        pair.to_torch,
        o.seed,
        o.dropout_masks,
        o.bn_var,
        tols,
        o.ref_factor,
        pair.input_layout,
    )
    masks = SharedDropout(o.seed) if o.dropout_masks == "shared" else None
    main = _make_twin(pair, opt, o.loss, masks, o.dtype == "float64", run, {})
    ref = _make_twin(pair, opt, o.loss, masks, True, run, {}) if o.float64_reference else None
    try:
        with Progress("steps", len(batches), enabled=o.progress, transient=True) as bar:
            bar.describe(f"trajectory ({opt.name}, {o.dtype})")
            rows = _train_side_by_side(main, ref, batches, run, bar)
    finally:
        for twin in (main, ref):
            if twin is not None:
                twin.close()
    rep = _report(main, rows, opt, run, o)
    if narrow:
        rep.meta["float64"] = narrow
    return rep


def _float32_scale_if_narrow(pair: ModelPair, x: np.ndarray, tols: dict) -> tuple[dict, str | None]:
    """``(tolerances, note)`` of a float64 run: unchanged when the Flax side computes in float64;
    raised to the float32 bounds (:data:`TRAJECTORY_TOL`) with a note when a module fixes its own
    ``dtype=float32`` (:func:`parity.harness.layers64.computes_in_float64`)."""
    from parity.harness.layers64 import computes_in_float64

    if computes_in_float64(pair.flax_side(), pair.flax_input(np.asarray(x))):
        return tols, None
    note = (
        "the port computes in float32 even in the float64 run (a module dtype): judged on the "
        "float32 scale (TRAJECTORY_TOL)"
    )
    return {m: max(v, TRAJECTORY_TOL[m]) for m, v in tols.items()}, note


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


def _report(
    main: _Twin, rows, opt: OptimizerPair, run: _RunSettings, o: TrajectoryOptions
) -> TrajectoryReport:
    """The report with the trained states of both sides (main precision)."""
    side, pure_bs = main.flax.side, main.flax.side.pure(main.flax.bstats)
    meta = {
        "flax": side.kind,
        "dtype": o.dtype,
        "loss": o.loss,
        "dropout_masks": run.dropout_masks,
        "bn_var": run.bn_var,
        "seed": run.seed,
        "float64_reference": o.float64_reference,
        "ref_factor": run.ref_factor if o.float64_reference else None,
    }
    return TrajectoryReport(
        rows,
        run.tols,
        {"name": opt.name, **opt.settings},
        meta,
        main.torch.model,
        side.variables(main.flax.params, main.flax.bstats),
        main.bn.corrected_tree(pure_bs, main.flax.dtype),
    )


def localize_step(
    pair: ModelPair,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    report: TrajectoryReport,
    options: TrajectoryOptions = TrajectoryOptions(),
) -> dict | None:
    """Localise the first step at which ``report`` (a :func:`trajectory` of ``pair`` on
    ``batches`` with ``options``) fails; ``None`` when it passed.

    Both sides start step ``k`` from the torch weights after ``k`` steps (a float32 copy of a
    :func:`trajectory` of the first ``k`` batches; the states agreed up to there), and
    :func:`parity.harness.localize.localize` (train mode, step ``k``'s dropout masks, float64
    verdict per layer) and :func:`parity.harness.localize.localize_gradients` compare that
    step's batch: ``{'step': k, 'layers': report, 'gradients': report}``.
    """
    from parity.harness.localize import GradientOptions, LocalizeOptions, localize, localize_gradients

    first = report.first_divergent
    if first is None:
        return None
    k, batches = first[0], _take(batches, options.steps)
    torch_k = pair.torch
    if k:
        head = dataclasses.replace(options, steps=k, progress=False)
        torch_k = trajectory(pair, batches[:k], head).torch_model
    pair_k = pair_from_torch_weights(pair, torch_k)
    x, y = (np.asarray(a) for a in batches[k])
    masks, seed = options.dropout_masks, options.seed
    layers = localize(pair_k, x, LocalizeOptions("train", dropout_masks=masks, seed=seed, step=k))
    grads = GradientOptions("train", loss=options.loss, dropout_masks=masks, seed=seed, step=k)
    return {"step": k, "layers": layers, "gradients": localize_gradients(pair_k, x, y, grads)}


def pair_from_torch_weights(pair: ModelPair, trained: tnn.Module) -> ModelPair:
    """``pair`` with both sides holding ``trained``'s weights and statistics (``trained``: a
    trained copy of ``pair.torch``, any float dtype), converted with the pair's options."""
    state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
    tm = copy.deepcopy(pair.torch)
    tm.load_state_dict(state)  # into the original parameters: their dtype, ties kept
    state = {k: v.detach().clone() for k, v in tm.state_dict().items()}
    if pair.kind == "linen":
        variables = convert.torch_to_flax(state, tm, pair.variables, **pair.convert_options)
        return pair.replace(torch=tm, variables=variables)
    from flax import nnx

    fm = nnx.clone(pair.flax)
    convert.torch_to_flax(state, tm, fm, **pair.convert_options)
    return pair.replace(torch=tm, flax=fm)
