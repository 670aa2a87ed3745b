"""probable_cause: each porting gotcha, built into a "port" output (a Flax layer with the fault,
or an independent numpy/torch computation), is named; a correct port and an unrelated
difference get no cause.

Ports are computed in float64 (jax under ``enable_x64``) unless a test says float32; float32
cases use inputs whose gotcha effect (>= 1e-4 relative) is far above float32 rounding (~1e-7),
so no test depends on one CPU's float32 rounding.
"""

from __future__ import annotations

import copy

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from parity.harness.causes import GOTCHAS, Cause, probable_cause


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _torch64(module: nn.Module, x: np.ndarray, train: bool = False) -> np.ndarray:
    """The torch layer's own float64 output (a copy: the module is left as it is)."""
    m = copy.deepcopy(module).double().train(train)
    args = (x,) * 3 if isinstance(m, nn.MultiheadAttention) else (x,)
    with torch.no_grad():
        out = m(*(torch.as_tensor(a) for a in args))
    return _np(out[0] if isinstance(out, tuple) else out)


def _nhwc(x: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(np.moveaxis(x, 1, -1))


def _nchw(y: jnp.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(y), -1, 1)


def _hwio(w: torch.Tensor) -> np.ndarray:
    return _np(w).transpose(2, 3, 1, 0)


def _check(cause: Cause | None, what: str, port, torch_value) -> None:
    assert cause is not None, "no cause named"
    assert (cause.what, cause.port, cause.torch) == (what, port, torch_value), str(cause)
    assert cause.rel_l2 <= 1e-9


# --- normalisation ------------------------------------------------------------------------


def _flax_layernorm(ln: nn.LayerNorm, x: np.ndarray, epsilon: float, dtype=jnp.float64) -> np.ndarray:
    layer = fnn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=dtype)
    with jax.enable_x64(True):
        params = {"scale": jnp.asarray(_np(ln.weight), dtype), "bias": jnp.asarray(_np(ln.bias), dtype)}
        return np.asarray(layer.apply({"params": params}, jnp.asarray(x, dtype)))


def _layernorm() -> nn.LayerNorm:
    torch.manual_seed(0)
    ln = nn.LayerNorm(16)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    return ln


def test_layernorm_epsilon_of_a_flax_port_is_named():
    ln = _layernorm()
    x = _rng().normal(size=(2, 5, 16))
    cause = probable_cause(ln, x, _flax_layernorm(ln, x, 1e-6), layer="blocks.0.ln_1")
    _check(cause, "epsilon", 1e-6, 1e-5)
    assert str(cause) == "blocks.0.ln_1: epsilon 1e-06 in the port, 1e-05 in torch"


def test_layernorm_epsilon_is_invisible_at_float32_scale_but_named():
    """The issue's bug (item 7): on unit-variance inputs epsilon 1e-6 vs 1e-5 moves the output
    by ~4.5e-6 relative, under FLOAT32_REL_TOL; float64 resolves it to the cause."""
    ln = _layernorm()
    x = _rng(1).normal(size=(4, 8, 16))
    port = _flax_layernorm(ln, x, 1e-6)
    assert 1e-6 < np.linalg.norm(port - _torch64(ln, x)) / np.linalg.norm(port) < 1e-5
    _check(probable_cause(ln, x, port), "epsilon", 1e-6, 1e-5)


def test_float32_port_output_is_judged_on_the_float32_scale():
    """A float32 Flax output: inputs of variance 1e-4 make the epsilon gap (1e-6 vs 1e-5) a
    ~4e-2 relative change, far above float32 rounding, and the gotcha leaves only rounding."""
    ln = _layernorm()
    x = 0.01 * _rng(2).normal(size=(2, 5, 16))
    port = _flax_layernorm(ln, x, 1e-6, jnp.float32)
    assert port.dtype == np.float32
    cause = probable_cause(ln, x, port)
    assert cause is not None and (cause.what, cause.port) == ("epsilon", 1e-6)
    assert cause.rel_l2 <= 1e-5
    # and a correct float32 port gets no cause: its only difference is rounding
    assert probable_cause(ln, x, _flax_layernorm(ln, x, 1e-5, jnp.float32)) is None


