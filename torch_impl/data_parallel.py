"""Data-parallel training steps in PyTorch: ``DistributedDataParallel`` over gloo (CPU) or nccl.

Mirrors ``flax_impl/data_parallel.py``: same function names, same record layout. A run trains
the same model from the same seed for ``K`` steps on ``K`` global batches; rank ``r`` of ``N``
takes rows ``[r*B/N, (r+1)*B/N)`` of each global batch of ``B`` rows (channels-first, NCHW /
NCW). Each rank records, per step ``k``, under ``{variant}/{k}/...``:

* ``logits``: its shard's ``(B/N, classes)`` logits (training-mode forward);
* ``loss``: its shard's mean loss;
* ``grad/<param>``: the gradient DDP leaves in ``.grad`` (already averaged over ranks);
* ``stat/<bn>.running_mean`` / ``.running_var``: the BN buffers after the step;
* ``training``: 1.0 if every BN layer was in train mode during the step, else 0.0.

:func:`run_single` records the same keys for one process on the whole batch, so a rank's record
and the single-process record compare key by key (logits: rank shards concatenated).

Workers are started with ``torch.multiprocessing`` (forkserver); the rendezvous uses a free port
on 127.0.0.1; every wait is bounded, and a worker that dies is reported by rank. ``device``
picks the backend (:data:`BACKENDS`): gloo ranks on the CPU, or nccl with rank ``r`` on GPU
``r``, ``nn.SyncBatchNorm`` and float32 without TF32 (the strict policy of ``parity.device``).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from parity.defaults import LEARNING_RATE
from torch_impl import train as torch_train
from torch_impl.models import build_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: the process-group backend per device: gloo for CPU tensors, nccl for CUDA ones
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}

#: Workers are forked from a server that imported this module (and torch) once, so a launch
#: costs no torch import (measured 9.5 s per import on the loaded 2-core box); ``spawn`` would
#: re-import per worker, plain ``fork`` would copy a parent that may run jax's threads.
START_METHOD = "forkserver"
#: DDP's constructor imports ``torch._dynamo`` (818 modules, 9-13 s on the loaded box) on first
#: use; the server imports it once instead of every worker.
FORKSERVER_PRELOAD = ("torch._dynamo",)


class WorkerError(RuntimeError):
    """A data-parallel worker died, raised or did not finish in time; the message names the rank."""


@dataclass(frozen=True)
class Variant:
    """One way to train data-parallel.

    ``sync_bn``: convert BN layers with ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    ``broadcast_buffers``: DDP's flag (default ``True`` in DDP): rank 0's buffers are copied to
    every rank at each forward. ``eval_rank`` / ``eval_after``: the seed's bug per rank: after
    step ``eval_after`` rank ``eval_rank`` evaluates with :func:`torch_impl.train.evaluate`
    (which leaves ``model.eval()`` on) and the loop never calls ``model.train()`` again.
    """

    name: str
    sync_bn: bool = True
    broadcast_buffers: bool = False
    eval_rank: int | None = None
    eval_after: int = 0


@dataclass(frozen=True)
class RunSpec:
    """The model, its seed and the optimizer shared by every variant of a run."""

    model: str = "digits"
    config: dict = field(default_factory=lambda: {"channels": (4, 8), "hidden": 16, "dropout": 0.0})
    seed: int = 0
    lr: float = LEARNING_RATE
    dtype: str = "float32"


def available_workers(device: str = "cpu") -> int:
    """How many ranks ``device`` supports: the CUDA device count, or the CPU cores for gloo."""
    if device == "cuda":
        return torch.cuda.device_count()
    return os.cpu_count() or 1


def check_world_size(world_size: int, global_batch: int, available: int) -> None:
    """Raise ``ValueError`` naming the numbers if ``world_size`` cannot split ``global_batch``
    or exceeds the ``available`` workers. Called before any process starts."""
    if world_size < 1:
        raise ValueError(f"world size must be at least 1, got {world_size}")
    if world_size > available:
        raise ValueError(f"world size {world_size} is larger than the {available} workers available")
    if global_batch % world_size:
        raise ValueError(
            f"global batch {global_batch} is not divisible by world size {world_size} "
            f"(remainder {global_batch % world_size})"
        )


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bn_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _host(t: torch.Tensor) -> np.ndarray:
    """A copy of ``t`` as a host numpy array (from any device)."""
    return t.detach().cpu().numpy().copy()


def _record_step(out: dict, prefix: str, model: nn.Module, logits: torch.Tensor, loss: torch.Tensor) -> None:
    """Store one step's logits, loss, gradients, BN buffers and mode under ``prefix``."""
    out[f"{prefix}/logits"] = _host(logits)
    out[f"{prefix}/loss"] = np.asarray(loss.item())
    for name, p in model.named_parameters():
        out[f"{prefix}/grad/{name}"] = _host(p.grad)
    bns = _bn_layers(model)
    for name, m in bns.items():
        out[f"{prefix}/stat/{name}.running_mean"] = _host(m.running_mean)
        out[f"{prefix}/stat/{name}.running_var"] = _host(m.running_var)
    out[f"{prefix}/training"] = np.asarray(float(all(m.training for m in bns.values())))


