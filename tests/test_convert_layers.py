"""Every built-in layer rule: numerically equal forward passes (float32 rounding only) and
bit-exact round trips, Linen and NNX, both directions.

Tolerance: relative L2 <= 1e-5. Converted layers compute the same sums in another order;
float32 (eps 1.2e-7) accumulated over at most a few hundred terms stays well below 1e-5,
while any layout error (a missing flip, transpose or head permutation) gives O(1).
"""

from functools import partial

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from parity import layout
from parity.convert import ConversionError, flax_to_torch, torch_to_flax
from parity.harness.compare import rel_l2

TOL = 1e-5


def _seeded(make):
    torch.manual_seed(0)
    m = make()
    with torch.no_grad():  # non-trivial statistics and affine params, so a mix-up shows
        for name, b in m.named_buffers():
            if "running" in name:
                b.uniform_(0.5, 1.5)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m.eval()


def _cl(x: np.ndarray) -> np.ndarray:
    return layout.to_channels_last(x) if x.ndim >= 3 else x


def _check_linen(tm, fm, x, train=False, flax_only_leaves=False):
    """Convert tm -> fm's variables, compare forwards, and round-trip bit-exactly.

    The template is ``fm.init``'s shapes only (``jax.eval_shape`` compiles nothing): the
    converter replaces every leaf, and a leaf it left unset would stay abstract and fail the
    forward. ``flax_only_leaves``: the Flax module has leaves torch lacks, which keep the
    template's values, so the template is really initialised (jitted: one compile)."""
    init = jax.jit(fm.init) if flax_only_leaves else partial(jax.eval_shape, fm.init)
    variables = init(jax.random.key(0), jnp.asarray(_cl(x)))
    # the forward is jitted: one compile, where eager Linen compiled every op separately
    v = torch_to_flax(tm.state_dict(), tm, variables)
    tm.train(train)
    ref = tm(torch.from_numpy(x)).detach().numpy()
    if train:
        out, _ = jax.jit(partial(fm.apply, mutable=["batch_stats"]))(v, jnp.asarray(_cl(x)))
    else:
        out = jax.jit(fm.apply)(v, jnp.asarray(_cl(x)))
    assert rel_l2(np.asarray(out), _cl(ref)) <= TOL
    back = flax_to_torch(v, tm)
    sd = tm.state_dict()
    assert list(back) == list(sd)
    for k in sd:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(back[k], sd[k]), k


def _check_nnx(tm, nm, x):
    torch_to_flax(tm.state_dict(), tm, nm)
    ref = tm.eval()(torch.from_numpy(x)).detach().numpy()
    nm.eval()
    out = nm(jnp.asarray(_cl(x)))
    assert rel_l2(np.asarray(out), _cl(ref)) <= TOL
    back = flax_to_torch(nm, tm)
    assert all(torch.equal(back[k], v) for k, v in tm.state_dict().items() if "num_batches" not in k)


RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape, dtype=np.float32)


CONVS = [  # (torch conv, flax conv, input shape NC...)
    (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), lambda: fnn.Conv(6, (3,), 2, padding=1), (2, 4, 11)),
    (
        lambda: nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2),
        lambda: fnn.Conv(8, (3, 3), padding=2, kernel_dilation=2, feature_group_count=2),
        (2, 4, 9, 7),
    ),
    (
        lambda: nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False),
        lambda: fnn.Conv(6, (3, 3), 2, padding=1, feature_group_count=6, use_bias=False),
        (2, 6, 8, 8),
    ),
    (
        lambda: nn.Conv3d(2, 3, (2, 3, 3), stride=(1, 2, 2)),
        lambda: fnn.Conv(3, (2, 3, 3), (1, 2, 2), "VALID"),
        (2, 2, 4, 6, 6),
    ),
]