def test_float32_rounding_is_not_taken_for_an_epsilon():
    """On unit-variance inputs epsilon 1e-6 is within FLOAT32_REL_TOL (~4.5e-6) of a correct
    float32 port, but leaves far more than its ~1e-7 rounding: no cause (SEPARATION)."""
    ln = _layernorm()
    x = _rng(5).normal(size=(4, 8, 16))
    port = _flax_layernorm(ln, x, 1e-5, jnp.float32)
    faulty = _flax_layernorm(ln, x, 1e-6)
    assert np.linalg.norm(port - faulty) / np.linalg.norm(faulty) < 1e-5
    assert probable_cause(ln, x, port) is None


def test_groupnorm_epsilon():
    torch.manual_seed(0)
    gn = nn.GroupNorm(2, 4)
    x = 0.1 * _rng().normal(size=(2, 4, 3, 3))
    faulty = copy.deepcopy(gn).double()
    faulty.eps = 1e-3
    port = _np(faulty(torch.as_tensor(x)))
    _check(probable_cause(gn, x, port), "epsilon", 1e-3, 1e-5)


def _batchnorm(channels: int = 3) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.01, 0.02)  # small: the epsilon gap is large
    return bn


def _flax_batchnorm(
    bn: nn.BatchNorm2d, x: np.ndarray, train: bool, epsilon: float = 1e-5, momentum: float = 0.9
):
    """``(output NCHW, new running mean)`` of a float64 Flax BatchNorm holding ``bn``'s state."""
    layer = fnn.BatchNorm(
        use_running_average=not train, epsilon=epsilon, momentum=momentum, param_dtype=jnp.float64
    )
    with jax.enable_x64(True):
        variables = {
            "params": {
                "scale": jnp.asarray(_np(bn.weight), jnp.float64),
                "bias": jnp.asarray(_np(bn.bias), jnp.float64),
            },
            "batch_stats": {
                "mean": jnp.asarray(_np(bn.running_mean), jnp.float64),
                "var": jnp.asarray(_np(bn.running_var), jnp.float64),
            },
        }
        y, state = layer.apply(variables, _nhwc(x), mutable=["batch_stats"])
        return _nchw(y), np.asarray(state["batch_stats"]["mean"])


def test_batchnorm_epsilon_in_eval():
    bn = _batchnorm().eval()
    x = _rng().normal(size=(2, 3, 4, 4))
    port, _ = _flax_batchnorm(bn, x, train=False, epsilon=1e-3)
    _check(probable_cause(bn, x, port), "epsilon", 1e-3, 1e-5)


def test_batchnorm_on_batch_statistics_in_eval_is_the_mode_bug():
    bn = _batchnorm().eval()
    x = _rng().normal(size=(4, 3, 4, 4))
    port, _ = _flax_batchnorm(bn, x, train=True)
    _check(probable_cause(bn, x, port), "normalisation statistics", "batch", "running")


def test_batchnorm_unbiased_variance_in_train():
    bn = _batchnorm().train()
    x = _rng().normal(size=(2, 3, 2, 2))  # 8 values per channel: n/(n-1) = 8/7
    dims = (0, 2, 3)
    mean = x.mean(axis=dims, keepdims=True)
    var = x.var(axis=dims, ddof=1, keepdims=True)
    w, b = _np(bn.weight).reshape(1, -1, 1, 1), _np(bn.bias).reshape(1, -1, 1, 1)
    port = (x - mean) / np.sqrt(var + bn.eps) * w + b
    _check(probable_cause(bn, x, port), "batch variance", "unbiased", "biased")


@pytest.mark.parametrize(("flax_momentum", "torch_convention"), [(0.1, 0.9), (0.99, 0.01)])
def test_batchnorm_momentum_misread(flax_momentum, torch_convention):
    """Flax momentum 0.1 (torch's 0.1 copied over) or Flax's default 0.99 where torch has 0.1."""
    bn = _batchnorm().train()
    before = copy.deepcopy(bn)
    x = _rng().normal(size=(4, 3, 2, 2))
    _, port_mean = _flax_batchnorm(bn, x, train=True, momentum=flax_momentum)
    cause = probable_cause(before, x, port_mean, output="running_mean")
    _check(cause, "momentum", torch_convention, 0.1)
    # the right momentum (Flax 0.9 for torch 0.1) is no cause
    _, ok = _flax_batchnorm(bn, x, train=True, momentum=0.9)
    assert probable_cause(before, x, ok, output="running_mean") is None


# --- activations, attention --------------------------------------------------------------------