def _train_steps(
    wrapped: nn.Module, model: nn.Module, x: np.ndarray, y: np.ndarray, name: str, lr: float, on_step=None
) -> dict:
    """``K`` SGD steps of ``wrapped`` (the DDP wrapper or the model itself) on ``x[k]``, ``y[k]``
    (host arrays, moved to the model's device per step).

    ``model`` is the underlying module (names without DDP's ``module.`` prefix). ``on_step(k)``
    runs after step ``k`` is recorded. Returns ``{name/k/...: array}``.
    """
    out: dict = {}
    device = next(model.parameters()).device
    optimizer = torch_train.make_optimizer(model, lr=lr)
    wrapped.train()
    for k in range(len(x)):
        optimizer.zero_grad(set_to_none=True)
        logits = wrapped(torch.from_numpy(x[k]).to(device))
        loss = torch_train.loss_fn(logits, torch.from_numpy(y[k]).long().to(device))
        loss.backward()
        _record_step(out, f"{name}/{k}", model, logits, loss)
        optimizer.step()
        if on_step is not None:
            on_step(k)
    return out


def build(spec: RunSpec, device: torch.device | str = "cpu") -> nn.Module:
    """The seeded torch model of ``spec`` in ``spec.dtype``, on ``device`` (built on the CPU
    first, so its weights do not depend on the device)."""
    return build_model(spec.model, seed=spec.seed, **spec.config).to(device, DTYPES[spec.dtype])


def strict_float32() -> None:
    """No TF32 in cuDNN convolutions or matmuls (``parity.device``'s strict policy, which this
    module cannot import): on GPUs the ranks then compute like the CPU reference."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def run_single(spec: RunSpec, x: np.ndarray, y: np.ndarray, device: str = "cpu") -> dict:
    """One process, whole global batches: ``x`` is ``(K, B, C, H, W)`` (or ``(K, B, C, W)``),
    on ``device`` (``"cpu"`` or ``"cuda"``: the first GPU, strict float32)."""
    if device == "cuda":
        strict_float32()
    model = build(spec, device)
    return _train_steps(model, model, x.astype(spec.dtype), y, "single", spec.lr)


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable SUM all-reduce (its backward all-reduces the gradient). torch 2.13 marks
    ``torch.distributed.nn.functional.all_reduce`` deprecated in favour of the private
    ``torch.distributed._functional_collectives.all_reduce`` (which registers the same
    backward); this keeps the public API and silences only that warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_reduce", FutureWarning)
        return dist_nn.all_reduce(t)


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Cross-rank BatchNorm for CPU tensors, on ``torch.distributed.nn.functional.all_reduce``.

    ``nn.SyncBatchNorm`` refuses CPU input ("SyncBatchNorm expected input tensor to be on GPU")
    and DDP refuses it in CPU modules, so gloo needs this one; on GPUs :func:`convert_sync_bn`
    uses ``nn.SyncBatchNorm``. Same semantics: in train mode the batch mean and biased variance
    are over the *global* batch (two passes, each one differentiable SUM all-reduce, so the
    backward sums every rank's contribution like ``nn.SyncBatchNorm``'s); ``running_var`` gets
    the unbiased variance over the global count ``n``. Eval mode is plain BatchNorm.
    Input ``(N, C, ...)`` channels-first.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype)
        n = _sum_over_ranks(count)  # no gradient flows into the count
        mean = _sum_over_ranks(x.sum(dims)) / n
        centred = x - mean.reshape(shape)
        var = _sum_over_ranks((centred * centred).sum(dims)) / n
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
            self.num_batches_tracked.add_(1)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        return out * self.weight.reshape(shape) + self.bias.reshape(shape)


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """Every BatchNorm of ``model`` synchronised over the default process group: the real
    ``nn.SyncBatchNorm`` on GPU models, :class:`GlooSyncBatchNorm` on CPU ones (weights and
    buffers copied). Returns the converted model (the same object on CPU)."""
    if next(model.parameters()).device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, bn in list(_bn_layers(model).items()):
        sync = GlooSyncBatchNorm(bn.num_features, bn.eps, bn.momentum).to(bn.weight.dtype)
        sync.load_state_dict(bn.state_dict())
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], sync)
    return model


def _wrap(spec: RunSpec, variant: Variant, device: torch.device) -> tuple[DistributedDataParallel, nn.Module]:
    model = build(spec, device)
    if variant.sync_bn:
        model = convert_sync_bn(model)
    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():  # torch 2.13: "`broadcast_buffers` is deprecated", still honoured
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        wrapped = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=variant.broadcast_buffers)
    return wrapped, model


def _rank_steps(
    spec: RunSpec, variant: Variant, x: np.ndarray, y: np.ndarray, rank: int, device: torch.device
) -> dict:
    """Train ``variant`` on this rank's shard ``x`` ``(K, B/N, ...)``; see the module doc."""
    wrapped, model = _wrap(spec, variant, device)

    def leave_eval_on(k: int) -> None:  # the seed's bug on one rank: test() leaves eval() on
        if rank == variant.eval_rank and k == variant.eval_after:
            torch_train.evaluate(model, x[k], y[k], device)

    return _train_steps(wrapped, model, x, y, variant.name, spec.lr, leave_eval_on)


