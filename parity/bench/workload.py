"""The work every style does: one model's shared weights and batches, and its FLOPs per step."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from parity.bench.spec import INPUT_SHAPES, SEEDS, STYLES, BenchError, Runner, runner_class
from parity.defaults import LEARNING_RATE, MOMENTUM
from parity.registry import MODELS


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
    lr: float = LEARNING_RATE
    momentum: float = MOMENTUM

    @property
    def seeds(self) -> int:
        """Number of models in the ``vmap`` style."""
        return int(self.idx.shape[0])

    def model_config(self, dropout: float | None) -> dict:
        """Architecture keywords for ``build_model``: ``config`` plus ``dropout`` unless ``None``."""
        return self.config | ({} if dropout is None else {"dropout": dropout})


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
    lr: float = LEARNING_RATE,
    momentum: float = MOMENTUM,
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
    torch_model = build_model(model, seed=0, **config)
    sd = {k: v.detach().clone() for k, v in torch_model.state_dict().items()}
    rows = max(4 * batch_size, 1024)
    ds = synthetic(INPUT_SHAPES[model], n_train=rows, n_test=1, seed=0)
    idx = np.stack([_batch_indices(rows, batch_size, steps, s) for s in range(seeds)])
    x_cl = to_channels_last(ds.x_train)
    return Workload(
        model, batch_size, steps, device, sd, ds.x_train, x_cl, ds.y_train, idx, config, lr, momentum
    )


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

    def conv_macs(mod: nn.Module, out: torch.Tensor) -> int:
        return int(out[0].numel()) * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    def dense_macs(mod: nn.Module, out: torch.Tensor) -> int:
        return mod.in_features * mod.out_features

    count_of = {nn.Conv1d: conv_macs, nn.Conv2d: conv_macs, nn.Conv3d: conv_macs, nn.Linear: dense_macs}
    counts: list[tuple[str, int]] = []
    m = copy.deepcopy(model).cpu().eval()
    hooks = []
    for name, mod in m.named_modules():
        if type(mod) in count_of:
            count = count_of[type(mod)]
            hook = lambda mod, inp, out, name=name, count=count: counts.append((name, count(mod, out)))
            hooks.append(mod.register_forward_hook(hook))
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


def model_dropout(wl: Workload) -> float:
    """The largest dropout rate in ``wl``'s model (0.0 when it has no dropout)."""
    from torch import nn

    from torch_impl.models import build_model

    rates = [m.p for m in build_model(wl.model, **wl.config).modules() if isinstance(m, nn.Dropout)]
    return max(rates, default=0.0)


def make_runner(
    style: str,
    wl: Workload,
    steps: int,
    dropout: float | None,
    gate: bool = False,
    idx: np.ndarray | None = None,
) -> Runner:
    """A runner of ``style`` on ``wl``'s first ``steps`` batches, from ``wl``'s initial weights.

    ``dropout=None`` keeps the model's dropout; the gate passes ``0.0``. With ``gate=True`` the
    vmap style gives every seed seed 0's batches, so each of its models must match the reference.
    ``idx`` ``(seeds, steps, batch)`` replaces the workload's batch order (the dropout probe).
    """
    s = STYLES.get(style)
    cls = runner_class(style)
    idx = (wl.idx if idx is None else idx)[:, :steps]
    if not s.vmapped:
        idx = idx[0]
    elif gate:
        idx = np.broadcast_to(idx[0], idx.shape)
    return cls(wl, idx, dropout, **dict(s.options))
