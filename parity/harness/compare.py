"""The parity comparisons behind ``parity check`` and the CPU parity suite.

Every comparison starts from one torch model, converts its weights with :mod:`parity.convert`
and feeds the same real data to torch (NCHW / NCW) and to Flax (NHWC / NWC, via
:mod:`parity.layout`). Values are relative L2 differences, ``||flax - torch|| / ||torch||``.

Tolerances (float32, CPU; :data:`TOLERANCES`):

* Forward logits and per-parameter gradients: ``1e-5``. Two float32 kernels that sum the same
  products in a different order differ by a few ulps per output (float32 eps is 1.2e-7); through
  four conv/dense layers and three BatchNorms we measure 1e-7 to 1e-6. A layout bug (a flatten
  order not permuted, a kernel not transposed) gives differences of order 1.
* BN running statistics after training-mode passes: ``1e-5``, same reasoning; ``running_var``
  only after correcting for PyTorch's unbiased update (see :func:`unbiased_running_var`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from flax_impl import BN_MOMENTUM, linen_models, nnx_models
from parity import convert
from parity.layout import to_channels_last
from parity.registry import FLAX_FRAMEWORKS, MODEL_DATASET
from torch_impl import models as torch_models

TOLERANCES = {"forward": 1e-5, "gradient": 1e-5, "bn_state": 1e-5}
#: Bound on a gradient's relative L2 difference when both sides are recomputed in float64,
#: for the parameters float32 cannot resolve (docs/HARNESS.md): float64 rounding is 2**-53 ~
#: 1.1e-16; measured agreement on these models is ~1e-15, so 1e-9 leaves a wide margin while
#: any port defect (order 1e-3 and above) stays far outside it.
GRADIENT_TOL_FLOAT64 = 1e-9
#: How much farther than torch float32 a float32 Flax value may be from the float64 result
#: (:func:`forward_difference`, and the trajectory's float64-reference bound).
REF_FACTOR = 10.0


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` in float64 (``0`` when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(b)
    diff = np.linalg.norm(a - b)
    return float(diff / denom) if denom > 0 else float(diff)


@dataclass(frozen=True)
class Check:
    """One row of ``parity check``: ``passed`` is ``value <= tolerance``."""

    model: str
    framework: str
    check: str
    value: float
    tolerance: float
    passed: bool

    def as_dict(self) -> dict:
        """The JSON form: ``{"model", "framework", "check", "value", "tolerance", "passed"}``."""
        return asdict(self)


def _check(model: str, framework: str, name: str, value: float, tol: float) -> Check:
    return Check(model, framework, name, float(value), float(tol), bool(value <= tol))


# Jitted once per architecture (Linen modules are hashable configs; NNX graphdefs are cached),
# so the many Pairs of a test session share compilations instead of dispatching op by op.
@partial(jax.jit, static_argnums=(0, 3))
def _linen_apply(module, variables: dict, x: jax.Array, train: bool):
    if train:
        return module.apply(variables, x, train=True, mutable=["batch_stats"])
    return module.apply(variables, x, train=False), None


@partial(jax.jit, static_argnums=0)
def _linen_grad(module, params: dict, batch_stats: dict, x: jax.Array, y: jax.Array):
    from flax_impl.linen_train import loss_fn

    def f(p):
        out, _ = module.apply(
            {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return loss_fn(out, y)

    return jax.grad(f)(params)


@nnx.jit
def _nnx_forward(model, x: jax.Array) -> jax.Array:
    return model(x)


@nnx.jit
def _nnx_grad(model, x: jax.Array, y: jax.Array):
    from flax_impl.linen_train import loss_fn

    return nnx.grad(lambda m: loss_fn(m(x), y))(model)


class ModelPair:
    """A torch model and its converted Flax twin (Linen variables or an NNX module).

    ``x`` batches are channels-first numpy (NCHW / NCW); Flax receives them channels-last.
    ``config`` overrides architecture widths (e.g. ``dropout=0.0`` for train-mode parity).
    ``device`` is where torch runs (``'cpu'`` or ``'cuda'``); jax runs on its default device,
    which :func:`parity.device.configure` sets to the same place.
    """

    def __init__(self, model: str, framework: str, seed: int = 0, device: str = "cpu", **config) -> None:
        if framework not in FLAX_FRAMEWORKS:
            raise ValueError(f"unknown framework {framework!r}; choose one of {', '.join(FLAX_FRAMEWORKS)}")
        self.model, self.framework = model, framework
        self.torch = torch_models.build_model(model, seed=seed, **config)
        self.variables = convert.torch_to_linen(self.torch.state_dict(), self.torch)
        self.linen = linen_models.build_model(model, **config)
        self.device = torch.device(device)
        self.torch.to(self.device)
        self.nnx = None
        if framework == "nnx":
            self.nnx = convert.load_nnx_variables(nnx_models.build_model(model, **config), self.variables)

    def flax_model(self) -> tuple[Any, dict | None]:
        """``(flax model, variables)`` as the harness takes them: ``(nnx module, None)`` or
        ``(linen module, variables)``."""
        return (self.nnx, None) if self.framework == "nnx" else (self.linen, self.variables)

    # -- forward ---------------------------------------------------------------------------
    def torch_forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        """Logits ``(N, classes)`` from torch in train or eval mode (updates BN stats if train)."""
        self.torch.train(train)
        with torch.no_grad():
            return self.torch(torch.from_numpy(x).to(self.device)).cpu().numpy()

    def flax_forward(self, x: np.ndarray, train: bool) -> np.ndarray:
        """Logits from Linen or NNX in the same mode; in train mode the BN stats are stored."""
        xl = jnp.asarray(to_channels_last(x))
        if self.framework == "nnx":
            self.nnx.train() if train else self.nnx.eval()
            return np.asarray(_nnx_forward(self.nnx, xl))
        out, upd = _linen_apply(self.linen, self.variables, xl, train)
        if train:
            self.variables = {"params": self.variables["params"], "batch_stats": upd["batch_stats"]}
        return np.asarray(out)

    def flax_batch_stats(self) -> dict:
        """Current Flax running statistics as a Linen-style ``batch_stats`` tree of numpy arrays."""
        if self.framework == "nnx":
            return convert.nnx_variables(self.nnx)["batch_stats"]
        return jax.tree.map(np.asarray, self.variables["batch_stats"])

    # -- gradients --------------------------------------------------------------------------
    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-parameter gradients of the mean cross-entropy in train mode, both in torch layout.

        Returns ``(torch_grads, flax_grads)`` keyed by torch parameter name. Use a model with
        ``dropout=0.0`` so both sides compute the same function.
        """
        self.torch.train()
        self.torch.zero_grad(set_to_none=True)
        logits = self.torch(torch.from_numpy(x).to(self.device))
        torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).long().to(self.device)).backward()
        tg = {n: p.grad.cpu().numpy() for n, p in self.torch.named_parameters()}
        xl, yj = jnp.asarray(to_channels_last(x)), jnp.asarray(y)

        if self.framework == "nnx":
            self.nnx.train()
            fg_tree = nnx.to_pure_dict(_nnx_grad(self.nnx, xl, yj))
        else:
            fg_tree = _linen_grad(self.linen, self.variables["params"], self.variables["batch_stats"], xl, yj)
        return tg, convert.params_to_torch(jax.tree.map(np.asarray, fg_tree), self.torch)


