"""Data-parallel training steps in Flax: ``jit`` over a sharded batch, and ``shard_map``.

Mirrors ``torch_impl/data_parallel.py``: same function names, same record layout. A run trains
from the same initial variables for ``K`` steps on ``K`` global batches of ``B`` rows
(channels-last, NHWC / NWC), split over a 1-D device mesh with axis ``"data"``. Records, per
step ``k``, under ``{name}/{k}/...``: ``logits`` ``(B, classes)`` (all shards, in order),
``loss`` (global mean), ``grad/<flax path>`` (the gradient the optimizer applies),
``stat/<bn>/mean`` and ``stat/<bn>/var`` after the step (shard_map: a leading replica axis
``(N, C)``), and ``training`` (always 1.0: the mode is an argument here).

* :func:`run_jit_sharded`: state replicated (``NamedSharding(mesh, P())``), batch sharded on
  its first axis (``P("data")``); the step is the single-device step. A batch mean over a
  sharded axis is a global mean by construction, so BN needs no flag.
* :func:`run_shard_map`: the step runs per replica under ``jax.shard_map``; gradients are
  ``pmean``-ed; BN statistics are global only if the module's ``bn_axis_name`` is the mesh axis,
  per replica otherwise (then :func:`sync_batch_stats` must ``pmean`` them before evaluation).
* :func:`run_nnx_jit_sharded` and :func:`run_nnx_shard_map`: the same two modes for NNX.

Simulated CPU devices exist only if ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is
set before jax starts, so the harness runs :func:`main` in a fresh process.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flax_impl import linen_models, linen_train, nnx_models, nnx_train
from parity.defaults import LEARNING_RATE

AXIS = "data"


@dataclass(frozen=True)
class RunSpec:
    """The model and the optimizer shared by every run (weights come from the caller)."""

    model: str = "digits"
    config: dict = field(default_factory=lambda: {"channels": (4, 8), "hidden": 16, "dropout": 0.0})
    lr: float = LEARNING_RATE
    dtype: str = "float32"


def available_workers() -> int:
    """How many devices jax sees (CPU: 1 unless ``--xla_force_host_platform_device_count``)."""
    return len(jax.devices())


def check_world_size(world_size: int, global_batch: int, available: int) -> None:
    """Raise ``ValueError`` naming the numbers if ``world_size`` cannot split ``global_batch``
    or exceeds the ``available`` devices. Called before any work starts."""
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if world_size > available:
        raise ValueError(f"world size {world_size} is larger than the {available} devices available")
    if global_batch % world_size:
        raise ValueError(
            f"global batch {global_batch} is not divisible by world size {world_size} "
            f"(remainder {global_batch % world_size})"
        )


def make_mesh(world_size: int) -> Mesh:
    """A 1-D mesh ``("data",)`` over the first ``world_size`` devices; ``ValueError`` (before
    any work) when fewer devices exist."""
    if world_size > available_workers():
        raise ValueError(
            f"world size {world_size} is larger than the {available_workers()} devices available"
        )
    return Mesh(np.array(jax.devices()[:world_size]), (AXIS,))


def _flat(tree: Any, prefix: str) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {prefix + "/".join(str(k.key) for k in path): np.asarray(v) for path, v in leaves}


def _record_step(out: dict, prefix: str, metrics: dict) -> None:
    """Store one step's logits, loss, gradients and BN statistics under ``prefix``."""
    out[f"{prefix}/logits"] = np.asarray(metrics["logits"])
    out[f"{prefix}/loss"] = np.asarray(metrics["loss"])
    out.update(_flat(metrics["grads"], f"{prefix}/grad/"))
    out.update(_flat(metrics["stats"], f"{prefix}/stat/"))
    out[f"{prefix}/training"] = np.asarray(1.0)


