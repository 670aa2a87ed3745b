"""The converter on ports written as their authors write them (tests/port_models.py): a tied
embedding head, a causal-mask buffer, Linen auto-named blocks, bare parameters, a user-defined
RMSNorm, head-split kernels, a LayerNorm applied twice.

Tolerance for forward passes: relative L2 <= 1e-5 (float32; the two sides sum the same terms in
another order, a few dozen terms at most; any wrong layout, transpose or pairing gives O(1)).
Gradient sums: relative L2 <= 1e-5 for the same reason.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from port_models import (
    BARE_VIT_MAP,
    GPT_MAP,
    TOKENS,
    VOCAB,
    LinenBareViT,
    LinenGPT,
    LinenResNet,
    make_bare_vit,
    make_gpt,
    make_resnet,
)
from torch import nn

from parity.convert import (
    ConversionError,
    flax_to_torch,
    map_models,
    params_to_torch_fn,
    tied_gradient_cause,
    torch_to_flax,
)
from parity.harness.compare import rel_l2

TOL = 1e-5


def _init(module, *args):
    """Variables of the right shapes (zeros), without compiling an init: the converter
    overwrites every one of them."""
    shapes = jax.eval_shape(module.init, *args)
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _ids():
    return np.random.default_rng(0).integers(0, VOCAB, TOKENS)


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    rules = tmp_path_factory.mktemp("gpt") / "gpt.map"
    rules.write_text(GPT_MAP)
    ids = jnp.asarray(_ids())
    return {
        tied: (LinenGPT(tied=tied), _init(LinenGPT(tied=tied), jax.random.key(0), ids))
        for tied in (True, False)
    }, str(rules)


def test_tied_head_is_converted_once_and_its_checkpoint_key_is_optional(gpt):
    (ports, rules), tm = gpt, make_gpt()
    fm, variables = ports[True]
    pairing, rows = map_models(tm, variables, user_map=rules)
    assert pairing.ok, pairing.problems
    assert pairing.ties == {"lm_head.weight": "wte.weight"}
    assert any("lm_head.weight: tied to wte.weight" in n and "converted once" in n for n in pairing.notes)
    assert {r["torch"]: r["flax"] for r in rows}["lm_head.weight"] == ""
    sd = tm.state_dict()
    out = torch_to_flax(sd, tm, variables, user_map=rules)
    without = torch_to_flax(
        {k: v for k, v in sd.items() if k != "lm_head.weight"}, tm, variables, user_map=rules
    )
    np.testing.assert_array_equal(without["params"]["wte"]["embedding"], out["params"]["wte"]["embedding"])
    ref = tm(torch.from_numpy(_ids())).detach().numpy()
    assert rel_l2(np.asarray(jax.jit(fm.apply)(out, jnp.asarray(_ids()))), ref) <= TOL
    back = flax_to_torch(out, tm, user_map=rules)
    assert list(back) == list(sd) and back["lm_head.weight"] is back["wte.weight"]
    fresh = make_gpt()
    fresh.load_state_dict(back, strict=True)
    assert fresh.lm_head.weight is fresh.wte.weight and torch.equal(fresh.wte.weight, tm.wte.weight)
    bad = dict(sd, **{"lm_head.weight": sd["wte.weight"] + 1})
    with pytest.raises(
        ConversionError, match=r"lm_head\.weight: differs from wte\.weight, which it is tied to"
    ):
        torch_to_flax(bad, tm, variables, user_map=rules)


def _torch_grads(tm, w):
    tm.zero_grad()
    (tm(torch.from_numpy(_ids())) * torch.from_numpy(w)).sum().backward()
    return {n: p.grad.numpy() for n, p in tm.named_parameters()}


def _flax_grads(fm, variables, w):
    loss = lambda p: (fm.apply({"params": p}, jnp.asarray(_ids())) * w).sum()  # noqa: E731
    return jax.jit(jax.grad(loss))(jax.tree.map(jnp.asarray, variables["params"]))


@pytest.mark.slow  # 2.7 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_a_port_that_did_not_tie_is_named_from_its_gradients(gpt):
    (ports, rules), tm = gpt, make_gpt()
    w = np.random.default_rng(1).standard_normal((*TOKENS, VOCAB)).astype(np.float32)
    fm, variables = ports[False]
    pairing, rows = map_models(tm, variables, user_map=rules)
    assert pairing.ok and "copied there too" in " ".join(pairing.notes)
    assert {r["flax"]: r["torch"] for r in rows}["params/lm_head/kernel"] == "lm_head.weight"
    out = torch_to_flax(tm.state_dict(), tm, variables, user_map=rules)
    ref = tm(torch.from_numpy(_ids())).detach().numpy()
    assert rel_l2(np.asarray(jax.jit(fm.apply)(out, jnp.asarray(_ids()))), ref) <= TOL  # same forward
    trained_apart = jax.tree.map(np.array, out)
    trained_apart["params"]["lm_head"]["kernel"] += 1
    with pytest.raises(
        ConversionError, match=r"params/lm_head/kernel differs .*\(lm_head\.weight is wte\.weight\)"
    ):
        flax_to_torch(trained_apart, tm, user_map=rules)
    torch_grads = _torch_grads(tm, w)
    grads = _flax_grads(fm, out, w)
    plain = params_to_torch_fn(tm, out, user_map=rules)(grads)
    assert rel_l2(plain["wte.weight"], torch_grads["wte.weight"]) > 0.1  # the gradient check fails
    copies = params_to_torch_fn(tm, out, user_map=rules, copies=True)(grads)
    assert list(copies["wte.weight"]) == ["params/wte/embedding", "params/lm_head/kernel"]
    cause = tied_gradient_cause("wte.weight", torch_grads["wte.weight"], copies["wte.weight"], TOL)
    assert cause and "weights tied in torch, not in the port" in cause and "params/lm_head/kernel" in cause
    # the tied port: one leaf, nothing to name, and the plain gradients agree
    fm, variables = ports[True]
    out = torch_to_flax(tm.state_dict(), tm, variables, user_map=rules)
    copies = params_to_torch_fn(tm, out, user_map=rules, copies=True)(_flax_grads(fm, out, w))
    assert list(copies["wte.weight"]) == ["params/wte/embedding"]
    assert rel_l2(copies["wte.weight"]["params/wte/embedding"], torch_grads["wte.weight"]) <= TOL
    assert tied_gradient_cause("wte.weight", torch_grads["wte.weight"], copies["wte.weight"], TOL) is None


def test_a_causal_mask_buffer_is_a_listed_constant(gpt):
    (ports, rules), tm = gpt, make_gpt()
    _, variables = ports[True]
    pairing, rows = map_models(tm, variables, user_map=rules)
    assert pairing.constants == ["h.0.attn.bias", "h.1.attn.bias"]
    assert "constant buffers, not converted: h.0.attn.bias, h.1.attn.bias" in pairing.notes
    assert {r["torch"]: r["rule"] for r in rows}["h.0.attn.bias"].startswith("constant buffer")
    sd = {k: v for k, v in tm.state_dict().items() if not k.endswith(".attn.bias")}
    out = torch_to_flax(sd, tm, variables, user_map=rules)  # a checkpoint without the masks
    back = flax_to_torch(out, tm, user_map=rules)
    assert torch.equal(back["h.1.attn.bias"], tm.h[1].attn.bias)
    for block in tm.h:  # non-persistent: not in the state_dict at all, nothing to say
        block.attn.register_buffer("bias", block.attn.bias, persistent=False)
    pairing, _ = map_models(tm, variables, user_map=rules)
    assert pairing.ok and pairing.constants == []


class _RunningMean(nn.Module):
    """A buffer the forward pass updates: not a constant."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("avg", torch.zeros(3))

    def forward(self, x):
        if self.training:
            self.avg.mul_(0.9).add_(0.1 * x.mean(0))
        return self.fc(x - self.avg)


