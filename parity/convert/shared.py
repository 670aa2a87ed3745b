"""Tensors that are shared: tied weights in torch, one torch tensor copied to several Flax leaves,
and buffers a forward pass may or may not update.

* :func:`tied_keys`: state keys that name the same tensor as an earlier key
  (``lm_head.weight is wte.weight``), alias -> first key;
* :func:`updated_buffers`: which buffers one train-mode forward pass changes (a running
  statistic is not a constant; a causal mask is);
* :func:`tied_gradient_cause`: the sentence "weights tied in torch, not in the port" when torch's
  gradient of a tied tensor equals the sum of the port's gradients of its copies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn


def _identity(t: torch.Tensor) -> tuple:
    """What makes two tensors the same: the object, or for views the storage, offset, shape, strides."""
    if t.numel() == 0 or t.device.type == "meta":
        return (id(t),)
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def tied_keys(model: nn.Module) -> dict[str, str]:
    """``{alias key: first key}`` for state keys of ``model`` that hold the same tensor as an
    earlier key (``model.state_dict()`` order), e.g. ``{'lm_head.weight': 'wte.weight'}``."""
    first: dict[tuple, str] = {}
    out: dict[str, str] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        ident = _identity(tensor)
        if ident in first:
            out[key] = first[ident]
        else:
            first[ident] = key
    return out


def updated_buffers(
    model: nn.Module, keys: Sequence[str], input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> list[str] | None:
    """Which of the buffers ``keys`` one train-mode forward pass on a normal input of
    ``input_shape`` (torch layout) changes; ``None`` when the pass fails. Every buffer, the mode
    and torch's global RNG state are restored afterwards."""
    state = dict(model.named_buffers())
    before = {k: v.detach().clone() for k, v in state.items()}
    training = model.training
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # dropout draws leave the caller's RNG alone
            model.train()(x)
        return [k for k in keys if k in state and not torch.equal(state[k], before[k])]
    except Exception:  # user code: a failed dry run only means "not verified"
        return None
    finally:
        with torch.no_grad():
            for k, v in state.items():
                v.copy_(before[k])
        model.train(training)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def tied_gradient_cause(
    name: str, torch_grad: np.ndarray, copies: Mapping[str, np.ndarray], tol: float
) -> str | None:
    """A one-line cause when torch's gradient of the tied tensor ``name`` equals the sum of the
    port's gradients of its copies (``{flax leaf: gradient in torch layout}``, the tensor's own
    leaf first) within ``tol`` (relative L2), while the first copy alone does not: the port has
    the weights untied. ``None`` otherwise (one copy, or no such sum)."""
    if len(copies) < 2:
        return None
    grads = list(copies.values())
    alone, summed = _rel(grads[0], torch_grad), _rel(np.sum(grads, axis=0), torch_grad)
    if summed > tol or alone <= tol:
        return None
    leaves = " + ".join(copies)
    return (
        f"{name}: weights tied in torch, not in the port: torch's gradient equals the port's "
        f"{leaves} (relative difference {summed:.1e}; {next(iter(copies))} alone: {alone:.1e}); "
        "use one Flax parameter for both (e.g. Embed.attend)"
    )
