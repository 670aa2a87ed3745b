"""``parity bench``: training steps per second per framework and execution style.

Every style trains the same model (one torch initialisation, converted with
:mod:`parity.convert`) on the same synthetic batches, with BatchNorm in training mode and
dropout on; a step is forward, backward and the SGD-with-momentum update.

Styles (:data:`STYLES`):

* ``torch_eager``: :func:`torch_impl.train.train_step` in a Python loop; the reference.
* ``torch_compile``: the same loop around ``torch.compile(model)`` (the optimizer stays eager).
* ``torch_cudagraph``: the whole step (forward, backward, ``optimizer.step()``) captured once
  with ``torch.cuda.graph`` and replayed; GPU only.
* ``linen_jit``: :func:`flax_impl.linen_train.train_step` (``jax.jit``) in a Python loop.
* ``linen_scan``: :func:`flax_impl.linen_train.train_epoch_scan`, all steps in one ``lax.scan`` with
  the data on the device.
* ``linen_vmap_scan``: :func:`flax_impl.linen_train.train_epoch_scan_seeds`, the scan ``vmap``-ed over
  ``--seeds`` (8) models; its rate is in model-steps per second (seeds x steps / time).
* ``nnx_jit``: :func:`flax_impl.nnx_train.train_step` (``nnx.jit``) in a Python loop.
* ``nnx_split``: NNX's functional API: ``nnx.split((model, optimizer))`` once, a ``jax.jit``
  step on ``(graphdef, state)`` that merges, steps and returns the new state.

Method (what :func:`benchmark` does for each model, batch size and style):

1. **Correctness gate.** Under ``strict`` precision and with dropout off (models built with
   ``dropout=0.0``, the only way two frameworks' steps can be compared: their dropout random
   streams differ), the style's first :data:`GATE_STEPS` losses must match ``torch_eager``'s
   within a relative :data:`GATE_RTOL`. A style that fails is reported ``failed`` and not timed.
   ``--quick`` gates each style once per model, at its first batch size.
2. **Warm-up.** A fresh runner with the model's own dropout runs one full repeat; its extra time
   over the fastest timed repeat is reported as ``compile_s`` (plus graph capture for CUDA
   graphs).
3. **Timing.** ``repeats`` repeats of ``steps`` steps, each ended by a device synchronisation
   (``torch.cuda.synchronize`` / ``block_until_ready``); steps/s = steps / seconds; the median,
   min and max are reported. Batches are gathered on the device before timing.

Styles that cannot run here (CUDA graphs on CPU) or would blow a run's time budget
(:func:`skip_reason`) are reported ``skipped`` with the reason; a style that raises is reported
``error`` and the others still run.

FLOPs per step are counted analytically (:func:`train_flops_per_example`) and compared with
the device's peak, measured with a large float32 matmul under the same precision
(:func:`measure_peak`).

Tensors: torch gets channels-first batches (NCHW / NCW), Flax channels-last (NHWC / NWC) via
:func:`parity.layout.to_channels_last`; both index the same rows.
"""

from __future__ import annotations

import copy
import datetime
import functools
import io
import math
import os
import platform
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from parity.registry import FRAMEWORKS, MODELS

INPUT_SHAPES = {"digits": (1, 8, 8), "signal1d": (1, 40)}  # per example, channels-first

#: Losses of the first GATE_STEPS steps are compared with torch eager's.
GATE_STEPS = 3
#: Relative tolerance of the gate. Two float32 implementations that sum the same products in a
#: different order differ by a few ulps per operation (float32 eps is 1.2e-7); after three SGD
#: steps through four conv/dense layers and three BatchNorms we measure 0 to 2e-7 between the
#: frameworks on CPU. 1e-4 leaves orders of magnitude for GPU kernels (cuDNN picks other
#: algorithms) while real defects land well outside it (measured, default models, batch 128):
#: a 2x learning rate 2.5e-3 to 3e-3, SGD without its momentum 1e-3, another seed's initial
#: weights 5e-3 to 6e-2.
GATE_RTOL = 1e-4
SEEDS = 8


@dataclass(frozen=True)
class Style:
    """An execution style: ``framework`` is torch/linen/nnx; ``unit`` of its rate."""

    name: str
    framework: str
    unit: str
    description: str


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style("torch_eager", "torch", "steps/s", "torch_impl.train.train_step in a Python loop (reference)"),
        Style("torch_compile", "torch", "steps/s", "torch.compile(model), eager optimizer, Python loop"),
        Style("torch_cudagraph", "torch", "steps/s", "whole step captured with torch.cuda.graph, replayed"),
        Style("linen_jit", "linen", "steps/s", "flax_impl.linen_train.train_step (jax.jit) in a Python loop"),
        Style(
            "linen_scan", "linen", "steps/s", "flax_impl.linen_train.train_epoch_scan: steps in one lax.scan"
        ),
        Style(
            "linen_vmap_scan", "linen", "model-steps/s", "train_epoch_scan_seeds: the scan vmap-ed over seeds"
        ),
        Style("nnx_jit", "nnx", "steps/s", "flax_impl.nnx_train.train_step (nnx.jit) in a Python loop"),
        Style("nnx_split", "nnx", "steps/s", "nnx.split once, jax.jit step on (graphdef, state)"),
    )
}
#: Styles that run all steps of a repeat in one ``lax.scan`` (slow on XLA:CPU, see BENCHMARKS.md).
SCAN_STYLES = ("linen_scan", "linen_vmap_scan")

#: Targets from the issue (one H100/H200, digits, batch 128, float32); checked on cuda runs.
GPU_TARGETS = {
    "torch_best": 3000.0,
    "linen_best": 6000.0,
    "linen_vmap_scan": 12000.0,
    "large_batch_pct_peak": 40.0,
}