def test_gelu_tanh_in_flax_port():
    x = _rng().normal(size=(3, 7))
    with jax.enable_x64(True):
        port = np.asarray(fnn.gelu(jnp.asarray(x), approximate=True))
    _check(probable_cause(nn.GELU(), x, port), "gelu approximate", "tanh", "none")


def test_gelu_exact_in_port_where_torch_uses_tanh():
    x = _rng().normal(size=(3, 7))
    with jax.enable_x64(True):
        port = np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False))
    _check(probable_cause(nn.GELU(approximate="tanh"), x, port), "gelu approximate", "none", "tanh")


def _numpy_attention(mha: nn.MultiheadAttention, x: np.ndarray, scale: float) -> np.ndarray:
    """Self-attention, batch first, written out in numpy with the given score scale."""
    e, h = mha.embed_dim, mha.num_heads
    w, b = _np(mha.in_proj_weight).astype(np.float64), _np(mha.in_proj_bias).astype(np.float64)
    q, k, v = (x @ w[i * e : (i + 1) * e].T + b[i * e : (i + 1) * e] for i in range(3))

    def heads(t: np.ndarray) -> np.ndarray:
        return t.reshape(t.shape[0], t.shape[1], h, e // h).transpose(0, 2, 1, 3)

    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    o = (p / p.sum(-1, keepdims=True)) @ heads(v)
    o = o.transpose(0, 2, 1, 3).reshape(x.shape)
    return o @ _np(mha.out_proj.weight).T.astype(np.float64) + _np(mha.out_proj.bias)


def test_attention_without_scaling():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = _rng().normal(size=(2, 5, 8))
    assert probable_cause(mha, x, _numpy_attention(mha, x, 4**-0.5)) is None  # the numpy check
    _check(probable_cause(mha, x, _numpy_attention(mha, x, 1.0)), "attention scale", "1 (none)", "1/sqrt(4)")
    cause = probable_cause(mha, (x, x, x), _numpy_attention(mha, x, 8**-0.5))
    _check(cause, "attention scale", "1/sqrt(8)", "1/sqrt(4)")


# --- kernels ----------------------------------------------------------------------------------


def _flax_dense(lin: nn.Linear, kernel: np.ndarray, x: np.ndarray) -> np.ndarray:
    with jax.enable_x64(True):
        params = {"kernel": jnp.asarray(kernel, jnp.float64), "bias": jnp.asarray(_np(lin.bias), jnp.float64)}
        return np.asarray(
            fnn.Dense(kernel.shape[1], param_dtype=jnp.float64).apply({"params": params}, jnp.asarray(x))
        )


def test_square_linear_kernel_not_transposed():
    torch.manual_seed(0)
    lin = nn.Linear(6, 6)
    x = _rng().normal(size=(4, 6))
    w = _np(lin.weight)
    assert probable_cause(lin, x, _flax_dense(lin, w.T, x)) is None
    _check(probable_cause(lin, x, _flax_dense(lin, w, x)), "kernel not transposed", "W", "W.T")


def test_linear_kernel_reshaped_instead_of_transposed():
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    x = _rng().normal(size=(2, 3, 6))
    port = _flax_dense(lin, _np(lin.weight).reshape(6, 4), x)
    _check(probable_cause(lin, x, port), "kernel reshaped, not transposed", "W", "W.T")


def _flax_conv(conv: nn.Conv2d, kernel: np.ndarray, x: np.ndarray, padding, stride: int = 1) -> np.ndarray:
    layer = fnn.Conv(
        kernel.shape[-1], kernel.shape[:2], strides=stride, padding=padding, param_dtype=jnp.float64
    )
    with jax.enable_x64(True):
        params = {
            "kernel": jnp.asarray(kernel, jnp.float64),
            "bias": jnp.asarray(_np(conv.bias), jnp.float64),
        }
        return _nchw(layer.apply({"params": params}, _nhwc(x)))


@pytest.mark.parametrize(
    ("make_kernel", "what", "port"),
    [
        (lambda w: w.reshape(3, 3, 4, 4), "kernel", "reshaped"),
        (lambda w: w.T, "kernel spatial axes", "swapped (w.T)"),
        (lambda w: w.transpose(2, 3, 0, 1), "kernel channel axes", "in/out swapped"),
        (lambda w: w.transpose(2, 3, 1, 0)[::-1, ::-1], "kernel", "flipped"),
    ],
)
def test_conv_kernel_moved_wrongly(make_kernel, what, port):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = _rng().normal(size=(2, 4, 6, 6))
    assert probable_cause(conv, x, _flax_conv(conv, _hwio(conv.weight), x, 1)) is None
    cause = probable_cause(conv, x, _flax_conv(conv, make_kernel(_np(conv.weight)), x, 1))
    assert cause is not None and (cause.what, cause.port) == (what, port), str(cause)


# --- padding and pooling ----------------------------------------------------------------------


def test_conv_same_padding_where_torch_pads_symmetrically():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x = _rng().normal(size=(2, 3, 8, 8))
    port = _flax_conv(conv, _hwio(conv.weight), x, "SAME", stride=2)
    assert port.shape == _torch64(conv, x).shape  # same shape, shifted windows
    _check(probable_cause(conv, x, port), "padding", "SAME", "symmetric ((1, 1), (1, 1))")


def test_conv_valid_padding_in_port():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    x = _rng().normal(size=(1, 3, 5, 5))
    port = _flax_conv(conv, _hwio(conv.weight), x, "VALID")
    _check(probable_cause(conv, x, port), "padding", "VALID", "symmetric ((1, 1), (1, 1))")


def test_conv_padding_mode_reflect_ported_with_zeros():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")
    x = _rng().normal(size=(1, 2, 5, 5))
    port = _flax_conv(conv, _hwio(conv.weight), x, 1)
    _check(probable_cause(conv, x, port), "padding mode", "zeros", "reflect")


def test_max_pool_same_in_flax_port_issue_item5():
    """ResNet's stem: torch MaxPool2d(3, 2, 1), the port nn.max_pool(padding='SAME')."""
    x = _rng().normal(size=(2, 3, 8, 8))
    with jax.enable_x64(True):
        port = _nchw(fnn.max_pool(_nhwc(x), (3, 3), (2, 2), padding="SAME"))
    cause = probable_cause(nn.MaxPool2d(3, 2, 1), x, port, layer="maxpool")
    _check(cause, "padding", "SAME", "symmetric ((1, 1), (1, 1))")
    assert str(cause).startswith("maxpool: padding SAME in the port, symmetric ((1, 1), (1, 1)) in torch")


def test_max_pool_padded_with_zeros():
    """Zeros instead of -inf only show where a window's real values are all negative: built on
    purpose with a negative input (after a ReLU the two paddings agree)."""
    x = -np.abs(_rng().normal(size=(1, 2, 6, 6)))
    with jax.enable_x64(True):
        padded = jnp.pad(_nhwc(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
        port = _nchw(fnn.max_pool(padded, (3, 3), (2, 2)))
    _check(probable_cause(nn.MaxPool2d(3, 2, 1), x, port), "max-pool pad value", "0", "-inf")


def test_avg_pool_same_in_flax_port():
    x = _rng().normal(size=(2, 3, 8, 8))
    with jax.enable_x64(True):
        port = _nchw(fnn.avg_pool(_nhwc(x), (3, 3), (2, 2), padding="SAME"))
    cause = probable_cause(nn.AvgPool2d(3, 2, 1), x, port)
    _check(cause, "padding", "SAME, pads counted", "symmetric ((1, 1), (1, 1))")


def test_avg_pool_count_include_pad():
    x = _rng().normal(size=(2, 3, 6, 6))
    with jax.enable_x64(True):
        port = _nchw(fnn.avg_pool(_nhwc(x), (3, 3), (2, 2), padding=((1, 1), (1, 1)), count_include_pad=True))
    pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
    _check(probable_cause(pool, x, port), "count_include_pad", True, False)


def test_pool_ceil_mode():
    """torch ceil_mode=True gives 4x4 on a 7x7 input; a floor-mode port gives 3x3: the shapes
    differ, and the cause is named from the port's shape and values."""
    x = _rng().normal(size=(1, 2, 7, 7))
    with jax.enable_x64(True):
        port = _nchw(fnn.max_pool(_nhwc(x), (2, 2), (2, 2)))
    _check(probable_cause(nn.MaxPool2d(2, 2, ceil_mode=True), x, port), "ceil_mode", False, True)


# --- no cause -----------------------------------------------------------------------------------


def _cases() -> list[tuple[str, nn.Module, np.ndarray, bool]]:
    torch.manual_seed(0)
    rng = _rng(3)
    return [
        ("layernorm", _layernorm(), rng.normal(size=(2, 5, 16)), False),
        ("batchnorm eval", _batchnorm(), rng.normal(size=(2, 3, 4, 4)), False),
        ("batchnorm train", _batchnorm(), rng.normal(size=(2, 3, 4, 4)), True),
        ("gelu", nn.GELU(), rng.normal(size=(3, 7)), False),
        ("linear", nn.Linear(6, 6), rng.normal(size=(4, 6)), False),
        ("conv", nn.Conv2d(3, 3, 3, stride=2, padding=1), rng.normal(size=(2, 3, 8, 8)), False),
        ("maxpool", nn.MaxPool2d(3, 2, 1), rng.normal(size=(2, 3, 8, 8)), False),
        ("avgpool", nn.AvgPool2d(3, 2, 1), rng.normal(size=(2, 3, 8, 8)), False),
        ("attention", nn.MultiheadAttention(8, 2, batch_first=True), rng.normal(size=(2, 5, 8)), False),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_correct_port_and_unrelated_noise_get_no_cause(case):
    _, module, x, train = case
    module.train(train)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    ref = _torch64(module, x, train)
    assert probable_cause(module, x, ref) is None
    noise = _rng(4).normal(size=ref.shape)
    noisy = ref + 1e-3 * noise * np.linalg.norm(ref) / np.linalg.norm(noise)
    assert probable_cause(module, x, noisy) is None
    assert probable_cause(module, x, noisy.astype(np.float32)) is None
    # the module is left as it was: dtype, state, mode
    assert module.training == train
    for k, v in module.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k


def test_layer_without_gotchas_and_table_dispatch_by_mro():
    x = _rng().normal(size=(2, 4))
    assert probable_cause(nn.Tanh(), x, np.tanh(x) + 0.1) is None

    class MyLayerNorm(nn.LayerNorm):
        pass

    ln = MyLayerNorm(16)
    x = _rng().normal(size=(2, 16))
    faulty = copy.deepcopy(ln).double()
    faulty.eps = 1e-12
    _check(probable_cause(ln, x, _np(faulty(torch.as_tensor(x)))), "epsilon", 1e-12, 1e-5)
    assert nn.modules.batchnorm._BatchNorm in GOTCHAS
    with pytest.raises(ValueError, match="running statistics"):
        probable_cause(ln, x, x, output="running_mean")


def test_rmsnorm_epsilon_of_flax_default():
    torch.manual_seed(0)
    norm = nn.RMSNorm(16, eps=1e-5)
    x = 0.01 * _rng().normal(size=(2, 3, 16))
    with jax.enable_x64(True):
        params = {"scale": jnp.asarray(_np(norm.weight), jnp.float64)}
        port = np.asarray(fnn.RMSNorm(param_dtype=jnp.float64).apply({"params": params}, jnp.asarray(x)))
    _check(probable_cause(norm, x, port), "epsilon", 1e-6, 1e-5)


def test_pool_same_on_odd_size_equals_ceil_mode_and_both_are_named():
    """Flax 'SAME' on a 7x7 input with a 2x2/2 window pads one -inf row and column at the end:
    exactly torch's ceil_mode=True. Both explain the port, so both are said."""
    x = _rng().normal(size=(1, 2, 7, 7))
    with jax.enable_x64(True):
        port = _nchw(fnn.max_pool(_nhwc(x), (2, 2), (2, 2), padding="SAME"))
    cause = probable_cause(nn.MaxPool2d(2, 2), x, port)
    _check(cause, "padding", "SAME", "symmetric ((0, 0), (0, 0))")
    assert cause.alternatives == ("ceil_mode True in the port, False in torch",)
    assert str(cause).endswith("(SAME pads ((0, 1), (0, 1)); or ceil_mode True in the port, False in torch)")


def test_gotchas_that_give_the_same_kernel_are_all_named():
    """A kernel that depends only on (row - column) is the same flipped as with its spatial axes
    swapped: the port cannot tell which mistake was made, and the cause says both."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1)
    diagonals = torch.randn(2, 2, 5)
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    with torch.no_grad():
        conv.weight.copy_(diagonals[..., rows - cols + 2])
    x = _rng().normal(size=(1, 2, 5, 5))
    port = _flax_conv(conv, _hwio(conv.weight)[::-1, ::-1], x, 1)
    cause = probable_cause(conv, x, port)
    assert cause is not None
    named = {f"{cause.what} {cause.port}"} | {a.split(" in the port")[0] for a in cause.alternatives}
    assert named == {"kernel spatial axes swapped (w.T)", "kernel flipped"}, str(cause)
