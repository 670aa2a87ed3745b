"""The models themselves: shapes, framework separation, and the initialisation conventions."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from flax_impl import linen_models, nnx_models
from torch_impl import models as torch_models


@pytest.mark.parametrize("name,shape", [("digits", (1, 8, 8)), ("signal1d", (1, 40))])
@pytest.mark.slow  # 9.4 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_output_shapes_all_three(name, shape):
    x = np.zeros((3, *shape), np.float32)
    assert torch_models.build_model(name).eval()(torch.from_numpy(x)).shape == (3, 10)
    xl = jnp.zeros((3, *shape[1:], 1))
    lm = linen_models.build_model(name)
    assert lm.apply(linen_models.init_variables(lm, xl.shape[1:]), xl, train=False).shape == (3, 10)
    assert nnx_models.build_model(name)(xl).shape == (3, 10)


def test_unknown_model_lists_choices():
    for build in (torch_models.build_model, linen_models.build_model, nnx_models.build_model):
        with pytest.raises(ValueError, match="digits, signal1d"):
            build("resnet")


def test_seeded_torch_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    a = torch_models.build_model("digits", seed=1).state_dict()
    assert torch.equal(torch.rand(1), expected)
    b = torch_models.build_model("digits", seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("pkg,forbidden", [("torch_impl", ("jax", "flax")), ("flax_impl", ("torch",))])
def test_framework_packages_do_not_import_each_other(pkg, forbidden):
    modules = {
        "torch_impl": "torch_impl.models, torch_impl.train, torch_impl.audit, torch_impl.guard",
        "flax_impl": "flax_impl.linen_models, flax_impl.nnx_models, flax_impl.linen_train, "
        "flax_impl.nnx_train, flax_impl.audit, flax_impl.guard",
    }[pkg]
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_initialisation_conventions_differ():
    """torch: weights ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform, a=sqrt 5), std 1/sqrt(3 fan_in);
    Flax: lecun_normal, std 1/sqrt(fan_in) (truncated normal). Biases: torch uniform, Flax zeros.
    Matching models are therefore initialised once in torch and converted, never initialised twice."""
    fan_in = 512  # digits fc1: 32 channels * 4 * 4
    tw = torch_models.build_model("digits", seed=0).fc1.weight.detach().numpy()
    assert abs(tw).max() <= 1 / np.sqrt(fan_in)
    assert tw.std() == pytest.approx(1 / np.sqrt(3 * fan_in), rel=0.05)
    lm = linen_models.build_model("digits")
    k = np.asarray(linen_models.init_variables(lm, (8, 8, 1))["params"]["fc1"]["kernel"])
    assert k.std() == pytest.approx(1 / np.sqrt(fan_in), rel=0.05)
    assert abs(k).max() > 1 / np.sqrt(fan_in)
    tb = torch_models.build_model("digits", seed=0).fc2.bias.detach().numpy()
    fb = np.asarray(linen_models.init_variables(lm, (8, 8, 1))["params"]["fc2"]["bias"])
    assert np.any(tb != 0) and np.all(fb == 0)


def test_bn_defaults_are_converted_not_flax_defaults():
    """torch momentum 0.1 == Flax momentum 0.9; Flax's own default 0.99 would be torch 0.01."""
    from flax_impl import BN_EPSILON, BN_MOMENTUM

    bn = torch_models.build_model("digits").bn1
    assert bn.momentum == pytest.approx(1 - BN_MOMENTUM) and bn.eps == BN_EPSILON
    import flax.linen as nn

    assert nn.BatchNorm.momentum == 0.99  # the Flax default that a naive port would inherit
    # The running statistics then agree step by step: tests/test_parity.py::test_bn_state_after_training_mode_passes


def _mode_flags(model) -> list:
    """``(path, flag value)`` of every NNX BatchNorm ``use_running_average`` and Dropout
    ``deterministic`` in ``model``."""
    from flax import nnx

    flags = []
    for path, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm):
            flags.append((path, m.use_running_average))
        elif isinstance(m, nnx.Dropout):
            flags.append((path, m.deterministic))
    return flags


@pytest.mark.parametrize("name", ["digits", "signal1d"])
def test_nnx_models_start_in_train_mode_with_explicit_flags(name):
    """Flax typed both flags ``bool | None`` and announced a change of their default from False to
    None (then a call before ``.train()`` / ``.eval()`` raises). Our NNX models take the default, so
    this fails on the release that changes it: fresh models are in train mode with explicit flags,
    as torch's are (``training=True``), and the study's NNX variants rely on that."""
    from flax import nnx

    # The flags are set by the constructors, which nnx.eval_shape runs (only the initialisers'
    # arrays stay abstract): nothing is compiled, where a real build compiled every initialiser.
    model = nnx.eval_shape(lambda: nnx_models.build_model(name, channels=(4, 8), hidden=16))
    flags = _mode_flags(model)
    assert len(flags) == 4 and all(v is False for _, v in flags), flags  # 3 BatchNorms, 1 Dropout


def test_nnx_mode_under_a_none_default():
    """What the NNX variants do when the flags are None (the announced default): the plain call
    raises, and ``.train()`` / ``.eval()`` and ``nnx.view`` still set every flag, so the loops in
    flax_impl/nnx_train.py (which always set the mode first) keep working."""
    from flax import nnx

    model = nnx_models.build_model("digits", channels=(4, 8), hidden=16)
    for _, m in nnx.iter_modules(model):
        if isinstance(m, nnx.BatchNorm):
            m.use_running_average = None
        elif isinstance(m, nnx.Dropout):
            m.deterministic = None
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match="No `use_running_average` argument"):
        model(x)
    eval_view = nnx.view(model, deterministic=True, use_running_average=True)
    assert all(v is True for _, v in _mode_flags(eval_view))
    assert all(v is None for _, v in _mode_flags(model))  # a view leaves the model as it was
    assert eval_view(x).shape == (2, 10)
    model.train()
    assert all(v is False for _, v in _mode_flags(model))
    assert model(x).shape == (2, 10)
    model.eval()
    assert all(v is True for _, v in _mode_flags(model))
