"""Matched optimizers: a torch.optim optimizer and the optax transformation that follows it.

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

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from torch import nn as tnn

from parity.defaults import LEARNING_RATE, MOMENTUM
from parity.harness.sides import to_numpy
from parity.harness.trajectory_report import (
    METRICS,
    StepRow,
    TrainingState,
    TrajectoryReport,
    compare_states,
    metric_tolerances,
)
from parity.registry import OPTIMIZERS

DEFAULT_LR = {"sgd": LEARNING_RATE, "adam": 1e-3, "adamw": 1e-3}


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
    momentum: float = MOMENTUM,
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

    ``weight_decay`` defaults to ``0`` for sgd and adam. ``lr`` defaults to :data:`parity.defaults.LEARNING_RATE` (sgd) or 1e-3.
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
    tols = metric_tolerances(tol)
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
        diffs = compare_states(
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
