"""The fast routes of ``parity check --torch SPEC --flax SPEC`` give the plain routes' numbers.

A Linen port is converted into from ``jax.eval_shape`` of its init and an NNX port is built under
``nnx.eval_shape`` (:mod:`parity.harness.lazy_init`); the converted weights, statistics and NNX
state must equal those of the random-init route bit for bit, and a port with a leaf torch does
not fill (an NNX dropout rng, a Flax-only parameter) must fall back to the real route. Timings
are in ``scripts/bench_check.py`` and BENCHMARKS.md, not here.
"""

import contextlib

import flax.linen as fnn
import jax
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from parity import convert
from parity.harness import lazy_init
from parity.harness.specs import SpecInput, SpecModels
from parity.spec import build, linen_variables

HERE = "tests/test_harness_speed.py"
SHAPE = (2, 3, 6, 6)


class TorchNet(nn.Module):
    """``(N, 3, H, W)`` -> conv -> BN -> ReLU -> dropout -> mean over H, W -> Linear -> ``(N, 5)``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.0)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3)))


class LinenNet(fnn.Module):
    @fnn.compact
    def __call__(self, x, train: bool):
        x = fnn.Conv(4, (3, 3), padding=1, name="conv")(x)
        x = fnn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
        return fnn.Dense(5, name="fc")(fnn.relu(x).mean(axis=(1, 2)))


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, dropout: bool = False) -> None:
        self.conv = nnx.Conv(3, 4, (3, 3), padding=1, rngs=rngs)
        self.bn = nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.drop = nnx.Dropout(0.0, rngs=rngs) if dropout else None
        self.fc = nnx.Linear(4, 5, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.fc((self.drop(x) if self.drop is not None else x).mean(axis=(1, 2)))


def torch_net() -> nn.Module:
    torch.manual_seed(0)
    return TorchNet()


def linen_net() -> fnn.Module:
    return LinenNet()


def nnx_net() -> nnx.Module:
    return NNXNet(nnx.Rngs(0))


def nnx_net_dropout() -> nnx.Module:
    """Holds a dropout rng stream: state that no torch tensor fills."""
    return NNXNet(nnx.Rngs(0), dropout=True)


def _pair(flax_factory: str):
    return SpecModels(f"{HERE}:torch_net", f"{HERE}:{flax_factory}", SpecInput(SHAPE)).pair("cpu")


def _plain(flax_factory: str):
    """The conversion as it was before the fast routes: a real init (Linen) or a real build (NNX)."""
    tm = torch_net()
    fm, kind = build(f"{HERE}:{flax_factory}", ("linen", "nnx"))
    target = linen_variables(fm, SHAPE) if kind == "linen" else fm
    options = {"input_shape": SHAPE, "user_map": None, "flatten_shapes": None}
    return convert.torch_to_flax(dict(tm.state_dict()), tm, target, **options)


def _leaves(tree) -> list[np.ndarray]:
    def data(a):
        return (
            np.asarray(jax.random.key_data(a)) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a
        )

    return [np.asarray(data(a)) for a in jax.tree.leaves(tree)]


def _assert_same(a, b) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # 2.4 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_linen_from_shapes_equals_the_random_init_route(monkeypatch):
    calls = []
    real = lazy_init.linen_converted

    def spy(convert_into, init):
        return real(convert_into, lambda shapes_only: calls.append(shapes_only) or init(shapes_only))

    monkeypatch.setattr("parity.harness.specs.linen_converted", spy)
    pair = _pair("linen_net")
    assert calls == [True]  # no random init was computed
    _assert_same(pair.variables, _plain("linen_net"))


def test_nnx_built_from_shapes_equals_the_real_build():
    model, kind, abstract = lazy_init.build_flax(f"{HERE}:nnx_net")
    assert (kind, abstract) == ("nnx", True)
    assert any(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(nnx.state(model)))
    pair = _pair("nnx_net")
    _assert_same(nnx.state(pair.flax), nnx.state(_plain("nnx_net")))


def test_nnx_with_an_rng_stream_falls_back_to_the_real_build():
    pair = _pair("nnx_net_dropout")
    state = nnx.state(pair.flax)
    assert not any(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(state))
    _assert_same(state, nnx.state(_plain("nnx_net_dropout")))
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(pair.flax(x)), np.asarray(_plain("nnx_net_dropout")(x)))


@pytest.mark.parametrize("fails", [False, True])
def test_linen_leaf_torch_does_not_fill_uses_the_real_init(fails):
    """A leaf the conversion kept from an abstract target (an object array), or a failing
    abstract conversion, sends the conversion to the real variables."""
    shapes = {"w": jax.ShapeDtypeStruct((2,), np.float32)}
    real = {"w": np.array([1.0, 2.0], np.float32)}

    def convert_into(target):
        if fails and target is shapes:
            raise ValueError("abstract target refused")
        return {"w": np.asarray(target["w"])}  # a Flax-only leaf: the target's own value

    out = lazy_init.linen_converted(convert_into, lambda shapes_only: shapes if shapes_only else real)
    np.testing.assert_array_equal(out["w"], real["w"])


# ------------------------------------------------------------------ passes not repeated (item 12)


def _config(**changes):
    from parity.harness.suite import CheckConfig

    return CheckConfig(**{"device": "cpu", "localize": True, **changes})


def _torch_passes(monkeypatch) -> list[tuple[bool, bool, tuple]]:
    """Spy on every output pass of the torch side: ``(train, float64, input shape)``."""
    from parity.harness import outputs as outputs_mod

    calls = []
    real = outputs_mod.torch_tree

    def spy(model, x, train, masks, given, float64, *a, **k):
        calls.append((train, float64, tuple(np.shape(x))))
        return real(model, x, train, masks, given, float64, *a, **k)

    monkeypatch.setattr(outputs_mod, "torch_tree", spy)
    return calls


def _foundation(flax_factory: str):
    spec = SpecModels(f"{HERE}:torch_net", f"{HERE}:{flax_factory}", SpecInput(SHAPE))
    config = _config()
    spec.validate(config)
    tols = {"forward": 1e-5, "gradient": 1e-5, "bn_state": 1e-5, "layers": 1e-5}
    return spec.foundation(config, "cpu", "strict", tols)


@pytest.mark.slow  # 2.4 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_the_float32_eval_pass_runs_once_for_validation_shapes_and_forward_rows(monkeypatch):
    """Validation, the labels' output shape and the ``forward_eval`` row ask for the same eval
    pass on the same batch: it runs once (it ran three times)."""
    calls = _torch_passes(monkeypatch)
    _foundation("linen_net")
    assert calls.count((False, False, SHAPE)) == 1


@pytest.mark.slow  # 2.7 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_the_float64_probe_runs_on_the_whole_batch(monkeypatch):
    """The "can both sides compute in float64" probe uses the checked batch, whose shapes the
    later float64 passes share (jax compiles each eager operation once per shape); a 2-sample
    probe compiled every operation a second time. No pass runs on another batch size."""
    calls = _torch_passes(monkeypatch)
    _foundation("nnx_net")
    assert (False, True, SHAPE) in calls
    assert {shape for _, _, shape in calls} == {SHAPE}


@pytest.mark.slow  # 4.7 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_the_eval_layer_report_made_before_the_gradients_is_the_one_localize_makes():
    """With ``eval_layers`` the foundation makes the eval-mode layer report before the
    gradients (which free jax's compiled eager operations); it is the report ``--localize``
    made after them."""
    from parity.harness.localize import LocalizeOptions, localize
    from parity.harness.specs import batches, foundation_rows

    spec = SpecModels(f"{HERE}:torch_net", f"{HERE}:linen_net", SpecInput(SHAPE))
    pair = spec.pair("cpu")
    x, y, _ = batches(pair, spec.input, 0, 0)
    tols = {"forward": 1e-5, "gradient": 1e-5, "bn_state": 1e-5, "layers": 1e-5}
    _, reports = foundation_rows(pair, x, y, tols, 0, set(), eval_layers=True)
    alone = localize(pair, x, LocalizeOptions("eval", 1e-5, seed=0))
    assert [r.as_dict() for r in reports["layers_eval"].rows] == [r.as_dict() for r in alone.rows]
    assert reports["layers_eval"].meta == alone.meta


@pytest.mark.slow  # 2.2 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_free_caches_clears_jax_caches_and_changes_no_gradient_row():
    """``GradientOptions(free_caches=True)`` drops jax's compiled programs before the float64
    gradients (the memory peak) and gives the same rows. ``tol=0`` makes every row with any
    float32 difference go to the float64 judge, so that branch runs."""
    from parity.harness.localize import GradientOptions, localize_gradients

    pair = _pair("linen_net")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    y = rng.integers(0, 5, SHAPE[0])
    keep = localize_gradients(pair, x, y, GradientOptions(tol=0.0))
    assert any(r.port_float64_rel_l2 is not None for r in keep.rows)  # the float64 branch ran
    probe = jax.jit(lambda a: a + 1)
    probe(1.0)
    assert probe._cache_size() == 1
    freed = localize_gradients(pair, x, y, GradientOptions(tol=0.0, free_caches=True))
    assert probe._cache_size() == 0
    assert [r.as_dict() for r in freed.rows] == [r.as_dict() for r in keep.rows]


def test_torch_side_gradients_are_views_of_its_private_copy():
    """``TorchSide.gradients`` works on a private copy, so its gradients are views of the
    copy's ``.grad`` (no second float64 copy of every gradient at the memory peak), equal to
    the copies :func:`torch_gradients` returns for a model someone else holds."""
    from parity.harness.sides import TorchSide, torch_gradients

    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    y = rng.integers(0, 5, SHAPE[0])
    grads, _, _, _, tm = TorchSide(torch_net()).gradients(x, y, "cross_entropy", True, None, 0)
    held = torch_net().train()
    copies = torch_gradients(held, x, y, "cross_entropy", None, 0)[0]
    for name, p in tm.named_parameters():
        assert np.shares_memory(grads[name], p.grad.numpy())
        assert not np.shares_memory(copies[name], held.get_parameter(name).grad.numpy())
        np.testing.assert_array_equal(grads[name], copies[name])


# ------------------------------------------------------------ gradient programs compiled ahead


def _batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal(SHAPE).astype(np.float32), rng.integers(0, 5, SHAPE[0])


def _count_compiles(monkeypatch) -> list[bool]:
    """Spy on every gradient compile: whether it was a float64 one."""
    from parity.harness import flax_grad

    calls = []
    real = flax_grad.compile_gradient

    def spy(side, loss, train, abstract):
        calls.append(any(a.dtype == np.float64 for a in jax.tree.leaves(abstract[0])))
        return real(side, loss, train, abstract)

    monkeypatch.setattr(flax_grad, "compile_gradient", spy)
    return calls


@pytest.mark.parametrize("flax_factory", ["linen_net", "nnx_net"])
@pytest.mark.slow  # 2.9 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_gradient_programs_compiled_ahead_are_the_ones_used_and_change_nothing(monkeypatch, flax_factory):
    """:func:`parity.harness.ahead.compile_gradients` compiles the float32 and float64 gradient programs in
    the background; :func:`localize_gradients` then takes them (no third compile) and gives
    the rows of a pair that compiled nothing ahead. ``tol=0`` sends every row with any float32
    difference to the float64 judge, so both programs run."""
    from parity.harness.ahead import compile_gradients
    from parity.harness.localize import GradientOptions, localize_gradients

    x, y = _batch()
    options = GradientOptions(tol=0.0)
    inline = localize_gradients(_pair(flax_factory), x, y, options)
    calls = _count_compiles(monkeypatch)
    pair = _pair(flax_factory)
    compile_gradients(pair, x, y, options)
    programs = pair.memo["flax_programs"]
    assert len(programs) == 2
    for pending in list(programs.values()):
        pending.result()
    assert calls == [False, True]
    ahead = localize_gradients(pair, x, y, options)
    assert calls == [False, True] and programs == {}
    assert any(r.port_float64_rel_l2 is not None for r in ahead.rows)
    assert [r.as_dict() for r in ahead.rows] == [r.as_dict() for r in inline.rows]


@pytest.mark.parametrize("flax_factory", ["linen_net", "nnx_net"])
@pytest.mark.parametrize("float64", [False, True])
def test_abstract_arguments_are_the_shapes_of_the_arguments(flax_factory, float64):
    """What :func:`parity.harness.ahead.compile_gradients` compiles for (shapes only, no float64
    copy of the weights) is what the gradient pass gives the program."""
    from parity.harness import flax_grad
    from parity.harness.localize import independent_rng

    x, y = _batch()
    side = _pair(flax_factory).flax_side()
    for rng in (None, independent_rng(True, "independent", 0, 0)):
        with jax.enable_x64(True) if float64 else contextlib.nullcontext():
            args = flax_grad.gradient_arguments(side, x, y, rng, float64, "channels_first")
            shapes = flax_grad.abstract_arguments(side, x, y, rng, float64, "channels_first")
            assert shapes == flax_grad.abstract(args)
            assert flax_grad.program_key("cross_entropy", True, shapes)[2] is float64


def test_an_unused_float64_program_is_dropped():
    """When every float32 row passes, the float64 program compiled ahead is not needed: it is
    dropped (its memory freed) with the gradients."""
    from parity.harness.ahead import compile_gradients
    from parity.harness.localize import GradientOptions, localize_gradients

    x, y = _batch()
    pair = _pair("linen_net")
    compile_gradients(pair, x, y, GradientOptions())
    # a tolerance no float32 row can exceed on any CPU (the conv bias before the BatchNorm
    # has a true gradient of zero, so its float32 rel_l2 is rounding noise over rounding noise)
    report = localize_gradients(pair, x, y, GradientOptions(tol=float("inf")))
    assert all(r.passed and r.port_float64_rel_l2 is None for r in report.rows)
    assert pair.memo["flax_programs"] == {}


def test_a_model_whose_dropout_runs_compiles_nothing_ahead():
    """Shared dropout masks are drawn by torch during the gradients and are part of the
    program: a model with active dropout compiles its programs when they run, not ahead."""
    from parity.harness.ahead import compile_gradients
    from parity.harness.localize import GradientOptions

    x, y = _batch()
    pair = _pair("linen_net")
    pair.torch.drop.p = 0.5
    compile_gradients(pair, x, y, GradientOptions())
    assert not pair.memo.get("flax_programs")
    compile_gradients(pair, x, y, GradientOptions(mode="eval"))
    assert len(pair.memo["flax_programs"]) == 2


def test_to_jax_gives_jnp_asarrays_values_and_compiles_nothing():
    """:func:`parity.arrays.to_jax` is ``jnp.asarray`` (same values, dtype, weak type) without
    the XLA program ``jnp.asarray`` compiles per new shape and dtype (jax 0.10)."""
    import jax.monitoring
    import jax.numpy as jnp

    from parity.arrays import to_jax

    compiles = []

    def listener(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    rng = np.random.default_rng(0)
    cases = [
        (rng.standard_normal((3, 5 + i)).astype(np.float32), dtype)
        for i, dtype in enumerate((None, np.float64))
    ]
    cases.append((np.arange(7, dtype=np.int64), None))
    jax.clear_caches()  # nothing compiled by earlier tests
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        with jax.enable_x64(True):
            got = [to_jax(a, dtype) for a, dtype in cases]
        assert compiles == []
        with jax.enable_x64(True):
            expected = [jnp.asarray(a, dtype) for a, dtype in cases]
        assert compiles  # the listener sees jnp.asarray's compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    for g, e in zip(got, expected, strict=True):
        assert isinstance(g, jax.Array) and g.dtype == e.dtype and g.weak_type == e.weak_type
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))
