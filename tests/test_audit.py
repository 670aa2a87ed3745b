"""The mode audits measure each layer's mode at call time; none derives it from a ``train`` flag.

Each framework gets a partially frozen model: one BatchNorm in eval mode (or its parameters
frozen) while the rest trains. An audit derived from the flag the loop passes (``train=True``,
``model.train()``) would report 1.0; the measured audits report the true share of mode layers
in train mode. Digits models have four mode layers (bn1, bn2, bn3, dropout), so one BN in eval
mode gives 3/4.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from flax_impl import linen_train, nnx_models, nnx_train
from flax_impl.audit import record_linen_modes
from torch_impl import models as torch_models
from torch_impl import train as torch_train
from torch_impl.audit import ModeAudit

X = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)  # NCHW digits-shaped batch
Y = np.arange(16) % 10


# ------------------------------------------------------------------------------------ torch


def _torch_step(model):
    opt = torch_train.make_optimizer(model)
    torch_train.train_step(model, opt, torch.from_numpy(X), torch.from_numpy(Y))


@pytest.mark.slow  # 2.0 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_torch_one_bn_in_eval_is_measured():
    model = torch_models.build_model("digits", seed=0)
    audit = ModeAudit(model)
    model.train()
    model.bn2.eval()  # the rest trains
    _torch_step(model)
    assert audit.fraction() == pytest.approx(3 / 4)
    assert audit.eval_layers == {"bn2": 1}
    model.bn2.train()
    audit.reset()
    _torch_step(model)
    assert audit.fraction() == 1.0 and audit.eval_layers == {}


def test_torch_frozen_bn_parameters_still_train_mode():
    """Freezing a BN's affine parameters does not change its mode: the audit says 1.0."""
    model = torch_models.build_model("digits", seed=0).train()
    model.bn1.weight.requires_grad_(False)
    model.bn1.bias.requires_grad_(False)
    audit = ModeAudit(model)
    _torch_step(model)
    assert audit.fraction() == 1.0


def test_torch_counts_calls_not_registered_layers():
    """A BN registered on the model but never called is not counted: the audit is per call."""
    model = torch_models.build_model("digits", seed=0).train()
    model.unused_bn = torch.nn.BatchNorm2d(3).eval()  # never called by forward
    audit = ModeAudit(model)
    _torch_step(model)
    assert audit.fraction() == 1.0 and "unused_bn" not in audit.eval_layers


# ------------------------------------------------------------------------------------ Linen


class _PartlyFrozenLinen(nn.Module):
    """Two BNs; ``frozen`` keeps running statistics whatever ``train`` says; ``live`` is called
    twice per forward."""

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(8)(x.reshape(x.shape[0], -1))
        live = nn.BatchNorm(use_running_average=not train, name="live")
        x = live(x)
        x = live(x)
        x = nn.BatchNorm(use_running_average=True, name="frozen")(x)
        return nn.Dense(10)(x)


@pytest.mark.slow  # 3.0 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_linen_partly_frozen_model_is_measured_per_call():
    model = _PartlyFrozenLinen()
    xl = jnp.asarray(X.transpose(0, 2, 3, 1))
    variables = model.init(jax.random.key(0), xl, train=False)
    state = linen_train.create_train_state(model, variables, linen_train.make_optimizer())
    state, metrics = linen_train.train_step(state, (xl, jnp.asarray(Y)), jax.random.key(1), train=True)
    # three BN calls per forward: live twice in train mode, frozen once in eval mode
    assert float(metrics["train_mode"]) == pytest.approx(2 / 3)
    # the same interceptor outside a step: eval mode is measured on every call as well
    with record_linen_modes() as flags:
        model.apply({"params": state.params, "batch_stats": state.batch_stats}, xl, train=False)
    assert flags == [False, False, False]


# -------------------------------------------------------------------------------------- NNX


def _nnx_step(model):
    opt = nnx_train.make_optimizer(model)
    xl = jnp.asarray(X.transpose(0, 2, 3, 1))
    return float(nnx_train.train_step(model, opt, xl, jnp.asarray(Y))["train_mode"])


@pytest.mark.slow  # 7.7 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_nnx_one_bn_in_eval_is_measured():
    model = nnx_models.build_model("digits", seed=0)
    model.train()
    model.bn2.eval()  # the rest trains
    assert _nnx_step(model) == pytest.approx(3 / 4)
    model.bn2.train()  # a mode change re-traces the step: the new mode is measured
    assert _nnx_step(model) == 1.0


def test_nnx_frozen_bn_parameters_still_train_mode():
    """Training only some parameters (``wrt`` excludes bn1's) does not change the BN's mode."""
    model = nnx_models.build_model("digits", seed=0)
    model.train()
    frozen = nnx.All(nnx.Param, nnx.PathContains("bn1"))
    opt = nnx.Optimizer(model, linen_train.make_optimizer(), wrt=nnx.All(nnx.Param, nnx.Not(frozen)))
    before = np.asarray(model.bn1.scale[...])
    xl = jnp.asarray(X.transpose(0, 2, 3, 1))

    @nnx.jit
    def step(model, opt):
        from flax_impl.audit import nnx_modes, train_fraction

        modes = nnx_modes(model)
        diff = nnx.DiffState(0, nnx.All(nnx.Param, nnx.Not(frozen)))
        grads = nnx.grad(lambda m: nnx_train.loss_fn(m(xl), jnp.asarray(Y)), argnums=diff)(model)
        opt.update(model, grads)
        return train_fraction(modes)

    assert float(step(model, opt)) == 1.0
    np.testing.assert_array_equal(np.asarray(model.bn1.scale[...]), before)  # really frozen
