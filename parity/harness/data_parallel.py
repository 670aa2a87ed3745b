"""Data-parallel parity: torch DDP (gloo) and Flax ``jit`` / ``shard_map`` against one device.

Same global batches, same converted weights. :func:`run_torch` and :func:`run_flax` produce the
per-step records of ``torch_impl.data_parallel`` / ``flax_impl.data_parallel``; the ``compare_*``
functions reduce two records to the largest relative L2 difference (``||a - b|| / ||b||``, see
:func:`parity.harness.compare.rel_l2`) per kind of tensor, over every step, rank and tensor:

* ``logits``: training-mode forward (rank shards concatenated);
* ``grad``: the gradient the optimizer applies;
* ``running_mean`` / ``running_var``: BN running statistics after each step (torch keeps the
  unbiased variance over the global count, Flax the biased one: :func:`compare_torch_flax`
  converts Flax's history exactly with :func:`parity.harness.compare.unbiased_running_var`).

The four checks: (1) DDP + SyncBN == torch single process; (2) Linen/NNX ``jit`` + sharded batch
== single device; (3) Linen ``shard_map`` + ``bn_axis_name`` == (2); (4) DDP + SyncBN == Linen
``jit`` + sharded batch through the converter. Flax runs in a child process because simulated
CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``) must be set before jax starts;
with ``device="cuda"`` the child uses the first ``N`` GPUs instead (float32 matmuls and
convolutions at ``highest`` precision, no preallocation) and torch uses nccl ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from flax_impl import data_parallel as flax_dp
from parity import convert, data
from parity.harness.compare import rel_l2, unbiased_running_var, values_per_channel
from parity.layout import to_channels_last
from parity.registry import MODEL_DATASET
from torch_impl import data_parallel as torch_dp

REPO = Path(__file__).resolve().parents[2]
KINDS = ("logits", "grad", "running_mean", "running_var")


def check_rows(model: str, steps: int, batch: int) -> None:
    """Raise ``ValueError`` when ``steps`` batches of ``batch`` rows exceed ``model``'s training split."""
    n, have = steps * batch, len(data.load(MODEL_DATASET[model]).x_train)
    if n > have:
        raise ValueError(f"{steps} steps of {batch} need {n} rows; {MODEL_DATASET[model]} has {have}")