def _worker(
    rank: int,
    world_size: int,
    port: int,
    spec: RunSpec,
    variants: tuple,
    data: str,
    out_dir: str,
    timeout_s: float,
    device_type: str,
) -> None:
    """One rank: join the group (:data:`BACKENDS`), train every variant on its shard, write
    ``rank{r}.npz``. On ``cuda`` rank ``r`` uses GPU ``r``."""
    torch.set_num_threads(1)
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        strict_float32()
    dist.init_process_group(
        BACKENDS[device_type],
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        with np.load(data) as d:
            x, y = d["x"], d["y"]
        shard = x.shape[1] // world_size
        rows = slice(rank * shard, (rank + 1) * shard)
        x, y = x[:, rows].astype(spec.dtype), y[:, rows]
        out: dict = {}
        for variant in variants:
            out.update(_rank_steps(spec, variant, x, y, rank, device))
        tmp = os.path.join(out_dir, f".rank{rank}.tmp.npz")
        np.savez(tmp, **out)
        os.replace(tmp, os.path.join(out_dir, f"rank{rank}.npz"))
    finally:
        dist.destroy_process_group()


@dataclass
class Launch:
    """Running workers: the process context, their result folder and the deadline to join by."""

    context: mp.ProcessContext
    out_dir: tempfile.TemporaryDirectory
    world_size: int
    deadline: float


def start_ddp(
    spec: RunSpec,
    variants: tuple[Variant, ...],
    x: np.ndarray,
    y: np.ndarray,
    world_size: int,
    timeout_s: float = 120.0,
    available: int | None = None,
    device: str = "cpu",
) -> Launch:
    """Check the sizes, then start ``world_size`` workers (gloo ranks on ``"cpu"``, nccl ranks
    on the GPUs for ``"cuda"``) on ``x`` ``(K, B, ...)``, ``y`` ``(K, B)``.

    Raises ``ValueError`` before anything starts when ``B`` is not divisible by ``world_size`` or
    ``world_size`` exceeds ``available`` (default :func:`available_workers` of ``device``).
    """
    if device not in BACKENDS:
        raise ValueError(f"unknown device {device!r}; choose from {', '.join(BACKENDS)}")
    check_world_size(world_size, x.shape[1], available_workers(device) if available is None else available)
    out_dir = tempfile.TemporaryDirectory(prefix="ddp-")
    data = os.path.join(out_dir.name, "batches.npz")
    np.savez(data, x=x, y=y)
    args = (world_size, free_port(), spec, variants, data, out_dir.name, timeout_s, device)
    ctx = mp.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        ctx.set_forkserver_preload([__name__, *FORKSERVER_PRELOAD])
    context = mp.start_processes(_worker, args=args, nprocs=world_size, join=False, start_method=START_METHOD)
    return Launch(context, out_dir, world_size, time.monotonic() + timeout_s)


def _stop(context: mp.ProcessContext) -> None:
    for p in context.processes:
        if p.is_alive():
            p.kill()
        p.join(timeout=5)


def _wait(launch: Launch) -> None:
    try:
        while not launch.context.join(timeout=0.5):
            if time.monotonic() > launch.deadline:
                alive = [r for r, p in enumerate(launch.context.processes) if p.is_alive()]
                raise WorkerError(
                    f"rank(s) {alive} of {launch.world_size} did not finish before the deadline"
                )
    except mp.ProcessExitedException as e:
        how = f"signal {e.signal_name}" if e.signal_name else f"exit code {e.exit_code}"
        raise WorkerError(f"rank {e.error_index} of {launch.world_size} died ({how})") from None
    except mp.ProcessRaisedException as e:
        last = str(e).strip().splitlines()[-1]
        raise WorkerError(f"rank {e.error_index} of {launch.world_size} raised: {last}") from None


def join_ddp(launch: Launch) -> list[dict]:
    """Wait (bounded by the launch's deadline) and return each rank's record, rank order.

    Raises :class:`WorkerError` naming the rank that died or raised, or the ranks still running
    at the deadline; every worker is stopped and the result folder removed first.
    """
    try:
        _wait(launch)
        records = []
        for rank in range(launch.world_size):
            with np.load(os.path.join(launch.out_dir.name, f"rank{rank}.npz")) as d:
                records.append(dict(d))
        return records
    finally:
        _stop(launch.context)
        launch.out_dir.cleanup()


def run_ddp(
    spec: RunSpec,
    variants: tuple[Variant, ...],
    x: np.ndarray,
    y: np.ndarray,
    world_size: int,
    timeout_s: float = 120.0,
    available: int | None = None,
    device: str = "cpu",
) -> list[dict]:
    """:func:`start_ddp` then :func:`join_ddp`: one record per rank."""
    return join_ddp(start_ddp(spec, variants, x, y, world_size, timeout_s, available, device))