class BenchError(ValueError):
    """Bad benchmark input: unknown model or style, bad batch size, unusable output path."""


# ------------------------------------------------------------------------------------- FLOPs


def forward_macs(model, input_shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """Multiply-accumulates per example of every conv and dense layer of a torch ``model``.

    ``input_shape`` is one example, channels-first (e.g. ``(1, 8, 8)``). A conv costs
    ``output elements x (in_channels / groups) x kernel volume``, a dense layer
    ``in_features x out_features``. Shapes come from one forward pass (eval mode, batch 1, on a
    copy) with hooks; the counts themselves are these formulas. Returns ``[(name, macs)]`` in
    execution order.
    """
    import torch
    from torch import nn

    counts: list[tuple[str, int]] = []
    m = copy.deepcopy(model).cpu().eval()
    hooks = []
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):

            def conv_hook(mod, inp, out, name=name):
                per_out = (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
                counts.append((name, int(out[0].numel()) * per_out))

            hooks.append(mod.register_forward_hook(conv_hook))
        elif isinstance(mod, nn.Linear):

            def dense_hook(mod, inp, out, name=name):
                counts.append((name, mod.in_features * mod.out_features))

            hooks.append(mod.register_forward_hook(dense_hook))
    try:
        with torch.no_grad():
            m(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
    return counts


def train_flops_per_example(model, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one training step per example: ``6 F - 2 F_first``.

    ``F`` is the forward MAC count (:func:`forward_macs`). Forward is ``2F`` FLOPs (a MAC is two
    FLOPs), the weight gradients another ``2F``, the input gradients ``2F`` less the first
    layer's (the data needs no gradient). Ignored: BatchNorm, ReLU, pooling, softmax/loss, bias
    adds and the optimizer update, all O(activations) or O(parameters) and a few percent here.
    """
    macs = forward_macs(model, input_shape)
    total = sum(m for _, m in macs)
    first = macs[0][1] if macs else 0
    return 6 * total - 2 * first


# -------------------------------------------------------------------------------- peak rate


def measure_peak(device: str, precision: str, n: int | None = None, repeats: int = 5) -> dict:
    """Measured float32 matmul rate (TFLOP/s) of torch and jax on ``device``.

    ``n x n`` matrices (default 8192 on cuda, 1024 on cpu); the best of ``repeats`` timed calls
    after a warm-up, each synchronised. ``strict`` measures true float32. ``default`` measures
    with TF32 allowed in torch (the policy lets cuDNN convolutions, where these models spend
    their FLOPs, use TF32) and jax's default matmul precision. On CPU the two are the same.
    Returns ``{"n", "torch_tflops", "jax_tflops", "tflops"}`` (``tflops`` the larger).
    """
    import jax
    import jax.numpy as jnp
    import torch

    n = n or (8192 if device == "cuda" else 1024)
    flops = 2.0 * n**3
    tdev = torch.device(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "default" and device == "cuda"
    try:
        g = torch.Generator(device=tdev).manual_seed(0)
        a = torch.randn(n, n, generator=g, device=tdev)
        b = torch.randn(n, n, generator=g, device=tdev)
        (a @ b).sum().item()
        best = math.inf
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            c = a @ b
            sync()
            best = min(best, time.perf_counter() - t0)
        del c
        torch_tflops = flops / best / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32
    del a, b
    ja, jb = jax.random.normal(jax.random.key(0), (2, n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(ja, jb).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(ja, jb).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    jax_tflops = flops / best / 1e12
    return {
        "n": n,
        "torch_tflops": torch_tflops,
        "jax_tflops": jax_tflops,
        "tflops": max(torch_tflops, jax_tflops),
    }


# ---------------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    """One model at one batch size: the shared initial weights and the shared batches.

    ``state_dict`` is the torch initialisation (``build_model(model, seed=0)``), the source of
    every style's weights. ``x`` is ``(rows, *input_shape)`` float32 channels-first (NCHW / NCW),
    ``x_cl`` the same rows channels-last (NHWC / NWC), ``y`` ``(rows,)`` int32. ``idx`` is
    ``(seeds, steps, batch_size)``: seed ``s``'s batch order (:func:`parity.data.batch_order`);
    single-model styles use seed 0's.
    """

    model: str
    batch_size: int
    steps: int
    device: str
    state_dict: dict
    x: np.ndarray
    x_cl: np.ndarray
    y: np.ndarray
    idx: np.ndarray
    config: dict = field(default_factory=dict)
    lr: float = 0.05
    momentum: float = 0.9

    @property
    def seeds(self) -> int:
        """Number of models in the ``vmap`` style."""
        return int(self.idx.shape[0])


def _batch_indices(n: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
    """``(steps, batch_size)`` row indices: seed ``seed``'s epochs, concatenated."""
    from parity.data import batch_order

    out: list[np.ndarray] = []
    epoch = 0
    while len(out) < steps:
        out.extend(batch_order(n, batch_size, seed, epoch))
        epoch += 1
    return np.stack(out[:steps])


def make_workload(
    model: str,
    batch_size: int,
    steps: int,
    device: str = "cpu",
    seeds: int = SEEDS,
    config: dict | None = None,
    lr: float = 0.05,
    momentum: float = 0.9,
) -> Workload:
    """Build the :class:`Workload` for ``model`` at ``batch_size``.

    Data is :func:`parity.data.synthetic` with ``max(4 x batch_size, 1024)`` rows. ``config``
    overrides architecture widths (e.g. ``channels=(4, 8), hidden=16`` in tests), never dropout.
    """
    from parity.data import synthetic
    from parity.layout import to_channels_last
    from torch_impl.models import build_model

    if model not in MODELS:
        raise BenchError(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    if batch_size < 2:
        raise BenchError(f"batch size must be >= 2 (BatchNorm needs a batch), got {batch_size}")
    config = dict(config or {})
    if "dropout" in config:
        raise BenchError("config sets dropout itself: the benchmark trains with the model's dropout")
    sd = {k: v.detach().clone() for k, v in build_model(model, seed=0, **config).state_dict().items()}
    rows = max(4 * batch_size, 1024)
    ds = synthetic(INPUT_SHAPES[model], n_train=rows, n_test=1, seed=0)
    idx = np.stack([_batch_indices(rows, batch_size, steps, s) for s in range(seeds)])
    return Workload(
        model,
        batch_size,
        steps,
        device,
        sd,
        ds.x_train,
        to_channels_last(ds.x_train),
        ds.y_train,
        idx,
        config,
        lr,
        momentum,
    )


# ----------------------------------------------------------------------------------- runners
#
# A runner owns one training state and one index array ``(steps, batch)`` (``(seeds, steps,
# batch)`` for vmap). ``run()`` trains through all of them once from where it is, synchronises
# the device and returns the per-step losses (device values). ``prepare_s`` is time spent on
# compilation-like work in the constructor (graph capture), 0 elsewhere.


def _model_config(wl: Workload, dropout: float | None) -> dict:
    return wl.config | ({} if dropout is None else {"dropout": dropout})


def _torch_model(wl: Workload, dropout: float | None):
    import torch

    from torch_impl.models import build_model
    from torch_impl.train import make_optimizer

    model = build_model(wl.model, seed=0, **_model_config(wl, dropout))
    model.load_state_dict(wl.state_dict)
    model.to(torch.device(wl.device)).train()
    return model, make_optimizer(model, lr=wl.lr, momentum=wl.momentum)


def _torch_batches(wl: Workload, idx: np.ndarray) -> list:
    import torch

    dev = torch.device(wl.device)
    x = torch.from_numpy(wl.x).to(dev)
    y = torch.from_numpy(wl.y).long().to(dev)
    ii = torch.from_numpy(np.asarray(idx, np.int64)).to(dev)
    return [(x[i], y[i]) for i in ii]


def _torch_sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


class _TorchLoop:
    """``torch_eager`` and ``torch_compile``: ``train_step`` over pre-gathered device batches."""

    prepare_s = 0.0

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None, compiled: bool) -> None:
        import torch

        self.model, self.opt = _torch_model(wl, dropout)
        self.fn = torch.compile(self.model, dynamic=False) if compiled else self.model
        self.batches = _torch_batches(wl, idx)
        self.device = wl.device

    def run(self):
        import torch

        from torch_impl.train import train_step

        losses = torch.stack([train_step(self.fn, self.opt, x, y) for x, y in self.batches])
        _torch_sync(self.device)
        return losses


class _TorchCudaGraph:
    """``torch_cudagraph``: one whole training step captured with ``torch.cuda.graph``.

    Follows PyTorch's "whole network capture" recipe: warm-up steps on a side stream (which also
    create SGD's momentum buffers), ``zero_grad(set_to_none=True)``, then capture of
    :func:`torch_impl.train.train_step` so the gradients live in the graph's memory pool. Each
    replay reads the static input tensors, filled with ``copy_`` per step. The warm-up changed
    the weights, so the initial weights are copied back in place (addresses kept) and the
    momentum buffers zeroed: with ``dampening=0`` a zero buffer gives exactly SGD's first step
    (``buf = 0.9 * 0 + g = g``).
    """

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        import torch

        from torch_impl.train import train_step

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
        with torch.cuda.graph(self.graph):
            self.static_loss = train_step(self.model, self.opt, self.static_x, self.static_y)
        with torch.no_grad():
            self.model.load_state_dict(initial)  # in place: the graph keeps its addresses
            for state in self.opt.state.values():
                state["momentum_buffer"].zero_()
        torch.cuda.synchronize()
        self.prepare_s = time.perf_counter() - t0

    def run(self):
        import torch

        losses = []
        for x, y in self.batches:
            self.static_x.copy_(x)
            self.static_y.copy_(y)
            self.graph.replay()
            losses.append(self.static_loss.clone())
        out = torch.stack(losses)
        torch.cuda.synchronize()
        return out


def _linen_state(wl: Workload, dropout: float | None, seeds: int | None = None):
    import jax

    from flax_impl import linen_models
    from flax_impl import linen_train as ftrain
    from parity.convert import torch_to_linen
    from torch_impl.models import build_model

    template = build_model(wl.model, **wl.config)
    variables = jax.device_put(torch_to_linen(wl.state_dict, template))
    model = linen_models.build_model(wl.model, **_model_config(wl, dropout))
    tx = ftrain.make_optimizer(wl.lr, wl.momentum)
    if seeds is None:
        return ftrain.create_train_state(model, variables, tx)
    return ftrain.create_seed_states(model, [variables] * seeds, tx)


def _jax_data(wl: Workload):
    import jax.numpy as jnp

    return jnp.asarray(wl.x_cl), jnp.asarray(wl.y)


def _jax_batches(wl: Workload, idx: np.ndarray) -> list:
    import jax

    x, y = _jax_data(wl)
    return jax.block_until_ready([(x[i], y[i]) for i in np.asarray(idx)])


class _LinenJit:
    """``linen_jit``: :func:`flax_impl.linen_train.train_step` over pre-gathered device batches; step
    ``i`` uses dropout key ``fold_in(key(0), i)`` as :func:`flax_impl.linen_train.fit` does."""

    prepare_s = 0.0

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        import jax

        self.state = _linen_state(wl, dropout)
        self.batches = _jax_batches(wl, idx)
        rng = jax.random.key(0)
        self.keys = jax.block_until_ready([jax.random.fold_in(rng, i) for i in range(len(self.batches))])

    def run(self):
        import jax

        from flax_impl.linen_train import train_step

        losses = []
        for batch, key in zip(self.batches, self.keys):
            self.state, metrics = train_step(self.state, batch, key)
            losses.append(metrics["loss"])
        return jax.block_until_ready((self.state, losses))[1]


class _LinenScan:
    """``linen_scan``: :func:`flax_impl.linen_train.train_epoch_scan`; data and indices on the device."""

    prepare_s = 0.0

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        import jax
        import jax.numpy as jnp

        self.state = _linen_state(wl, dropout)
        self.x, self.y = _jax_data(wl)
        self.idx = jnp.asarray(idx)
        self.rng = jax.random.key(0)

    def run(self):
        import jax

        from flax_impl.linen_train import train_epoch_scan

        self.state, metrics = train_epoch_scan(self.state, self.x, self.y, self.idx, self.rng)
        return jax.block_until_ready((self.state, metrics["loss"]))[1]


class _LinenVmapScan:
    """``linen_vmap_scan``: :func:`flax_impl.linen_train.train_epoch_scan_seeds` over ``seeds`` copies
    of the same converted weights; seed ``s`` has its own batch order and dropout key."""

    prepare_s = 0.0

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        import jax
        import jax.numpy as jnp

        self.states = _linen_state(wl, dropout, seeds=idx.shape[0])
        self.x, self.y = _jax_data(wl)
        self.idx = jnp.asarray(idx)
        self.rngs = jax.random.split(jax.random.key(0), idx.shape[0])

    def run(self):
        import jax

        from flax_impl.linen_train import train_epoch_scan_seeds

        self.states, metrics = train_epoch_scan_seeds(self.states, self.x, self.y, self.idx, self.rngs)
        return jax.block_until_ready((self.states, metrics["loss"]))[1]


def _nnx_model(wl: Workload, dropout: float | None):
    from flax_impl import nnx_models
    from flax_impl.nnx_train import make_optimizer
    from parity.convert import torch_to_nnx
    from torch_impl.models import build_model

    model = nnx_models.build_model(wl.model, seed=0, **_model_config(wl, dropout))
    torch_to_nnx(wl.state_dict, build_model(wl.model, **wl.config), model)
    model.train()
    return model, make_optimizer(model, lr=wl.lr, momentum=wl.momentum)


class _NnxJit:
    """``nnx_jit``: :func:`flax_impl.nnx_train.train_step` (``nnx.jit``) per step."""

    prepare_s = 0.0

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        self.model, self.opt = _nnx_model(wl, dropout)
        self.batches = _jax_batches(wl, idx)

    def run(self):
        import jax

        from flax_impl.nnx_train import train_step

        losses = [train_step(self.model, self.opt, x, y)["loss"] for x, y in self.batches]
        return jax.block_until_ready(losses)


@functools.cache
def _nnx_functional_step() -> Callable:
    """The jitted ``(graphdef, state, x, y) -> (state, loss)`` of NNX's functional API.

    ``graphdef`` is static (a pytree without leaves); ``state`` holds the parameters, batch
    statistics, optimizer state and the dropout rng counter, and is donated.
    """
    import jax
    from flax import nnx

    from flax_impl.nnx_train import loss_fn

    def step(graphdef, state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(m(x), y))(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    return jax.jit(step, donate_argnums=1)


class _NnxSplit:
    """``nnx_split``: ``nnx.split((model, optimizer))`` once, then a plain ``jax.jit`` step."""

    prepare_s = 0.0

    def __init__(self, wl: Workload, idx: np.ndarray, dropout: float | None) -> None:
        from flax import nnx

        model, opt = _nnx_model(wl, dropout)
        self.graphdef, self.state = nnx.split((model, opt))
        self.batches = _jax_batches(wl, idx)

    def run(self):
        import jax

        step = _nnx_functional_step()
        losses = []
        for x, y in self.batches:
            self.state, loss = step(self.graphdef, self.state, x, y)
            losses.append(loss)
        return jax.block_until_ready((self.state, losses))[1]


def make_runner(style: str, wl: Workload, steps: int, dropout: float | None, gate: bool = False):
    """A runner of ``style`` on ``wl``'s first ``steps`` batches, from ``wl``'s initial weights.

    ``dropout=None`` keeps the model's dropout; the gate passes ``0.0``. With ``gate=True`` the
    vmap style gives every seed seed 0's batches, so each of its models must match the reference.
    """
    idx = wl.idx[:, :steps]
    one = idx[0]
    if style == "torch_eager":
        return _TorchLoop(wl, one, dropout, compiled=False)
    if style == "torch_compile":
        return _TorchLoop(wl, one, dropout, compiled=True)
    if style == "torch_cudagraph":
        return _TorchCudaGraph(wl, one, dropout)
    if style == "linen_jit":
        return _LinenJit(wl, one, dropout)
    if style == "linen_scan":
        return _LinenScan(wl, one, dropout)
    if style == "linen_vmap_scan":
        return _LinenVmapScan(wl, np.broadcast_to(one, idx.shape) if gate else idx, dropout)
    if style == "nnx_jit":
        return _NnxJit(wl, one, dropout)
    if style == "nnx_split":
        return _NnxSplit(wl, one, dropout)
    raise BenchError(f"unknown style {style!r}; choose from {', '.join(STYLES)}")


def _to_numpy(losses) -> np.ndarray:
    if hasattr(losses, "detach"):
        return losses.detach().cpu().numpy().astype(np.float64)
    return np.asarray(losses, dtype=np.float64)


# ---------------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Gate:
    """The correctness gate of one style: its first losses against the reference's."""

    passed: bool
    max_rel_err: float
    losses: list
    reference: list
    rtol: float = GATE_RTOL
    steps: int = GATE_STEPS


def reference_losses(wl: Workload, steps: int = GATE_STEPS) -> np.ndarray:
    """``torch_eager``'s first ``steps`` losses with dropout off: the gate's reference."""
    return _to_numpy(make_runner("torch_eager", wl, steps, dropout=0.0).run())


def check_gate(style: str, wl: Workload, reference: np.ndarray, rtol: float = GATE_RTOL) -> Gate:
    """Run ``style`` for ``len(reference)`` steps with dropout off and compare its losses.

    Passes when every loss is finite and ``max |loss - ref| / |ref| <= rtol`` (for the vmap style,
    over every seed).
    """
    steps = len(reference)
    losses = _to_numpy(make_runner(style, wl, steps, dropout=0.0, gate=True).run())
    err = np.abs(losses - reference) / np.abs(reference)
    max_err = float(np.max(err)) if np.all(np.isfinite(losses)) else math.inf
    return Gate(bool(max_err <= rtol), max_err, losses.tolist(), reference.tolist(), rtol, steps)


# --------------------------------------------------------------------------------- timing


def time_runner(runner, repeats: int, units: int) -> dict:
    """Warm up with one ``run()``, then time ``repeats`` runs; ``units`` steps (or model-steps)
    per run. Returns ``{"median", "min", "max", "runs", "compile_s", "seconds"}`` (rates in units
    per second). ``compile_s`` is the runner's ``prepare_s`` plus the first run's excess over the
    fastest timed run: the compilation (and first-call) cost the rates leave out."""
    t0 = time.perf_counter()
    runner.run()
    first = time.perf_counter() - t0
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.run()
        seconds.append(time.perf_counter() - t0)
    rates = [units / s for s in seconds]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "runs": rates,
        "seconds": seconds,
        "compile_s": runner.prepare_s + max(first - min(seconds), 0.0),
    }


def skip_reason(
    style: str, device: str, quick: bool, batch_size: int = 128, explicit: bool = False
) -> str | None:
    """Why ``style`` cannot or should not run here, or ``None`` when it runs.

    Styles that cannot run (CUDA graphs on CPU, torch.compile without a C++ compiler) are always
    skipped. Styles that would only blow the time budget (torch.compile in ``--quick``; on CPU
    the scan styles in ``--quick`` and the vmap style at batch >= 1024) are skipped unless
    ``explicit`` (named in ``--styles``).
    """
    if style == "torch_cudagraph" and device != "cuda":
        return f"CUDA graphs need a CUDA GPU (device is {device})"
    if style == "torch_compile" and device == "cpu":
        cxx = [c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)]
        if not cxx:
            return "torch.compile on CPU needs a C++ compiler (no g++, c++ or clang++ on PATH)"
    if explicit:
        return None
    if style == "torch_compile" and quick:
        return (
            "not in --quick: Inductor compiles every model and batch size twice (gate and "
            "timing); one compile took ~45 s with a cold cache on the 2-core dev box; run "
            "without --quick"
        )
    if device != "cpu":
        return None
    if style == "linen_vmap_scan" and batch_size >= 1024:
        return (
            "not by default on CPU at batch >= 1024: vmap x8 of the scanned step ran at "
            "0.2 model-steps/s on the 2-core dev box (minutes per repeat); name it in --styles "
            "to run it anyway"
        )
    if style in SCAN_STYLES and quick:
        return (
            "not in --quick on CPU: XLA:CPU runs a scanned conv step 5-50x slower than a "
            "jitted one (see BENCHMARKS.md); run without --quick to measure it"
        )
    return None


# ------------------------------------------------------------------------------- benchmark


@dataclass
class BenchConfig:
    """What :func:`benchmark` measures. ``steps=None`` picks :func:`default_steps`."""

    models: Sequence[str] = MODELS
    batch_sizes: Sequence[int] = (128, 1024, 8192)
    styles: Sequence[str] = tuple(STYLES)
    device: str = "auto"
    precision: str = "strict"
    repeats: int = 5
    steps: int | None = None
    seeds: int = SEEDS
    quick: bool = False
    config: dict = field(default_factory=dict)
    peak_n: int | None = None
    torch_threads: int | None = None
    explicit_styles: bool = False  # styles named by the user: run even if slow on this device


def default_steps(device: str, batch_size: int, quick: bool, style: str | None = None) -> int:
    """Steps per repeat: a fixed number of examples per repeat, clamped.

    cuda: ``262144 / batch`` in [20, 500] (quick: ``65536 / batch`` in [10, 100]); cpu:
    ``2560 / batch`` in [3, 20] (quick: ``512 / batch`` in [2, 4]), and a quarter of that (at
    least 2) for the scan styles, whose steps run 5-50x slower on XLA:CPU. A repeat then lasts
    roughly 0.05-2 s on an H100 and 0.2-5 s on the 2-core dev box.
    """
    if device == "cuda":
        budget, lo, hi = (65536, 10, 100) if quick else (262144, 20, 500)
    else:
        budget, lo, hi = (512, 2, 4) if quick else (2560, 3, 20)
    steps = max(lo, min(hi, budget // batch_size))
    if device == "cpu" and style in SCAN_STYLES:
        steps = max(2, steps // 4)
    return steps


def validate(models: Sequence[str], styles: Sequence[str], batch_sizes: Sequence[int]) -> None:
    """Raise :class:`BenchError` naming the choices for an unknown model or style."""
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise BenchError(
            f"unknown model(s) {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(MODELS)}"
        )
    bad = [s for s in styles if s not in STYLES]
    if bad or not styles:
        raise BenchError(
            f"unknown style(s) {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(STYLES)}"
        )
    bad_b = [b for b in batch_sizes if b < 2]
    if bad_b or not batch_sizes:
        raise BenchError(f"batch sizes must be integers >= 2, got {list(batch_sizes)}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine(runtime) -> dict:
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": runtime.settings.get("torch_device_name") if runtime.device == "cuda" else None,
    }


def benchmark(cfg: BenchConfig, progress: Callable[[str, int], None] | None = None) -> dict:
    """Measure every (model, batch size, style) of ``cfg``; return the report (JSON-ready).

    ``progress(description, advance)`` is told before and after each unit of work. Raises
    :class:`parity.device.DeviceError` for ``cuda`` without a GPU and :class:`BenchError` for
    bad names.
    """
    import torch

    from parity.device import configure, library_versions
    from torch_impl.models import build_model

    validate(cfg.models, cfg.styles, cfg.batch_sizes)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    runtime = configure(cfg.device, "strict")
    device = runtime.device
    timing_runtime = runtime if cfg.precision == "strict" else configure(device, cfg.precision)
    note = progress or (lambda desc, adv: None)

    note("measuring matmul peak", 0)
    peak = measure_peak(device, cfg.precision, cfg.peak_n)
    results: list[dict] = []
    gates: dict[tuple[str, str], dict] = {}  # --quick: one gate per model and style
    for model in cfg.models:
        flops_ex = train_flops_per_example(build_model(model, **cfg.config), INPUT_SHAPES[model])
        for batch in cfg.batch_sizes:
            steps = {s: cfg.steps or default_steps(device, batch, cfg.quick, s) for s in cfg.styles}
            wl = make_workload(model, batch, max(*steps.values(), GATE_STEPS), device, cfg.seeds, cfg.config)
            configure(device, "strict")
            note(f"{model} b{batch}: reference", 0)
            ref = reference_losses(wl)
            for style in cfg.styles:
                note(f"{model} b{batch}: {style}", 0)
                row = measure_style(
                    style,
                    wl,
                    ref,
                    cfg.repeats,
                    cfg.precision,
                    cfg.quick,
                    steps[style],
                    cfg.explicit_styles,
                    gates.get((model, style)) if cfg.quick else None,
                )
                if row["gate"] is not None:
                    gates.setdefault((model, style), row["gate"])
                row["flops_per_step"] = flops_ex * batch
                if row["status"] == "ok":
                    row["tflops"] = row["flops_per_step"] * row["rate"]["median"] / 1e12
                    row["pct_peak"] = 100.0 * row["tflops"] / peak["tflops"]
                results.append(row)
                note(f"{model} b{batch}: {style}", 1)
    configure(device, cfg.precision)
    mark_fastest(results)
    report = {
        "schema": "parity-bench/1",
        "date": datetime.date.today().isoformat(),
        "device": device,
        "precision": cfg.precision,
        "settings": timing_runtime.settings,
        "machine": _machine(runtime),
        "versions": library_versions(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "config": {
            "models": list(cfg.models),
            "batch_sizes": list(cfg.batch_sizes),
            "styles": list(cfg.styles),
            "repeats": cfg.repeats,
            "steps": cfg.steps,
            "seeds": cfg.seeds,
            "quick": cfg.quick,
            "gate_steps": GATE_STEPS,
            "torch_threads": torch.get_num_threads(),
            "gate_rtol": GATE_RTOL,
            "model_config": cfg.config,
        },
        "peak": peak,
        "styles": {name: STYLES[name].description for name in cfg.styles},
        "results": results,
        "summary": summarize(results),
    }
    if device == "cuda":
        report["targets"] = check_targets(report)
    report["wall_s"] = time.perf_counter() - started
    return report


def measure_style(
    style: str,
    wl: Workload,
    reference: np.ndarray,
    repeats: int,
    precision: str = "strict",
    quick: bool = False,
    steps: int | None = None,
    explicit: bool = False,
    gate: dict | None = None,
) -> dict:
    """Gate, then time, one style on ``wl`` (``steps`` per repeat, default ``wl.steps``); a
    JSON-ready row.

    ``status`` is ``ok``, ``failed`` (the gate; not timed), ``skipped`` (``reason`` says why) or
    ``error`` (an exception; ``reason`` has it). The gate runs under ``strict`` precision, the
    timing under ``precision``. ``gate``: the verdict of an earlier gate of this style and model
    (a row's ``gate``, which names its batch size) to reuse instead of gating again.
    """
    from parity.device import configure

    s = STYLES[style]
    steps = steps or wl.steps
    if steps > wl.steps:
        raise BenchError(f"{steps} steps requested but the workload has batches for {wl.steps}")
    row: dict[str, Any] = {
        "model": wl.model,
        "batch_size": wl.batch_size,
        "style": style,
        "framework": s.framework,
        "unit": s.unit,
        "steps": steps,
        "repeats": repeats,
        "status": "ok",
        "reason": None,
        "gate": None,
        "rate": None,
        "compile_s": None,
        "fastest": False,
    }
    reason = skip_reason(style, wl.device, quick, wl.batch_size, explicit)
    if reason:
        return row | {"status": "skipped", "reason": reason}
    try:
        if gate is None:
            configure(wl.device, "strict")
            gate = asdict(check_gate(style, wl, reference)) | {
                "reference_style": "torch_eager",
                "batch_size": wl.batch_size,
            }
        row["gate"] = gate
        if not gate["passed"]:
            return row | {
                "status": "failed",
                "reason": (
                    f"gate: losses differ from torch_eager's by {gate['max_rel_err']:.3g} relative "
                    f"(tolerance {gate['rtol']:g}) over the first {gate['steps']} steps at batch "
                    f"{gate['batch_size']}"
                ),
            }
        if precision != "strict":
            configure(wl.device, precision)
        runner = make_runner(style, wl, steps, dropout=None)
        units = steps * (wl.seeds if style == "linen_vmap_scan" else 1)
        timing = time_runner(runner, repeats, units)
        del runner
    except Exception as e:
        return row | {"status": "error", "reason": f"{type(e).__name__}: {e}"}
    row["compile_s"] = timing.pop("compile_s")
    row["rate"] = timing
    return row


def mark_fastest(results: list[dict]) -> None:
    """Set ``fastest`` on the best single-model style per framework, model and batch size
    (the vmap style counts several models per step and is not a candidate)."""
    best: dict[tuple, dict] = {}
    for r in results:
        if r["status"] != "ok" or r["unit"] != "steps/s":
            continue
        key = (r["model"], r["batch_size"], r["framework"])
        if key not in best or r["rate"]["median"] > best[key]["rate"]["median"]:
            best[key] = r
    for r in best.values():
        r["fastest"] = True


def _best(rows: list[dict], framework: str) -> dict | None:
    ok = [r for r in rows if r["framework"] == framework and r["fastest"]]
    return ok[0] if ok else None


def summarize(results: list[dict]) -> list[dict]:
    """Per model and batch size: the best style per framework and the ratios
    ``torch_best / linen_best``, ``vmap / linen_scan`` and ``vmap / linen_best``."""
    out = []
    keys = list(dict.fromkeys((r["model"], r["batch_size"]) for r in results))
    for model, batch in keys:
        rows = [r for r in results if (r["model"], r["batch_size"]) == (model, batch)]
        entry: dict[str, Any] = {"model": model, "batch_size": batch}
        for fw in FRAMEWORKS:
            b = _best(rows, fw)
            entry[f"{fw}_best"] = {"style": b["style"], "rate": b["rate"]["median"]} if b else None
        by_style = {r["style"]: r for r in rows if r["status"] == "ok"}
        rate = lambda s: by_style[s]["rate"]["median"] if s in by_style else None
        tb, lb = entry["torch_best"], entry["linen_best"]
        entry["torch_over_linen"] = tb["rate"] / lb["rate"] if tb and lb else None
        vm, sc = rate("linen_vmap_scan"), rate("linen_scan")
        entry["vmap_over_scan"] = vm / sc if vm and sc else None
        entry["vmap_over_linen_best"] = vm / lb["rate"] if vm and lb else None
        out.append(entry)
    return out


def check_targets(report: dict) -> list[dict]:
    """The issue's GPU targets (digits, batch 128; the largest batch for % of peak) against
    this run: ``[{"target", "value", "threshold", "met"}]`` (``value`` None when not measured)."""
    summ = {(s["model"], s["batch_size"]): s for s in report["summary"]}
    d128 = summ.get(("digits", 128), {})
    vmap = [
        r
        for r in report["results"]
        if (r["model"], r["batch_size"], r["style"], r["status"]) == ("digits", 128, "linen_vmap_scan", "ok")
    ]
    big = max((r["batch_size"] for r in report["results"]), default=None)
    pct = [
        r["pct_peak"]
        for r in report["results"]
        if r["batch_size"] == big and r["status"] == "ok" and r.get("fastest")
    ]
    values = {
        "torch_best": (d128.get("torch_best") or {}).get("rate"),
        "linen_best": (d128.get("linen_best") or {}).get("rate"),
        "linen_vmap_scan": vmap[0]["rate"]["median"] if vmap else None,
        "large_batch_pct_peak": max(pct) if pct else None,
    }
    return [
        {
            "target": k,
            "value": values[k],
            "threshold": t,
            "met": None if values[k] is None else bool(values[k] >= t),
        }
        for k, t in GPU_TARGETS.items()
    ]


# ---------------------------------------------------------------------------------- output


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:.2f}"


def format_report(report: dict) -> str:
    """The report as Markdown: header, results table (``*`` marks the fastest single-model
    style per framework), ratio table and, on cuda, the targets."""
    v = report["versions"]
    m = report["machine"]
    where = m["gpu"] or f"{m['cpu']}, {m['cores']} cores"
    pk = report["peak"]
    lines = [
        f"parity bench: device {report['device']} ({where}), precision {report['precision']}, "
        f"{report['date']}",
        f"versions: torch {v['torch']}, jax {v['jax']}, flax {v['flax']}, optax {v['optax']}, "
        f"numpy {v['numpy']}; torch threads {report['config']['torch_threads']}",
        f"measured float32 matmul peak ({pk['n']}x{pk['n']}): torch {pk['torch_tflops']:.3g} TFLOP/s, "
        f"jax {pk['jax_tflops']:.3g} TFLOP/s; load average before/after: "
        f"{report['load_average']['before'][0]:.2f} / {report['load_average']['after'][0]:.2f}",
        "",
        "| model | batch | style | rate (median) | min | max | unit | compile s | TFLOP/s | % peak | gate |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        head = f"| {r['model']} | {r['batch_size']} | {r['style']}{' *' if r['fastest'] else ''} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status'].upper()} | | | | | | | {r['reason']} |")
            continue
        g = r["gate"]
        at = "" if g.get("batch_size", r["batch_size"]) == r["batch_size"] else f" at batch {g['batch_size']}"
        gate = "reference" if r["style"] == "torch_eager" else f"ok ({g['max_rel_err']:.1e}{at})"
        rt = r["rate"]
        lines.append(
            f"{head} {_fmt_rate(rt['median'])} | {_fmt_rate(rt['min'])} | {_fmt_rate(rt['max'])} "
            f"| {r['unit']} | {r['compile_s']:.2f} | {r['tflops']:.3g} | {r['pct_peak']:.1f} | {gate} |"
        )
    lines += [
        "",
        "`*` fastest single-model style per framework; vmap rates are model-steps/s "
        f"({report['config']['seeds']} models per step).",
        "",
        "| model | batch | torch best | Linen best | NNX best | torch/Linen | vmap/scan | vmap/Linen best |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    ratio = lambda x: "-" if x is None else f"{x:.2f}"
    best = lambda b: "-" if b is None else f"{b['style']} {_fmt_rate(b['rate'])}"
    for s in report["summary"]:
        lines.append(
            f"| {s['model']} | {s['batch_size']} | {best(s['torch_best'])} | {best(s['linen_best'])} "
            f"| {best(s['nnx_best'])} | {ratio(s['torch_over_linen'])} | {ratio(s['vmap_over_scan'])} "
            f"| {ratio(s['vmap_over_linen_best'])} |"
        )
    if "targets" in report:
        lines += [
            "",
            "| target (digits, batch 128; % peak at the largest batch) | value | threshold | met |",
            "|---|---:|---:|---|",
        ]
        for t in report["targets"]:
            val = "-" if t["value"] is None else f"{t['value']:,.1f}"
            lines.append(f"| {t['target']} | {val} | {t['threshold']:,.0f} | {t['met']} |")
    lines += ["", f"wall time {report['wall_s']:.1f} s"]
    return "\n".join(lines)


_COLORS = {
    "torch_eager": "#f4a261",
    "torch_compile": "#e76f51",
    "torch_cudagraph": "#9c2f1a",
    "linen_jit": "#8ecae6",
    "linen_scan": "#219ebc",
    "linen_vmap_scan": "#023047",
    "nnx_jit": "#95d5b2",
    "nnx_split": "#2d6a4f",
}


def plot_report(report: dict, path: str) -> None:
    """Grouped bar chart (log scale) of median rates with min-max whiskers: one panel per model,
    one group of bars per batch size, one colour per style, the fastest per framework outlined
    and starred, skipped/failed styles labelled. Written atomically; the format follows
    ``path``'s extension (PNG, SVG, PDF)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from parity.io import atomic_write_bytes

    results = report["results"]
    models = list(dict.fromkeys(r["model"] for r in results))
    styles = list(dict.fromkeys(r["style"] for r in results))
    n_batches = max(len({r["batch_size"] for r in results if r["model"] == m}) for m in models)
    fig, axes = plt.subplots(
        len(models),
        1,
        squeeze=False,
        figsize=(max(7.0, 1.5 + 0.55 * len(styles) * n_batches), 1.2 + 3.6 * len(models)),
    )
    width = 0.8 / max(1, len(styles))
    ok = [r for r in results if r["status"] == "ok"]
    lo = min((r["rate"]["min"] for r in ok), default=1.0) / 3
    hi = max((r["rate"]["max"] for r in ok), default=10.0) * 6
    for ax, model in zip(axes[:, 0], models):
        rows = [r for r in results if r["model"] == model]
        batches = list(dict.fromkeys(r["batch_size"] for r in rows))
        for i, b in enumerate(batches):
            for j, style in enumerate(styles):
                r = next((r for r in rows if (r["style"], r["batch_size"]) == (style, b)), None)
                xpos = i + (j - (len(styles) - 1) / 2) * width
                if r is None:
                    continue
                if r["status"] != "ok":
                    ax.text(
                        xpos,
                        0.03,
                        r["status"],
                        rotation=90,
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        color="dimgray",
                        transform=ax.get_xaxis_transform(),
                    )
                    continue
                rt = r["rate"]
                ax.bar(
                    xpos,
                    rt["median"],
                    width * 0.92,
                    color=_COLORS.get(style, "gray"),
                    yerr=[[rt["median"] - rt["min"]], [rt["max"] - rt["median"]]],
                    capsize=2,
                    edgecolor="black",
                    linewidth=1.2 if r["fastest"] else 0.0,
                )
                ax.text(
                    xpos,
                    rt["max"] * 1.12,
                    _fmt_rate(rt["median"]) + (" *" if r["fastest"] else ""),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                )
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
        ax.set_title(model, fontsize=10)
        ax.set_ylabel("steps/s (log)")
        ax.grid(axis="y", which="major", alpha=0.4)
    handles = [plt.Rectangle((0, 0), 1, 1, color=_COLORS.get(s, "gray")) for s in styles]
    labels = [s + (" (model-steps/s)" if STYLES[s].unit != "steps/s" else "") for s in styles]
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(styles)), fontsize=8, frameon=False)
    m = report["machine"]
    fig.suptitle(
        f"parity bench, {report['device']} ({m['gpu'] or m['cpu']}), {report['precision']} float32, "
        f"{report['date']}\nmedian of {report['config']['repeats']} repeats, whiskers min-max, "
        "* fastest per framework",
        fontsize=9,
    )
    legend_in = 0.15 + 0.2 * math.ceil(len(styles) / 4)  # inches kept free for the legend
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    buf = io.BytesIO()
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    fig.savefig(buf, format=ext, dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ------------------------------------------------------------------------------------- CLI


def write_outputs(report: dict, json_path: str | None = None, plot_path: str | None = None) -> None:
    """Write the report as strict JSON (:func:`parity.io.json_safe`) and/or the chart, each atomically."""
    from parity.io import atomic_write_json

    if json_path:
        atomic_write_json(json_path, report, indent=2)
    if plot_path:
        plot_report(report, plot_path)