@pytest.mark.parametrize(
    "make_t, make_f, shape", CONVS, ids=["1d-stride", "2d-dilated-groups", "2d-depthwise", "3d"]
)
def test_conv_rules(make_t, make_f, shape):
    _check_linen(_seeded(make_t), make_f(), _x(*shape))


CONV_T = [  # kernel, stride, padding, output_padding, dilation, input shape
    ((3,), (2,), (1,), (1,), (1,), (2, 3, 7)),
    ((4, 3), (2, 3), (1, 0), (0, 2), (1, 1), (2, 3, 5, 4)),
    ((3, 3), (2, 2), (2, 1), (1, 0), (2, 1), (2, 3, 4, 5)),
]


@pytest.mark.parametrize("k, s, p, op, d, shape", CONV_T, ids=["1d", "2d-asym", "2d-dilated"])
def test_conv_transpose_rule_matches_torch_with_explicit_padding(k, s, p, op, d, shape):
    cls = nn.ConvTranspose1d if len(k) == 1 else nn.ConvTranspose2d
    tm = _seeded(lambda: cls(3, 5, k, stride=s, padding=p, output_padding=op, dilation=d))
    pad = layout.conv_transpose_padding(k, p, d, op)
    fm = fnn.ConvTranspose(5, k, s, padding=pad, kernel_dilation=d)
    _check_linen(tm, fm, _x(*shape))


def test_conv_transpose_without_the_flip_is_wrong():
    """The flip is needed: the same kernel transposed but not flipped gives a different output."""
    tm = _seeded(lambda: nn.ConvTranspose1d(2, 2, 3, stride=2, padding=1))
    x = _x(1, 2, 5)
    fm = fnn.ConvTranspose(2, (3,), (2,), padding=layout.conv_transpose_padding((3,), (1,)))
    v = torch_to_flax(tm.state_dict(), tm, fm.init(jax.random.key(0), jnp.asarray(_cl(x))))
    v["params"]["kernel"] = v["params"]["kernel"][::-1]
    out = fm.apply(v, jnp.asarray(_cl(x)))
    assert rel_l2(np.asarray(out), _cl(tm(torch.from_numpy(x)).detach().numpy())) > 0.05


def test_conv_transpose_groups_refused_by_name():
    tm = nn.ConvTranspose2d(4, 4, 3, groups=2)
    v = {"params": {"kernel": np.zeros((3, 3, 4, 2), np.float32), "bias": np.zeros(4, np.float32)}}
    with pytest.raises(ConversionError, match=r"\(root\)|groups=2"):
        torch_to_flax(tm.state_dict(), tm, v)


BNS = [
    (lambda: nn.BatchNorm1d(5), (4, 5)),
    (lambda: nn.BatchNorm1d(5, affine=False), (4, 5, 6)),
    (lambda: nn.BatchNorm2d(3), (4, 3, 5, 5)),
    (lambda: nn.BatchNorm3d(3), (2, 3, 3, 4, 4)),
]


@pytest.mark.parametrize("make_t, shape", BNS, ids=["1d", "1d-affine-false", "2d", "3d"])
def test_batch_norm_rules(make_t, shape):
    tm = _seeded(make_t)
    fm = fnn.BatchNorm(
        use_running_average=True, momentum=0.9, epsilon=1e-5, use_scale=tm.affine, use_bias=tm.affine
    )
    _check_linen(tm, fm, _x(*shape))


def test_batch_norm_without_running_stats_keeps_flax_stats_and_matches_in_train_mode():
    tm = _seeded(lambda: nn.BatchNorm2d(3, track_running_stats=False))
    fm = fnn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    _check_linen(tm, fm, _x(4, 3, 5, 5), train=True, flax_only_leaves=True)


