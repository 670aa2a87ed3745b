"""Small user models for ``parity check`` on outputs that are not one tensor (tuples with a
``None`` loss, dicts, ``ModelOutput``-like dataclasses, a last-position-only inference output)
and on Flax ports written for ``pmap`` or with dropout that ignores the mode. Each is written
in the style of the construct it stands for (a GPT-style ``(logits, loss)`` head, a Hugging
Face ``ModelOutput``, a ``BatchNorm(axis_name='batch')``)."""

from dataclasses import dataclass

import flax.linen as fnn
import jax
import jax.numpy as jnp
import torch
from flax import nnx
from torch import nn

V, D = 11, 8  # vocabulary, width


class TorchLM(nn.Module):
    """ids ``(N, L)`` -> Embedding -> LayerNorm -> Linear: ``(logits, loss)`` as a GPT returns
    them (``loss`` is ``None`` without targets); ``last_only``: eval returns ``logits[:, -1:]``
    (the inference shortcut of GPT ports); ``as_dict``: ``{'logits', 'hidden'}``."""

    def __init__(self, last_only: bool = False, as_dict: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(V, D)
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, V)
        self.last_only, self.as_dict = last_only, as_dict

    def forward(self, ids, targets=None):
        h = self.ln_f(self.wte(ids))
        logits = self.lm_head(h)
        if self.as_dict:
            return {"logits": logits, "hidden": h}
        if self.last_only and not self.training:
            return logits[:, -1:], None
        loss = (
            None if targets is None else nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        )
        return logits, loss


def torch_lm() -> nn.Module:
    torch.manual_seed(0)
    return TorchLM()


def torch_lm_last() -> nn.Module:
    torch.manual_seed(0)
    return TorchLM(last_only=True)


def torch_lm_dict() -> nn.Module:
    torch.manual_seed(0)
    return TorchLM(as_dict=True)


class LinenLM(fnn.Module):
    """The Linen port; ``outputs``: ``'logits'`` (the bare tensor), ``'tuple'`` (``(logits,
    None)``), ``'scaled_hidden'`` (a dict whose ``hidden`` is off by 1 %: a fault in the second
    leaf only)."""

    outputs: str = "tuple"

    @fnn.compact
    def __call__(self, ids):
        h = fnn.LayerNorm(epsilon=1e-5, name="ln_f")(fnn.Embed(V, D, name="wte")(ids))
        logits = fnn.Dense(V, name="lm_head")(h)
        if self.outputs == "logits":
            return logits
        if self.outputs == "scaled_hidden":
            return {"logits": logits, "hidden": h * 1.01}
        return logits, None


def linen_lm() -> fnn.Module:
    return LinenLM()


def linen_lm_logits() -> fnn.Module:
    return LinenLM("logits")


def linen_lm_scaled_hidden() -> fnn.Module:
    return LinenLM("scaled_hidden")


@dataclass
class LMOutput:
    """A Hugging Face ``ModelOutput`` stand-in: a dataclass with tensor fields."""

    logits: jax.Array
    hidden: jax.Array | None = None


class NNXLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.wte = nnx.Embed(V, D, rngs=rngs)
        self.ln_f = nnx.LayerNorm(D, epsilon=1e-5, rngs=rngs)
        self.lm_head = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, ids):
        h = self.ln_f(self.wte(ids))
        return LMOutput(logits=self.lm_head(h), hidden=h)


def nnx_lm_dataclass() -> nnx.Module:
    return NNXLM(nnx.Rngs(0))


class TorchBN(nn.Module):
    """``(N, 6)`` features -> Linear -> BatchNorm1d -> ReLU -> Dropout -> Linear -> ``(N, 4)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.25)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def torch_bn() -> nn.Module:
    torch.manual_seed(0)
    return TorchBN()


class LinenBN(fnn.Module):
    """The Linen port as written for ``pmap``: ``BatchNorm(axis_name='batch')``, mode by a
    required ``train`` argument, dropout from the ``'dropout'`` rng stream. ``deterministic``:
    the fault, a port that hard-codes ``deterministic=False`` (dropout on in eval mode)."""

    deterministic: bool | None = None

    @fnn.compact
    def __call__(self, x, train: bool):
        x = fnn.Dense(8, name="fc1")(x)
        x = fnn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            axis_name="batch",
            use_fast_variance=False,
            name="bn",
        )(x)
        det = (not train) if self.deterministic is None else self.deterministic
        x = fnn.Dropout(0.25, deterministic=det, name="drop")(jax.nn.relu(x))
        return fnn.Dense(4, name="fc2")(x)


def linen_bn_pmap() -> fnn.Module:
    return LinenBN()


def linen_bn_dropout_always_on() -> fnn.Module:
    return LinenBN(deterministic=False)


class LinenLMFloat32Norm(fnn.Module):
    """A port whose LayerNorm computes in float32 whatever the input (as mixed-precision ports
    write it): correct in float32, but it cannot run in float64."""

    @fnn.compact
    def __call__(self, ids):
        h = fnn.Embed(V, D, name="wte")(ids)
        h = fnn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name="ln_f")(
            h.astype(jnp.float32)
        )
        return fnn.Dense(V, name="lm_head")(h), None


def linen_lm_float32_norm() -> fnn.Module:
    return LinenLMFloat32Norm()


class LinenLMNoX64(fnn.Module):
    """A port that crashes under x64 (it checks its own dtype, as some ports assert)."""

    @fnn.compact
    def __call__(self, ids):
        h = fnn.LayerNorm(epsilon=1e-5, name="ln_f")(fnn.Embed(V, D, name="wte")(ids))
        if h.dtype != jnp.float32:
            raise TypeError(f"this port runs in float32, got {h.dtype}")
        return fnn.Dense(V, name="lm_head")(h), None


def linen_lm_no_x64() -> fnn.Module:
    return LinenLMNoX64()


class NNXBNDropoutOn(nnx.Module):
    """The NNX port of :class:`TorchBN` with the fault: ``deterministic=False`` at the call, and
    a dropout built without ``rngs`` (its author only ran it with ``rngs=`` in training)."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.fc1 = nnx.Linear(6, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs)
        self.drop = nnx.Dropout(0.25)
        self.fc2 = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.drop(jax.nn.relu(self.bn(self.fc1(x))), deterministic=False))


def nnx_bn_dropout_always_on() -> nnx.Module:
    return NNXBNDropoutOn(nnx.Rngs(0))