def torch_bn_state(model: torch.nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """``{bn_name: {'mean', 'var'}}`` of a torch model's running statistics."""
    return {
        n: {"mean": m.running_mean.cpu().numpy(), "var": m.running_var.cpu().numpy()}
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    }


def unbiased_running_var(
    flax_vars: list[np.ndarray], n: int | Sequence[int], momentum: float = BN_MOMENTUM
) -> np.ndarray:
    """PyTorch's ``running_var`` implied by a history of Flax running variances.

    Flax updates ``v_k = m v_{k-1} + (1 - m) s2_k`` with the biased batch variance ``s2_k``;
    PyTorch uses the unbiased ``s2_k * n / (n - 1)``, ``n`` being the number of values per
    channel (``N`` for a dense BN, ``N*H*W`` for a conv BN). Both start from ``flax_vars[0]``.
    The batch variance is recovered from each Flax step, so the correction is exact algebra.
    ``n`` is one count for every step, or one per step (batches of different sizes).
    """
    steps = len(flax_vars) - 1
    counts = [int(n)] * steps if isinstance(n, (int, np.integer)) else [int(c) for c in n]
    if len(counts) != steps:
        raise ValueError(f"{len(counts)} values-per-channel counts for {steps} steps")
    if any(c < 2 for c in counts):
        raise ValueError("the unbiased variance needs at least 2 values per channel in every batch")
    t = np.asarray(flax_vars[0], np.float64)
    for prev, cur, c in zip(flax_vars, flax_vars[1:], counts):
        batch_var = (np.asarray(cur, np.float64) - momentum * np.asarray(prev, np.float64)) / (1 - momentum)
        t = momentum * t + (1 - momentum) * batch_var * c / (c - 1)
    return t


def values_per_channel(model: torch.nn.Module, batch: np.ndarray) -> dict[str, int]:
    """``n`` for each BN layer of ``model`` on a channels-first ``batch``: N times spatial size."""
    counts: dict[str, int] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda m, a, name=name: counts.__setitem__(name, a[0].numel() // a[0].shape[1])
        )
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(batch).to(next(model.parameters()).device))
    model.train(was)
    for h in hooks:
        h.remove()
    return counts