def test_a_buffer_updated_in_the_forward_pass_is_not_taken_for_a_constant():
    tm = _RunningMean()
    v = {"params": {"fc": {"kernel": np.zeros((3, 2), np.float32), "bias": np.zeros(2, np.float32)}}}
    pairing, _ = map_models(tm, v)
    assert pairing.ok and pairing.constants == ["avg"]  # without an input nothing can be run
    rng = torch.get_rng_state()
    pairing, _ = map_models(tm, v, input_shape=(4, 3))
    assert torch.equal(torch.get_rng_state(), rng)  # the dry run drew from a forked RNG
    assert pairing.problems == [
        "avg: a buffer that a train-mode forward pass updates, not a constant; no rule "
        "converts it (add one with register_rule)"
    ]
    assert torch.equal(tm.avg, torch.zeros(3)) and tm.training  # the dry run changed nothing


def _nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def test_auto_named_linen_resnet_needs_no_map():
    tm, fm = make_resnet(), LinenResNet()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    variables = _init(fm, jax.random.key(0), _nhwc(x))
    pairing, rows = map_models(tm, variables)
    assert pairing.ok, pairing.problems
    pairs = {r["torch"]: r["flax"] for r in rows}
    assert pairs["conv1.weight"] == "params/Conv_0/kernel"
    assert pairs["layer1.1.bn2.running_var"] == "batch_stats/ResNetBlock_1/BatchNorm_1/var"
    assert pairs["layer2.0.downsample.0.weight"] == "params/ResNetBlock_2/Conv_2/kernel"
    assert pairs["fc.weight"] == "params/Dense_0/kernel"
    assert "layer2.1 -> ResNetBlock_3 (Linen auto-name, paired by order)" in pairing.notes
    out = torch_to_flax(tm.state_dict(), tm, variables)
    ref = tm(torch.from_numpy(x)).detach().numpy()
    assert rel_l2(np.asarray(jax.jit(fm.apply)(out, _nhwc(x))), ref) <= TOL
    back = flax_to_torch(out, tm)
    assert all(torch.equal(back[k], v) for k, v in tm.state_dict().items() if "num_batches" not in k)


