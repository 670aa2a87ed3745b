"""The foundation checks of ``parity check`` on the project's own models (the zoo).

:func:`zoo_pair` builds a :class:`~parity.harness.pair.ModelPair` from a registry model;
:func:`run_checks` compares, on real data, the eval and train forward, the BN running
statistics after training-mode passes, the per-parameter gradients and the round trip.
Values are relative L2 differences (:mod:`parity.harness.metrics`), judged against
:data:`TOLERANCES` (float32, CPU; :mod:`parity.defaults`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from flax_impl import linen_models, nnx_models
from parity import convert
from parity.harness.localize import GradientOptions, localize_gradients
from parity.harness.metrics import (
    GRADIENT_TOL_FLOAT64,
    REF_FACTOR,
    TOLERANCES,
    judged_forward,
    judged_rel_l2,
    rel_l2,
    unbiased_running_var,
)
from parity.harness.pair import ModelPair
from parity.harness.results import Check, CheckError
from parity.harness.sides import TorchSide, torch_device
from parity.layout import to_channels_last
from parity.registry import FLAX_FRAMEWORKS, MODEL_DATASET
from torch_impl import models as torch_models

#: Re-exported: the metrics live in :mod:`parity.harness.metrics`, the rows in
#: :mod:`parity.harness.results`.
__all__ = [
    "GRADIENT_TOL_FLOAT64",
    "REF_FACTOR",
    "TOLERANCES",
    "Check",
    "ModelPair",
    "Pair",
    "bn_pass_batches",
    "bn_state_after_passes",
    "check_batch_size",
    "forward_difference",
    "gradient_differences",
    "judged_rel_l2",
    "rel_l2",
    "roundtrip_max_abs",
    "run_checks",
    "torch_bn_state",
    "unbiased_running_var",
    "values_per_channel",
    "zoo_pair",
]


def zoo_pair(model: str, framework: str, seed: int = 0, device: str = "cpu", **config) -> ModelPair:
    """The torch registry ``model`` (seeded) and its converted Linen or NNX twin.

    ``config`` overrides architecture widths (e.g. ``dropout=0.0`` for train-mode parity).
    ``device`` is where torch runs (``'cpu'`` or ``'cuda'``); jax runs on its default device,
    which :func:`parity.device.configure` sets to the same place.
    """
    if framework not in FLAX_FRAMEWORKS:
        raise CheckError(f"unknown framework {framework!r}; choose one of {', '.join(FLAX_FRAMEWORKS)}")
    tm = torch_models.build_model(model, seed=seed, **config)
    variables = convert.torch_to_linen(tm.state_dict(), tm)
    tm.to(torch.device(device))
    if framework == "nnx":
        nm = convert.load_nnx_variables(nnx_models.build_model(model, **config), variables)
        return ModelPair(tm, nm, name=model)
    return ModelPair(tm, linen_models.build_model(model, **config), variables, name=model)


#: The former name of :func:`zoo_pair`, kept for callers written against it.
Pair = zoo_pair


# Jitted once per architecture (Linen modules are hashable configs; NNX graphdefs are cached),
# so the many pairs of a test session share compilations instead of dispatching op by op.
@partial(jax.jit, static_argnums=(0, 3))
def _linen_apply(module, variables: dict, x: jax.Array, train: bool):
    if train:
        return module.apply(variables, x, train=True, mutable=["batch_stats"])
    return module.apply(variables, x, train=False), None


@nnx.jit
def _nnx_forward(model, x: jax.Array) -> jax.Array:
    return model(x)


def torch_forward(pair: ModelPair, x: np.ndarray, train: bool) -> np.ndarray:
    """Logits ``(N, classes)`` from torch in train or eval mode (updates BN stats if train)."""
    pair.torch.train(train)
    with torch.no_grad():
        return pair.torch(torch.from_numpy(x).to(torch_device(pair.torch))).cpu().numpy()


def flax_forward(pair: ModelPair, x: np.ndarray, train: bool) -> np.ndarray:
    """Logits from Linen or NNX in the same mode; in train mode the BN stats are stored."""
    xl = jnp.asarray(to_channels_last(x))
    if pair.kind == "nnx":
        pair.flax.train() if train else pair.flax.eval()
        return np.asarray(_nnx_forward(pair.flax, xl))
    out, upd = _linen_apply(pair.flax, pair.variables, xl, train)
    if train:
        pair.variables = {"params": pair.variables["params"], "batch_stats": upd["batch_stats"]}
    return np.asarray(out)


def flax_batch_stats(pair: ModelPair) -> dict:
    """Current Flax running statistics as a Linen-style ``batch_stats`` tree of numpy arrays."""
    if pair.kind == "nnx":
        return convert.nnx_variables(pair.flax)["batch_stats"]
    return jax.tree.map(np.asarray, pair.variables["batch_stats"])


def torch_bn_state(model: torch.nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """``{bn_name: {'mean', 'var'}}`` of a torch model's running statistics."""
    return TorchSide(model).bn_stats()


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
    history = [flax_batch_stats(pair)]
    for x in batches:
        torch_forward(pair, x, train=True)
        flax_forward(pair, x, train=True)
        history.append(flax_batch_stats(pair))
    out = {}
    for bn, ts in torch_bn_state(pair.torch).items():
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
    """The judged gradient difference of each parameter, keyed by torch parameter name
    (:func:`parity.harness.metrics.judged_rel_l2` of :func:`localize_gradients`' rows at
    ``TOLERANCES['gradient']``; docs/HARNESS.md, "gradients float32 cannot resolve")."""
    rep = localize_gradients(pair, x, y, GradientOptions(tol=TOLERANCES["gradient"]))
    return {r.name: judged_rel_l2(r, rep.tol) for r in rep.rows}