def _linen_step(state: linen_train.TrainState, x: jax.Array, y: jax.Array) -> tuple:
    """One training-mode SGD step; returns the new state and the step's metrics."""

    def loss_of(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
        )
        return linen_train.loss_fn(logits, y), (logits, updates["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    metrics = {"loss": loss, "logits": logits, "grads": grads, "stats": stats}
    return state.apply_gradients(grads=grads, batch_stats=stats), metrics


linen_step = jax.jit(_linen_step)


def _linen_state(spec: RunSpec, variables: dict, bn_axis_name: str | None = None) -> linen_train.TrainState:
    module = linen_models.build_model(spec.model, **spec.config, bn_axis_name=bn_axis_name)
    variables = jax.tree.map(lambda a: jnp.asarray(a, spec.dtype), variables)
    return linen_train.create_train_state(module, variables, linen_train.make_optimizer(spec.lr))


def run_single(spec: RunSpec, variables: dict, x: np.ndarray, y: np.ndarray, name: str = "single") -> dict:
    """Linen on one device, whole global batches: ``x`` is ``(K, B, H, W, C)`` (or ``(K, B, W, C)``)."""
    state, out = _linen_state(spec, variables), {}
    for k in range(len(x)):
        state, metrics = linen_step(state, jnp.asarray(x[k], spec.dtype), jnp.asarray(y[k]))
        _record_step(out, f"{name}/{k}", metrics)
    return out


def run_jit_sharded(
    spec: RunSpec, variables: dict, x: np.ndarray, y: np.ndarray, mesh: Mesh, name: str = "jit"
) -> dict:
    """Linen under ``jit``: replicated state, batch sharded over ``mesh``'s ``"data"`` axis."""
    check_world_size(mesh.size, x.shape[1], available_workers())
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
    state, out = jax.device_put(_linen_state(spec, variables), replicated), {}
    for k in range(len(x)):
        xk, yk = jax.device_put((x[k].astype(spec.dtype), y[k]), sharded)
        state, metrics = linen_step(state, xk, yk)
        _record_step(out, f"{name}/{k}", metrics)
    return out


def _replica_step(state: linen_train.TrainState, x: jax.Array, y: jax.Array) -> tuple:
    """Per-replica body under ``shard_map``: local forward, the *global* loss (``pmean`` of the
    replicas' mean losses) and its gradient. ``state.batch_stats`` has a leading replica axis of 1.

    The params enter replicated (invariant over ``"data"``), so with ``check_vma`` (the default)
    the gradient with respect to them is already summed over replicas (the transpose of the
    implicit ``pvary`` is ``psum``). ``pmap``'s idiom, the gradient of the *local* loss followed
    by ``pmean``, would therefore give N times the gradient here; differentiating the
    ``pmean``-ed loss gives exactly the single-device gradient.
    """

    def loss_of(params):
        stats = jax.tree.map(lambda a: a[0], state.batch_stats)
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return lax.pmean(linen_train.loss_fn(logits, y), AXIS), (logits, updates["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    stats = jax.tree.map(lambda a: a[None], stats)
    metrics = {"loss": loss, "logits": logits, "grads": grads, "stats": stats}
    return state.apply_gradients(grads=grads, batch_stats=stats), metrics


def shard_map_step(mesh: Mesh, state: linen_train.TrainState):
    """The jitted ``shard_map`` step over ``mesh`` for states like ``state``:
    ``(state, x, y) -> (state, metrics)``.

    Specs: params and optimizer state replicated (``P()``), batch statistics and the batch
    split on their first axis (``P("data")``); metrics' logits and statistics per replica.
    """
    state_spec = state.replace(step=P(), params=P(), opt_state=P(), batch_stats=P(AXIS))
    metrics_spec = {"loss": P(), "logits": P(AXIS), "grads": P(), "stats": P(AXIS)}
    mapped = jax.shard_map(
        _replica_step,
        mesh=mesh,
        in_specs=(state_spec, P(AXIS), P(AXIS)),
        out_specs=(state_spec, metrics_spec),
    )
    return jax.jit(mapped)


def run_shard_map(
    spec: RunSpec,
    variables: dict,
    x: np.ndarray,
    y: np.ndarray,
    mesh: Mesh,
    bn_axis_name: str | None,
    name: str = "shard_map",
) -> tuple[dict, linen_train.TrainState]:
    """Linen under ``shard_map``; BN statistics global when ``bn_axis_name == "data"``, per
    replica when ``None``. Returns the records and the final state (stats ``(N, C)`` per BN)."""
    check_world_size(mesh.size, x.shape[1], available_workers())
    state = _linen_state(spec, variables, bn_axis_name)
    n = mesh.size
    state = state.replace(batch_stats=jax.tree.map(lambda a: jnp.stack([a] * n), state.batch_stats))
    step, out = shard_map_step(mesh, state), {}
    for k in range(len(x)):
        state, metrics = step(state, jnp.asarray(x[k], spec.dtype), jnp.asarray(y[k]))
        _record_step(out, f"{name}/{k}", metrics)
    return out, state


def sync_batch_stats(mesh: Mesh, stats: Any) -> Any:
    """``pmean`` per-replica running statistics (leading replica axis) over ``"data"``: what
    Flax's ImageNet example does before evaluating or checkpointing. Shapes are kept."""
    mean = jax.shard_map(lambda s: lax.pmean(s, AXIS), mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS))
    return jax.jit(mean)(stats)


@jax.jit
def _eval_stacked(state: linen_train.TrainState, stats: Any, x: jax.Array) -> jax.Array:
    one = lambda s: state.apply_fn({"params": state.params, "batch_stats": s}, x, train=False)  # noqa: E731
    return jax.vmap(one)(stats)


def eval_per_replica(state: linen_train.TrainState, stats: Any, x: np.ndarray) -> np.ndarray:
    """Eval-mode logits ``(N, B, classes)`` of ``x`` with each replica's statistics ``stats[r]``
    (leading replica axis, as :func:`run_shard_map` keeps them)."""
    return np.asarray(_eval_stacked(state, stats, jnp.asarray(x)))


@nnx.jit
def nnx_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> dict:
    """One NNX step in the model's own mode (train); returns the step's metrics."""

    def loss_of(m):
        logits = m(x)
        return nnx_train.loss_fn(logits, y), logits

    (loss, logits), grads = nnx.value_and_grad(loss_of, has_aux=True)(model)
    optimizer.update(model, grads)
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return {"loss": loss, "logits": logits, "grads": nnx.to_pure_dict(grads), "stats": stats}


def _nnx_model(spec: RunSpec, variables: dict) -> nnx.Module:
    model = nnx_models.build_model(spec.model, **spec.config)
    for col, kind in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
        state = nnx.state(model, kind)
        nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, spec.dtype), variables[col]))
        nnx.update(model, state)
    return model