def test_auto_names_pair_nothing_when_the_counts_differ():
    tm, fm = make_resnet(), LinenResNet()
    variables = jax.tree.map(np.asarray, _init(fm, jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    for col in variables.values():
        col.pop("ResNetBlock_3")
    pairing, rows = map_models(tm, variables)
    assert not pairing.ok
    assert not any(r["flax"].startswith(("params/ResNetBlock", "batch_stats/ResNetBlock")) for r in rows)
    assert any(
        p.startswith("layer1.0.conv1.weight (layer1.0.conv1 Conv2d): no Flax module")
        for p in pairing.problems
    )


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    rules = tmp_path_factory.mktemp("vit") / "vit.map"
    rules.write_text(BARE_VIT_MAP)
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    fm = LinenBareViT()
    return fm, _init(fm, jax.random.key(0), jnp.asarray(x)), x, str(rules)


def test_bare_parameters_rmsnorm_and_head_split_kernels(bare):
    fm, variables, x, rules = bare
    tm = make_bare_vit()
    pairing, rows = map_models(tm, variables, user_map=rules)
    assert pairing.ok, pairing.problems
    by_torch = {r["torch"]: (r["flax"], r["rule"]) for r in rows}
    assert by_torch["cls"] == ("params/cls_token", "copy (parameter)")  # renamed by a map rule
    assert by_torch["proj"] == ("params/proj/kernel", "copy (parameter)")  # x @ proj: (in, out)
    assert by_torch["head"] == ("params/head/kernel", "transpose (parameter)")  # F.linear: (out, in)
    assert by_torch["blocks.0.gamma"] == ("params/blocks_0/layer_scale", "copy (parameter)")
    assert by_torch["blocks.0.norm.weight"][0] == "params/blocks_0/norm/scale"  # RMSNorm, no rule
    assert by_torch["blocks.0.attn.q.weight"] == (
        "params/blocks_0/q/kernel",
        "transpose + reshape to (8, 2, 4)",
    )
    assert by_torch["blocks.0.attn.o.weight"] == (
        "params/blocks_0/o/kernel",
        "transpose + reshape to (2, 4, 8)",
    )
    out = torch_to_flax(tm.state_dict(), tm, variables, user_map=rules)
    ref = tm(torch.from_numpy(x)).detach().numpy()
    assert rel_l2(np.asarray(jax.jit(fm.apply)(out, jnp.asarray(x))), ref) <= TOL
    back = flax_to_torch(out, tm, user_map=rules)
    assert all(torch.equal(back[k], v) for k, v in tm.state_dict().items())


def test_one_layernorm_applied_twice_feeds_two_flax_layernorms(bare):
    fm, variables, x, rules = bare
    tm = make_bare_vit()
    pairing, rows = map_models(tm, variables, user_map=rules)
    assert "ln.weight feeds 2 Flax modules (ln_a, ln_b): copied to each" in pairing.notes
    assert [r["flax"] for r in rows if r["torch"] == "ln.bias"] == ["params/ln_a/bias", "params/ln_b/bias"]
    out = torch_to_flax(tm.state_dict(), tm, variables, user_map=rules)
    np.testing.assert_array_equal(out["params"]["ln_b"]["scale"], tm.ln.weight.detach().numpy())
    w = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    (tm(torch.from_numpy(x)) * torch.from_numpy(w)).sum().backward()
    grads = jax.jit(jax.grad(lambda p: (fm.apply({"params": p}, jnp.asarray(x)) * w).sum()))(out["params"])
    copies = params_to_torch_fn(tm, out, user_map=rules, copies=True)(grads)
    cause = tied_gradient_cause("ln.weight", tm.ln.weight.grad.numpy(), copies["ln.weight"], TOL)
    assert cause and "params/ln_a/scale + params/ln_b/scale" in cause


def test_named_stem_and_projections_need_four_rules_not_one_per_block(tmp_path):
    """The Flax ImageNet example's naming: ``conv_init``/``bn_init`` at the root, auto-named
    blocks, ``conv_proj``/``norm_proj`` inside them; rules on names relative to an auto-named
    block reach below the computed index."""
    from port_models import NAMED_RESNET_MAP

    tm, fm = make_resnet(), LinenResNet(named=True)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    variables = _init(fm, jax.random.key(0), _nhwc(x))
    assert not map_models(tm, variables)[0].ok
    rules = tmp_path / "resnet.map"
    rules.write_text(NAMED_RESNET_MAP)
    pairing, rows = map_models(tm, variables, user_map=str(rules))
    assert pairing.ok, pairing.problems
    pairs = {r["torch"]: r["flax"] for r in rows}
    assert pairs["conv1.weight"] == "params/conv_init/kernel"
    assert pairs["layer2.0.downsample.1.running_mean"] == "batch_stats/ResNetBlock_2/norm_proj/mean"
    assert pairs["layer2.0.conv2.weight"] == "params/ResNetBlock_2/Conv_1/kernel"
    out = torch_to_flax(tm.state_dict(), tm, variables, user_map=str(rules))
    ref = tm(torch.from_numpy(x)).detach().numpy()
    assert rel_l2(np.asarray(jax.jit(fm.apply)(out, _nhwc(x))), ref) <= TOL


def test_module_pairs_gives_the_harness_auto_named_layers_dropout_included():
    from parity.convert import module_pairs
    from parity.convert.naming import module_paths

    tm, fm = make_resnet(), LinenResNet()
    variables = _init(fm, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    pairs = module_pairs(tm, module_paths(_paths(variables)))
    assert pairs["layer2.0.downsample.0"] == "ResNetBlock_2/Conv_2" and pairs["fc"] == "Dense_0"
    assert pairs["layer1.1"] == "ResNetBlock_1"
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.ReLU(), nn.Linear(4, 2))
    called = {"Dense_0", "Dropout_0", "Dense_1"}  # what a Linen forward pass calls
    assert module_pairs(mlp, called) == {"0": "Dense_0", "1": "Dropout_0", "3": "Dense_1"}


def _paths(variables):
    from parity.convert import flatten_tree

    return list(flatten_tree(variables))