def bn_state_after_passes(pair: ModelPair, batches: Iterable[np.ndarray]) -> dict[str, dict[str, float]]:
    """Run training-mode forward passes on both sides; compare running statistics per BN layer.

    Returns ``{bn: {'mean', 'var_uncorrected', 'var_corrected', 'gap_vs_theory'}}`` where the
    first three are relative L2 differences to torch and ``gap_vs_theory`` compares the measured
    ``torch - flax`` variance gap with the gap :func:`unbiased_running_var` predicts.
    """
    batches = list(batches)
    counts = [values_per_channel(pair.torch, x) for x in batches]  # per pass: sizes may differ
    history = [pair.flax_batch_stats()]
    for x in batches:
        pair.torch_forward(x, train=True)
        pair.flax_forward(x, train=True)
        history.append(pair.flax_batch_stats())
    tstate = torch_bn_state(pair.torch)
    out = {}
    for bn, ts in tstate.items():
        fvars = [h[bn]["var"] for h in history]
        corrected = unbiased_running_var(fvars, [c[bn] for c in counts])
        predicted_gap = corrected - fvars[-1]
        measured_gap = ts["var"].astype(np.float64) - fvars[-1]
        out[bn] = {
            "mean": rel_l2(history[-1][bn]["mean"], ts["mean"]),
            "var_uncorrected": rel_l2(fvars[-1], ts["var"]),
            "var_corrected": rel_l2(corrected, ts["var"]),
            "gap_vs_theory": rel_l2(measured_gap, predicted_gap),
        }
    return out