def run_nnx_jit_sharded(
    spec: RunSpec, variables: dict, x: np.ndarray, y: np.ndarray, mesh: Mesh | None, name: str = "nnx_jit"
) -> dict:
    """NNX under ``nnx.jit``: model state replicated and batch sharded over ``mesh`` (``None``:
    one device, no placement)."""
    model = _nnx_model(spec, variables)
    put = lambda a, s: a  # noqa: E731
    if mesh is not None:
        check_world_size(mesh.size, x.shape[1], available_workers())
        put = lambda a, s: jax.device_put(a, NamedSharding(mesh, s))  # noqa: E731
        nnx.update(model, put(nnx.state(model), P()))
    optimizer, out = nnx_train.make_optimizer(model, spec.lr), {}
    for k in range(len(x)):
        metrics = nnx_step(model, optimizer, put(jnp.asarray(x[k], spec.dtype), P(AXIS)), put(y[k], P(AXIS)))
        _record_step(out, f"{name}/{k}", metrics)
    return out


def _nnx_replica_step(graphdef, rest, tx, params, stats, opt_state, x, y) -> tuple:
    """:func:`_replica_step` for NNX: merge the replica's module, differentiate the ``pmean``-ed
    loss with respect to the (replicated) params, update with optax. ``stats`` has a leading
    replica axis of 1; the returned statistics too."""

    def loss_of(p):
        model = nnx.merge(graphdef, p, jax.tree.map(lambda a: a[0], stats), rest)
        logits = model(x)
        return lax.pmean(nnx_train.loss_fn(logits, y), AXIS), (logits, nnx.state(model, nnx.BatchStat))

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    new_stats = jax.tree.map(lambda a: a[None], new_stats)
    metrics = {
        "loss": loss,
        "logits": logits,
        "grads": nnx.to_pure_dict(grads),
        "stats": nnx.to_pure_dict(new_stats),
    }
    return optax.apply_updates(params, updates), new_stats, opt_state, metrics