def forward_difference(pair: ModelPair, x: np.ndarray, train: bool) -> float:
    """The judged relative L2 difference of the logits at ``TOLERANCES['forward']`` (``x``
    channels-first, a model with dropout 0 in train mode): float32, or above the tolerance the
    float64 verdict (:func:`parity.harness.metrics.judged_forward`). The float64 outputs are
    computed first, from the statistics before the (stateful) float32 passes."""
    xf = to_channels_last(x)
    before = (
        TorchSide(pair.torch).forward(x, train, float64=True)[0],
        pair.flax_side().forward(xf, train, float64=True),
    )
    torch32, flax32 = torch_forward(pair, x, train), flax_forward(pair, x, train)
    return judged_forward(torch32, flax32, TOLERANCES["forward"], lambda: before)


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
    """Raise :class:`~parity.harness.results.CheckError` unless ``2 <= batch_size <= test_size`` (the checks compare one
    batch of the test split; BatchNorm needs two samples)."""
    if batch_size < 2:
        raise CheckError(f"batch size {batch_size} is below 2 (BatchNorm needs two samples)")
    if batch_size > test_size:
        raise CheckError(f"batch size {batch_size} is larger than {model}'s test split ({test_size} samples)")


def bn_pass_batches(x_train: np.ndarray, batch_size: int, passes: int) -> list[np.ndarray]:
    """``passes`` consecutive full batches of ``x_train`` (channels-first), wrapping around at
    the end of the split, so every pass has exactly ``batch_size`` samples."""
    idx = np.arange(passes * batch_size) % len(x_train)
    return [x_train[idx[i * batch_size : (i + 1) * batch_size]] for i in range(passes)]


def framework_checks(
    model: str,
    framework: str,
    data: tuple[np.ndarray, np.ndarray, list[np.ndarray]],
    seed: int,
    device: str,
    tols: dict[str, float],
) -> list[Check]:
    """The six foundation checks of one model and Flax style on ``data = (x, y, BN passes)``
    (NCHW / NCW): eval and train forward, BN running mean and corrected variance, worst judged
    gradient (:func:`gradient_differences`), round trip. Values are judged at
    :data:`TOLERANCES` and the rows hold ``tols`` (a precision policy's)."""
    x, y, passes = data

    def check(name: str, value: float, kind: str | None) -> Check:
        return Check.judged(model, framework, name, value, 0.0 if kind is None else tols[kind])

    fresh = partial(zoo_pair, model, framework, seed, device, dropout=0.0)
    out = [
        check(
            "forward_eval_rel_l2",
            forward_difference(zoo_pair(model, framework, seed, device), x, False),
            "forward",
        )
    ]
    out.append(check("forward_train_rel_l2", forward_difference(fresh(), x, True), "forward"))
    bn = bn_state_after_passes(fresh(), passes)
    out.append(check("bn_running_mean_rel_l2", max(v["mean"] for v in bn.values()), "bn_state"))
    out.append(
        check("bn_running_var_corrected_rel_l2", max(v["var_corrected"] for v in bn.values()), "bn_state")
    )
    grads = gradient_differences(fresh(), x, y)
    out.append(check("gradient_max_rel_l2", max(grads.values()), "gradient"))
    out.append(check("roundtrip_max_abs", roundtrip_max_abs(model, framework, seed), None))
    return out


def run_checks(
    models: Iterable[str] = ("digits", "signal1d"),
    frameworks: Iterable[str] = FLAX_FRAMEWORKS,
    seed: int = 0,
    batch_size: int = 128,
    device: str = "cpu",
    tols: dict[str, float] | None = None,
) -> list[Check]:
    """All foundation parity checks on real data (the test split), float32; torch on ``device``
    (jax on its default device, see :func:`parity.device.configure`); rows judged against
    ``tols`` (default :data:`TOLERANCES`).

    Per model and framework: eval forward, train forward (batch statistics, dropout off), BN
    running mean / corrected running variance after 5 training-mode passes, the worst
    per-parameter gradient, and the bit-exact round trip.
    """
    from parity.data import load

    checks: list[Check] = []
    for model in models:
        if model not in MODEL_DATASET:
            raise CheckError(f"unknown model {model!r}; choose one of {', '.join(MODEL_DATASET)}")
        ds = load(MODEL_DATASET[model])
        check_batch_size(batch_size, model, len(ds.x_test))
        data = (ds.x_test[:batch_size], ds.y_test[:batch_size], bn_pass_batches(ds.x_train, batch_size, 5))
        for fw in frameworks:
            checks += framework_checks(model, fw, data, seed, device, tols or TOLERANCES)
    return checks