def gradient_differences(pair: ModelPair, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The judged gradient difference of each parameter, keyed by torch parameter name.

    Float32 relative L2 difference, Flax against torch, when it is within
    ``TOLERANCES['gradient']``. A parameter above it is recomputed on both sides in float64
    (:func:`parity.harness.localize.rejudge_in_float64`); its value is then the float64
    relative L2 difference on the float32 scale, ``rel64 * TOLERANCES['gradient'] /
    GRADIENT_TOL_FLOAT64``, so ``value <= TOLERANCES['gradient']`` is the verdict in both cases
    (docs/HARNESS.md, "gradients float32 cannot resolve").
    """
    from parity.harness.localize import localize_gradients

    model, variables = pair.flax_model()
    rep = localize_gradients(pair.torch, model, x, y, variables=variables, tol=TOLERANCES["gradient"])
    return {r.name: judged_rel_l2(r, rep.tol) for r in rep.rows}


def _float64_forward(pair: ModelPair, x: np.ndarray, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(torch logits, flax logits)`` with both sides in float64 (torch ``.double()`` copy, Flax
    under ``jax.enable_x64``), same weights and statistics, no state changed."""
    import copy

    from parity.harness.sides import FlaxSide, float_cast

    t64 = copy.deepcopy(pair.torch).double().train(train)
    with torch.no_grad():
        out_t = t64(torch.from_numpy(x).to(pair.device).double()).cpu().numpy()
    model, variables = pair.flax_model()
    side = FlaxSide(model, variables)
    with jax.enable_x64(True):
        cast = float_cast(jnp.float64)
        params, bstats, rest = (jax.tree.map(cast, t) for t in (side.params, side.batch_stats, side.rest))
        xf = jnp.asarray(to_channels_last(x), jnp.float64)
        out_f, _, _ = side.apply(params, bstats, rest, xf, train=train)
        return out_t, np.asarray(out_f)


def forward_difference(pair: ModelPair, x: np.ndarray, train: bool) -> float:
    """The judged relative L2 difference of the logits (``x`` channels-first, a model with
    dropout 0 in train mode).

    Float32 first: ``rel_l2(flax, torch)`` when it is within ``TOLERANCES['forward']``. Above
    it, both sides are recomputed in float64 (docs/HARNESS.md, "Gradients float32 cannot
    resolve", which the forward shares): the value becomes the float64 difference on the
    float32 scale (``rel64 * tol / GRADIENT_TOL_FLOAT64``) when the float64 logits agree within
    ``GRADIENT_TOL_FLOAT64`` *and* Flax float32 is no farther from the float64 logits than
    ``REF_FACTOR`` times torch float32 is (the forward is continuous: no decision flips, so a
    Flax float32 that is less accurate than torch's is a defect and keeps the float32 value).
    """
    tol = TOLERANCES["forward"]
    before = _float64_forward(pair, x, train)
    torch32, flax32 = pair.torch_forward(x, train), pair.flax_forward(x, train)
    rel = rel_l2(flax32, torch32)
    if rel <= tol:
        return rel
    torch64, flax64 = before
    port = rel_l2(flax64, torch64)
    as_accurate = rel_l2(flax32, torch64) <= max(tol, REF_FACTOR * rel_l2(torch32, torch64))
    return port * tol / GRADIENT_TOL_FLOAT64 if (port <= GRADIENT_TOL_FLOAT64 and as_accurate) else rel


def judged_rel_l2(row: Any, tol: float) -> float:
    """The value a gradient row is judged by, on the float32 scale: ``rel_l2``, or for a row
    re-judged in float64 its ``port_float64_rel_l2 * tol / GRADIENT_TOL_FLOAT64``; ``<= tol``
    exactly when the row passed."""
    if row.port_float64_rel_l2 is None:
        return row.rel_l2
    return row.port_float64_rel_l2 * tol / GRADIENT_TOL_FLOAT64


def roundtrip_max_abs(model: str, framework: str, seed: int = 0) -> float:
    """Max absolute difference of torch -> Flax -> torch over every tensor (bit-exact gives 0)."""
    src = torch_models.build_model(model, seed=seed)
    # give the BN buffers non-trivial values, so the round trip is tested on real statistics
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(7)
    sd = src.state_dict()
    if framework == "nnx":
        nm = convert.torch_to_nnx(sd, src, nnx_models.build_model(model))
        back = convert.nnx_to_torch(nm, src, num_batches_tracked=7)
    else:
        back = convert.linen_to_torch(convert.torch_to_linen(sd, src), src, num_batches_tracked=7)
    worst = 0.0
    for k, v in sd.items():
        if back[k].dtype != v.dtype or back[k].shape != v.shape:
            return float("inf")
        worst = max(worst, float((back[k].double() - v.double()).abs().max()))
    return worst


def check_batch_size(batch_size: int, model: str, test_size: int) -> None:
    """Raise ``ValueError`` unless ``2 <= batch_size <= test_size`` (the checks compare one
    batch of the test split; BatchNorm needs two samples)."""
    if batch_size < 2:
        raise ValueError(f"batch size {batch_size} is below 2 (BatchNorm needs two samples)")
    if batch_size > test_size:
        raise ValueError(f"batch size {batch_size} is larger than {model}'s test split ({test_size} samples)")


def bn_pass_batches(x_train: np.ndarray, batch_size: int, passes: int) -> list[np.ndarray]:
    """``passes`` consecutive full batches of ``x_train`` (channels-first), wrapping around at
    the end of the split, so every pass has exactly ``batch_size`` samples."""
    idx = np.arange(passes * batch_size) % len(x_train)
    return [x_train[idx[i * batch_size : (i + 1) * batch_size]] for i in range(passes)]


def framework_checks(
    model: str, framework: str, x: np.ndarray, y: np.ndarray, passes: list[np.ndarray], seed: int, device: str
) -> list[Check]:
    """The six foundation checks of one model and Flax style on batch ``x`` (NCHW / NCW) with
    labels ``y`` and the BN ``passes``: eval and train forward, BN running mean and corrected
    variance, worst judged gradient (:func:`gradient_differences`), round trip."""

    def check(name: str, value: float, kind: str | None) -> Check:
        return _check(model, framework, name, value, 0.0 if kind is None else TOLERANCES[kind])

    out = [
        check(
            "forward_eval_rel_l2",
            forward_difference(ModelPair(model, framework, seed, device), x, False),
            "forward",
        )
    ]
    pair = ModelPair(model, framework, seed, device, dropout=0.0)
    out.append(check("forward_train_rel_l2", forward_difference(pair, x, True), "forward"))
    bn = bn_state_after_passes(ModelPair(model, framework, seed, device, dropout=0.0), passes)
    out.append(check("bn_running_mean_rel_l2", max(v["mean"] for v in bn.values()), "bn_state"))
    out.append(
        check("bn_running_var_corrected_rel_l2", max(v["var_corrected"] for v in bn.values()), "bn_state")
    )
    grads = gradient_differences(ModelPair(model, framework, seed, device, dropout=0.0), x, y)
    out.append(check("gradient_max_rel_l2", max(grads.values()), "gradient"))
    out.append(check("roundtrip_max_abs", roundtrip_max_abs(model, framework, seed), None))
    return out


def run_checks(
    models: Iterable[str] = ("digits", "signal1d"),
    frameworks: Iterable[str] = FLAX_FRAMEWORKS,
    seed: int = 0,
    batch_size: int = 128,
    bn_passes: int = 5,
    device: str = "cpu",
) -> list[Check]:
    """All foundation parity checks on real data (the test split), float32; torch on ``device``
    (jax on its default device, see :func:`parity.device.configure`).

    Per model and framework: eval forward, train forward (batch statistics, dropout off), BN
    running mean / corrected running variance after ``bn_passes`` training-mode passes, the
    worst per-parameter gradient, and the bit-exact round trip.
    """
    from parity.data import load

    checks: list[Check] = []
    for model in models:
        if model not in MODEL_DATASET:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODEL_DATASET)}")
        ds = load(MODEL_DATASET[model])
        check_batch_size(batch_size, model, len(ds.x_test))
        x, y = ds.x_test[:batch_size], ds.y_test[:batch_size]
        passes = bn_pass_batches(ds.x_train, batch_size, bn_passes)
        for fw in frameworks:
            checks += framework_checks(model, fw, x, y, passes, seed, device)
    return checks


#: The former name of :class:`ModelPair`, kept for callers written against it.
Pair = ModelPair
