"""The torch styles' runners: ``torch_eager``, ``torch_compile`` and ``torch_cudagraph``.

Batches are channels-first (NCHW / NCW), gathered on the device before timing.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from parity.bench.spec import Runner
from parity.bench.workload import Workload
from torch_impl.models import build_model
from torch_impl.train import make_optimizer, train_step


def _torch_model(wl: Workload, dropout: float | None) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model on ``wl``'s device in training mode, from ``wl``'s weights, and its SGD."""
    model = build_model(wl.model, seed=0, **wl.model_config(dropout))
    model.load_state_dict(wl.state_dict)
    model.to(torch.device(wl.device)).train()
    return model, make_optimizer(model, lr=wl.lr, momentum=wl.momentum)


def _torch_batches(wl: Workload, idx: np.ndarray) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` per step on the device: x ``(batch, *input_shape)`` NCHW / NCW, y ``(batch,)``."""
    dev = torch.device(wl.device)
    x = torch.from_numpy(wl.x).to(dev)
    y = torch.from_numpy(wl.y).long().to(dev)
    ii = torch.from_numpy(np.array(idx, np.int64)).to(dev)  # a copy: idx may be a read-only view
    return [(x[i], y[i]) for i in ii]


def _bn_stats(model: nn.Module) -> dict[str, np.ndarray]:
    """Every BatchNorm's running mean and variance, float64 on the host."""
    return {
        name: buf.detach().cpu().numpy().astype(np.float64)
        for name, buf in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }


class TorchLoopRunner(Runner):
    """``torch_eager`` and ``torch_compile``: ``train_step`` over pre-gathered device batches."""

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None, compiled: bool) -> None:
        self.model, self.opt = _torch_model(wl, dropout)
        self.fn = torch.compile(self.model, dynamic=False) if compiled else self.model
        self.batches = _torch_batches(wl, idx)
        self.device = wl.device

    def run(self) -> torch.Tensor:
        losses = torch.stack([train_step(self.fn, self.opt, x, y) for x, y in self.batches])
        if self.device == "cuda":
            torch.cuda.synchronize()
        return losses

    def bn_stats(self) -> dict[str, np.ndarray]:
        return _bn_stats(self.model)


class TorchCudaGraphRunner(Runner):
    """``torch_cudagraph``: one whole training step captured with ``torch.cuda.graph``.

    Follows PyTorch's "whole network capture" recipe: warm-up steps on a side stream (which also
    create SGD's momentum buffers), ``zero_grad(set_to_none=True)``, then capture of
    :func:`torch_impl.train.train_step` so the gradients live in the graph's memory pool. Each
    replay reads the static input tensors, filled with ``copy_`` per step. The warm-up changed
    the weights, so the initial weights are copied back in place (addresses kept) and the
    momentum buffers zeroed: with ``dampening=0`` a zero buffer gives exactly SGD's first step
    (``buf = 0.9 * 0 + g = g``). The capture uses ``capture_error_mode="thread_local"``: jax runs
    in the same process, and the default ("global") mode would make any CUDA call jax's threads
    make during the capture an error.
    """

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        t0 = time.perf_counter()
        self.model, self.opt = _torch_model(wl, dropout)
        self.batches = _torch_batches(wl, idx)
        self.static_x = self.batches[0][0].clone()
        self.static_y = self.batches[0][1].clone()
        initial = {k: v.clone() for k, v in self.model.state_dict().items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                train_step(self.model, self.opt, self.static_x, self.static_y)
        torch.cuda.current_stream().wait_stream(side)
        self.opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.static_loss = train_step(self.model, self.opt, self.static_x, self.static_y)
        with torch.no_grad():
            self.model.load_state_dict(initial)  # in place: the graph keeps its addresses
            for state in self.opt.state.values():
                state["momentum_buffer"].zero_()
        torch.cuda.synchronize()
        self.prepare_s = time.perf_counter() - t0

    def run(self) -> torch.Tensor:
        losses = []
        for x, y in self.batches:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
            losses.append(self.static_loss.clone())
        out = torch.stack(losses)
        torch.cuda.synchronize()
        return out

    def bn_stats(self) -> dict[str, np.ndarray]:
        return _bn_stats(self.model)