def test_layer_group_norm_and_embedding_rules():
    _check_linen(_seeded(lambda: nn.LayerNorm(6)), fnn.LayerNorm(epsilon=1e-5), _x(3, 6))
    _check_linen(
        _seeded(lambda: nn.GroupNorm(2, 6)), fnn.GroupNorm(num_groups=2, epsilon=1e-5), _x(2, 6, 4, 4)
    )
    tm = _seeded(lambda: nn.Embedding(11, 4))
    ids = np.array([[1, 3, 10], [0, 2, 2]])
    v = torch_to_flax(tm.state_dict(), tm, fnn.Embed(11, 4).init(jax.random.key(0), jnp.asarray(ids)))
    out = fnn.Embed(11, 4).apply(v, jnp.asarray(ids))
    np.testing.assert_array_equal(np.asarray(out), tm(torch.from_numpy(ids)).detach().numpy())
    assert torch.equal(flax_to_torch(v, tm)["weight"], tm.weight)


def _mha_pair(kdim=None, bias=True):
    tm = _seeded(lambda: nn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=kdim, bias=bias))
    fm = fnn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=8, use_bias=bias)
    return tm, fm


@pytest.mark.parametrize(
    "kdim, bias", [(None, True), (5, True), (None, False)], ids=["packed", "kdim", "no-bias"]
)
def test_multihead_attention_rule(kdim, bias):
    tm, fm = _mha_pair(kdim, bias)
    q, kv = _x(2, 4, 8), _x(2, 6, kdim or 8)
    v = torch_to_flax(tm.state_dict(), tm, fm.init(jax.random.key(0), q, kv, kv))
    assert v["params"]["query"]["kernel"].shape == (8, 2, 4) and v["params"]["out"]["kernel"].shape == (
        2,
        4,
        8,
    )
    ref = tm(*map(torch.from_numpy, (q, kv, kv)), need_weights=False)[0].detach().numpy()
    assert rel_l2(np.asarray(fm.apply(v, q, kv, kv)), ref) <= TOL
    back = flax_to_torch(v, tm)
    assert all(torch.equal(back[k], t) for k, t in tm.state_dict().items())


def test_multihead_attention_nnx_and_head_split_matters():
    tm, _ = _mha_pair()
    nm = nnx.MultiHeadAttention(
        num_heads=2, in_features=8, qkv_features=8, out_features=8, decode=False, rngs=nnx.Rngs(0)
    )
    q = _x(2, 4, 8)
    torch_to_flax(tm.state_dict(), tm, nm)
    t = torch.from_numpy(q)
    ref = tm(t, t, t, need_weights=False)[0].detach().numpy()
    assert rel_l2(np.asarray(nm(q)), ref) <= TOL
    # swapping the head split's two axes (a classic porting bug) is caught by the numbers
    k = nm.query.kernel.get_value()
    nm.query.kernel.set_value(k.reshape(8, 4, 2).transpose(0, 2, 1))
    assert rel_l2(np.asarray(nm(q)), ref) > 0.01
    torch_to_flax(tm.state_dict(), tm, nm)
    back = flax_to_torch(nm, tm)
    assert all(torch.equal(back[k], v) for k, v in tm.state_dict().items())


def test_nnx_conv_bn_linear():
    rngs = nnx.Rngs(0)
    tm = _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 5 * 5, 2)
        )
    )
    nm = nnx.Sequential(
        nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs),
        nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, rngs=rngs),
        lambda x: x.reshape(x.shape[0], -1),
        nnx.Linear(4 * 5 * 5, 2, rngs=rngs),
    )
    x = _x(2, 3, 5, 5)
    torch_to_flax(tm.state_dict(), tm, nm)
    nm.eval()
    ref = tm(torch.from_numpy(x)).detach().numpy()
    assert rel_l2(np.asarray(nm(jnp.asarray(_cl(x)))), ref) <= TOL
    back = flax_to_torch(nm, tm, num_batches_tracked=7)
    assert back["1.num_batches_tracked"].item() == 7
    assert all(torch.equal(back[k], v) for k, v in tm.state_dict().items() if "num_batches" not in k)