def model_batches(
    model: str, steps: int, batch: int, eval_rows: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``steps * batch`` training rows of ``model``'s dataset as ``(K, B, C, ...)``
    channels-first float32 (NCHW for digits, NCW for signal1d) and ``(K, B)`` int64 labels,
    plus ``eval_rows`` test rows ``(E, C, ...)``."""
    check_rows(model, steps, batch)
    ds = data.load(MODEL_DATASET[model])
    n = steps * batch
    x = ds.x_train[:n].reshape(steps, batch, *ds.x_train.shape[1:])
    return x, ds.y_train[:n].reshape(steps, batch).astype(np.int64), ds.x_test[:eval_rows]


def digits_batches(steps: int, batch: int, eval_rows: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`model_batches` of the digits model (NCHW ``(K, B, 1, 8, 8)``)."""
    return model_batches("digits", steps, batch, eval_rows)


def initial_variables(spec: torch_dp.RunSpec) -> dict:
    """The torch model's initial weights of ``spec``, converted to Linen ``{'params', 'batch_stats'}``."""
    template = torch_dp.build_model(spec.model, seed=spec.seed, **spec.config)
    return convert.torch_to_linen(template.state_dict(), template)


def run_flax(
    spec: torch_dp.RunSpec,
    x: np.ndarray,
    y: np.ndarray,
    x_eval: np.ndarray,
    world_size: int,
    dtype: str = "float32",
    timeout_s: float = 300.0,
    nnx_shard_map: bool = False,
    device: str = "cpu",
) -> dict:
    """:func:`flax_impl.data_parallel.run_all` on ``world_size`` devices (simulated CPU devices,
    or with ``device="cuda"`` the first GPUs) in a child process, from the converted initial
    weights of ``spec``. ``x``/``x_eval`` channels-first (converted here); ``nnx_shard_map`` adds
    the NNX ``shard_map`` runs. Raises ``RuntimeError`` with the child's last stderr line on
    failure."""
    flax_dp.check_world_size(world_size, x.shape[1], world_size)  # before any process starts
    flax_spec = flax_dp.RunSpec(spec.model, dict(spec.config), spec.lr, dtype)
    flat = convert.flatten_tree(initial_variables(spec))
    x_cl = np.stack([to_channels_last(b) for b in x])
    with tempfile.TemporaryDirectory(prefix="flax-dp-") as tmp:
        paths = [os.path.join(tmp, name) for name in ("spec.json", "data.npz", "out.npz")]
        with open(paths[0], "w") as f:
            json.dump({**asdict(flax_spec), "world_size": world_size, "nnx_shard_map": nnx_shard_map}, f)
        np.savez(paths[1], x=x_cl, y=y, x_eval=to_channels_last(x_eval), **flat)
        env = flax_child_env(world_size, device)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        cmd = [sys.executable, "-m", "flax_impl.data_parallel", *paths]
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode:
            lines = proc.stderr.strip().splitlines() or ["(no stderr)"]
            raise RuntimeError(f"flax data-parallel run failed (exit {proc.returncode}): {lines[-1]}")
        with np.load(paths[2]) as d:
            return dict(d)


def flax_child_env(world_size: int, device: str) -> dict[str, str]:
    """The environment of :func:`run_flax`'s child: ``world_size`` simulated CPU devices on the
    CPU; on ``cuda`` the GPUs, strict float32 (jax's ``highest`` matmul precision, the strict
    policy of :mod:`parity.device`) and no preallocation (torch's ranks share the GPUs)."""
    env = dict(os.environ)
    if device == "cuda":
        env |= {"JAX_PLATFORMS": "cuda", "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
        env |= {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
        return env
    flags = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={world_size}"
    return env | {"XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}


def _gap(got: np.ndarray, want: np.ndarray) -> float:
    """:func:`rel_l2` of two arrays of one shape (never a silent broadcast)."""
    if np.shape(got) != np.shape(want):
        raise ValueError(f"cannot compare shapes {np.shape(got)} and {np.shape(want)}")
    return rel_l2(got, want)


def _steps(record: dict, name: str) -> int:
    return len({k.split("/")[1] for k in record if k.startswith(name + "/")})


def _kind(key: str) -> str | None:
    if "/grad/" in key:
        return "grad"
    if key.endswith(("running_mean", "/mean")):
        return "running_mean"
    if key.endswith(("running_var", "/var")):
        return "running_var"
    return None


def compare_records(
    views: list[dict], name: str, ref: dict, ref_name: str, concat_logits: bool = True
) -> dict[str, float]:
    """Largest relative L2 gap per kind between each view (a rank, or a replica) of run ``name``
    and run ``ref_name`` of ``ref``, keys alike. Logits: the views' shards concatenated in order
    (``concat_logits``), or the first view's when they are already global."""
    worst = dict.fromkeys(KINDS, 0.0)
    for k in range(_steps(ref, ref_name)):
        shards = [v[f"{name}/{k}/logits"] for v in (views if concat_logits else views[:1])]
        worst["logits"] = max(worst["logits"], _gap(np.concatenate(shards), ref[f"{ref_name}/{k}/logits"]))
        for key, want in ref.items():
            kind = _kind(key)
            if kind is None or not key.startswith(f"{ref_name}/{k}/"):
                continue
            got_key = f"{name}/{k}/" + key.split("/", 2)[2]
            for v in views:
                worst[kind] = max(worst[kind], _gap(v[got_key], want))
    return worst


def replica_views(out: dict, name: str) -> list[dict]:
    """One view per replica of a Flax run: ``shard_map`` statistics ``(N, C)`` indexed by
    replica; other runs have one replicated state, hence one view."""
    run = {k: v for k, v in out.items() if k.startswith(name + "/")}
    if "shard_map" not in name:
        return [run]
    n = next(v.shape[0] for k, v in run.items() if "/stat/" in k)
    return [{k: (v[r] if "/stat/" in k else v) for k, v in run.items()} for r in range(n)]


def compare_flax(out: dict, name: str, ref_name: str = "single") -> dict[str, float]:
    """:func:`compare_records` between two runs of one :func:`run_flax` output."""
    return compare_records(replica_views(out, name), name, out, ref_name, concat_logits=False)


def replica_spread(views: list[dict], name: str) -> dict[str, float]:
    """Largest relative L2 gap of each view's (rank's, replica's) running statistics from the
    first view's over the steps of run ``name``: 0 when all hold the same statistics."""
    worst = {"running_mean": 0.0, "running_var": 0.0}
    for key, want in views[0].items():
        kind = _kind(key)
        if key.startswith(name + "/") and kind in worst:
            for v in views[1:]:
                worst[kind] = max(worst[kind], _gap(v[key], want))
    return worst


def _flax_tree(out: dict, prefix: str) -> dict:
    """The nested tree of the ``prefix``-ed, ``/``-joined keys of ``out``, the prefix removed."""
    return convert.unflatten_tree({k[len(prefix) :]: v for k, v in out.items() if k.startswith(prefix)})


def compare_torch_flax(
    ranks: list[dict],
    name: str,
    out: dict,
    flax_name: str,
    spec: torch_dp.RunSpec,
    x0: np.ndarray,
    per_replica: bool = False,
) -> dict[str, float]:
    """Check 4: torch run ``name`` (every rank) against Flax run ``flax_name`` through the
    converter. Flax gradients go to torch layout with :func:`parity.convert.params_to_torch`;
    Flax's biased running variances become torch's unbiased ones with
    :func:`unbiased_running_var` (exact algebra) over the count of ``x0`` ``(B, C, H, W)``, the
    global batch. ``per_replica``: rank r is compared with Flax replica r's statistics, counted
    over one shard of ``x0`` (the unsynchronised twins, rows 10 and 12 of MODE_BUGS.md)."""
    template = torch_dp.build_model(spec.model, seed=spec.seed, **spec.config)
    counts = values_per_channel(template, x0[: len(x0) // len(ranks)] if per_replica else x0)
    init = initial_variables(spec)["batch_stats"]
    views = replica_views(out, flax_name)
    worst = dict.fromkeys(KINDS, 0.0)
    for k in range(_steps(out, flax_name)):
        logits = np.concatenate([r[f"{name}/{k}/logits"] for r in ranks])
        worst["logits"] = max(worst["logits"], _gap(logits, out[f"{flax_name}/{k}/logits"]))
        grads = convert.params_to_torch(_flax_tree(out, f"{flax_name}/{k}/grad/"), template)
        for rank, r in enumerate(ranks):
            view = views[rank if per_replica else 0]
            for param, value in grads.items():
                worst["grad"] = max(worst["grad"], _gap(r[f"{name}/{k}/grad/{param}"], value))
            for bn, n in counts.items():
                history = [init[bn]["var"]] + [view[f"{flax_name}/{j}/stat/{bn}/var"] for j in range(k + 1)]
                want = {
                    "running_mean": view[f"{flax_name}/{k}/stat/{bn}/mean"],
                    "running_var": unbiased_running_var(history, n),
                }
                for kind, value in want.items():
                    worst[kind] = max(worst[kind], _gap(r[f"{name}/{k}/stat/{bn}.{kind}"], value))
    return worst