def run_nnx_shard_map(
    spec: RunSpec,
    variables: dict,
    x: np.ndarray,
    y: np.ndarray,
    mesh: Mesh,
    bn_axis_name: str | None,
    name: str = "nnx_shard_map",
) -> dict:
    """NNX under ``shard_map`` (split into graph and state, merged per replica); every
    ``nnx.BatchNorm`` gets ``axis_name=bn_axis_name`` (NNX modules are mutable, so no model
    field is needed). Same specs and records as :func:`run_shard_map`."""
    check_world_size(mesh.size, x.shape[1], available_workers())
    model = _nnx_model(spec, variables)
    for _, module in nnx.iter_graph(model):
        if isinstance(module, nnx.BatchNorm):
            module.axis_name = bn_axis_name
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    stats = jax.tree.map(lambda a: jnp.stack([a] * mesh.size), stats)
    tx = linen_train.make_optimizer(spec.lr)
    opt_state = tx.init(params)
    body = partial(_nnx_replica_step, graphdef, rest, tx)
    specs = (P(), P(AXIS), P(), P(AXIS), P(AXIS))
    metrics_spec = {"loss": P(), "logits": P(AXIS), "grads": P(), "stats": P(AXIS)}
    step = jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=(P(), P(AXIS), P(), metrics_spec))
    )
    out: dict = {}
    for k in range(len(x)):
        params, stats, opt_state, metrics = step(
            params, stats, opt_state, jnp.asarray(x[k], spec.dtype), jnp.asarray(y[k])
        )
        _record_step(out, f"{name}/{k}", metrics)
    return out


def _unflatten(flat: dict[str, np.ndarray], prefix: str) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        if key.startswith(prefix):
            *parents, leaf = key[len(prefix) :].split("/")
            node = tree
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
    return tree


def run_all(
    spec: RunSpec,
    variables: dict,
    x: np.ndarray,
    y: np.ndarray,
    x_eval: np.ndarray,
    n: int,
    nnx_shard_map: bool = False,
) -> dict:
    """Every Flax mode of this module on ``n`` devices, one record dict (see the module doc),
    plus ``eval/unsynced`` and ``eval/synced`` ``(N, B_eval, classes)``: eval-mode logits of
    ``x_eval`` with each replica's statistics after the per-replica ``shard_map`` run, before
    and after :func:`sync_batch_stats`. ``nnx_shard_map`` adds ``nnx_shard_map_axis`` and
    ``nnx_shard_map_no_axis`` (:func:`run_nnx_shard_map`)."""
    mesh = make_mesh(n)
    check_world_size(n, x.shape[1], available_workers())
    out = run_single(spec, variables, x, y)
    out.update(run_jit_sharded(spec, variables, x, y, mesh))
    out.update(run_nnx_jit_sharded(spec, variables, x, y, mesh))
    out.update(run_shard_map(spec, variables, x, y, mesh, AXIS, "shard_map_axis")[0])
    if nnx_shard_map:  # opt-in: tracing NNX per replica is the slowest run here (146 s wall, loaded box)
        out.update(run_nnx_shard_map(spec, variables, x, y, mesh, AXIS, "nnx_shard_map_axis"))
        out.update(run_nnx_shard_map(spec, variables, x, y, mesh, None, "nnx_shard_map_no_axis"))
    records, state = run_shard_map(spec, variables, x, y, mesh, None, "shard_map_no_axis")
    out.update(records)
    out["eval/unsynced"] = eval_per_replica(state, state.batch_stats, x_eval.astype(spec.dtype))
    synced = sync_batch_stats(mesh, state.batch_stats)
    out["eval/synced"] = eval_per_replica(state, synced, x_eval.astype(spec.dtype))
    return out


def main(argv: list[str]) -> int:
    """``python -m flax_impl.data_parallel SPEC.json DATA.npz OUT.npz``: :func:`run_all`.

    ``SPEC.json``: :class:`RunSpec` fields plus ``world_size`` (and optionally ``nnx_shard_map``); ``DATA.npz``: ``x``, ``y``,
    ``x_eval`` (channels-last) and the initial variables as ``params/...``, ``batch_stats/...``.
    ``OUT.npz`` is written whole or not at all. Exit 2 with one line on stderr on bad sizes.
    """
    if len(argv) != 3:
        print("usage: python -m flax_impl.data_parallel SPEC.json DATA.npz OUT.npz", file=sys.stderr)
        return 2
    spec_path, data_path, out_path = argv
    with open(spec_path) as f:
        raw = json.load(f)
    n, nnx_shard_map = raw.pop("world_size"), raw.pop("nnx_shard_map", False)
    if raw.get("dtype") == "float64":
        jax.config.update("jax_enable_x64", True)
    spec = RunSpec(**raw)
    with np.load(data_path) as d:
        data = dict(d)
    variables = {c: _unflatten(data, c + "/") for c in ("params", "batch_stats")}
    try:
        out = run_all(spec, variables, data["x"], data["y"], data["x_eval"], n, nnx_shard_map)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = out_path + ".tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
