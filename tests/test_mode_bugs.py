"""One test per row of ``MODE_BUGS.md``: each asserts the behaviour the row states.

Where a row claims an effect the test measures it on 8x8 digits with tiny models
(``channels=(4, 8), hidden=16``), fixed seeds and the shared batch order, and asserts it with a
margin; the numbers quoted in MODE_BUGS.md are these tests' values (printed with ``-s``).

Cost control: every Linen training step uses batches of 32 and the same tiny widths, so each
jitted function compiles once per session; Linen weights come from the torch model through
``parity.convert`` (no op-by-op Flax initialisation); one NNX model is built per module.
"""

from __future__ import annotations

import copy
from functools import partial

import flax.errors
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from flax_impl import guard as fguard
from flax_impl import linen_models, nnx_models, nnx_train
from flax_impl import linen_train as ltrain
from parity import data
from parity.convert import torch_to_linen, torch_to_nnx
from torch_impl import guard
from torch_impl import train as ttrain
from torch_impl.audit import ModeAudit
from torch_impl.models import build_model

WIDTHS = {"channels": (4, 8), "hidden": 16}
BATCH = 32
SEED = 0


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _torch_batches(ds, n=None):
    x, y = (ds.x_train, ds.y_train) if n is None else (ds.x_train[:n], ds.y_train[:n])
    return lambda epoch: data.iterate_batches(x, y, BATCH, SEED, epoch)


def _linen_batches(ds, n=None):
    x = ds.channels_last()[0]
    x, y = (x, ds.y_train) if n is None else (x[:n], ds.y_train[:n])
    return lambda epoch: data.iterate_batches(x, y, BATCH, SEED, epoch)


@pytest.fixture(scope="module")
def trained(digits):
    """A torch DigitsCNN trained correctly for 3 epochs (the "pretrained" model of rows 2-5)."""
    torch.manual_seed(SEED)  # dropout masks
    model = build_model("digits", seed=SEED, **WIDTHS)
    hist = ttrain.fit(
        model, ttrain.make_optimizer(model), _torch_batches(digits), (digits.x_test, digits.y_test), epochs=3
    )
    assert hist[-1]["test_acc"] > 0.9
    return model


def _fresh(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)


LINEN = linen_models.build_model("digits", **WIDTHS)
#: One optimizer object for every Linen state: the TrainState's ``tx`` is static pytree
#: metadata, so a fresh ``make_optimizer()`` per state would recompile every jitted step.
TX = ltrain.make_optimizer()


def _linen_state(torch_model: nn.Module) -> ltrain.TrainState:
    """A Linen TrainState holding exactly the torch model's weights and running statistics."""
    variables = torch_to_linen(torch_model.state_dict(), torch_model)
    return ltrain.create_train_state(LINEN, jax.tree.map(jnp.asarray, variables), TX)


@partial(jax.jit, static_argnames="batches")
def _linen_train_mode_logits(variables: dict, x: jax.Array, rng: jax.Array, *, batches: int):
    """Linen forward with ``train=True`` on ``batches`` equal chunks of ``x`` (NHWC); the
    updated statistics are returned by ``mutable`` and *discarded* by this function."""
    chunks = x.reshape(batches, -1, *x.shape[1:])
    run = lambda c: LINEN.apply(
        variables,
        c,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": rng},
    )[0]
    return jax.lax.map(run, chunks).reshape(x.shape[0], -1)


def _numpy_init(module: linen.Module, *args, **kwargs) -> dict:
    """Variables for a small Linen ``module``: shapes from ``jax.eval_shape(module.init)``,
    params drawn with numpy (normal, std 0.5), BatchNorm statistics at 0 / 1. Nothing is
    compiled, unlike ``module.init`` (seconds on a small CPU for a few initialisers)."""
    shapes = jax.eval_shape(partial(module.init, **kwargs), jax.random.key(0), *args)
    rng = np.random.default_rng(SEED)
    params = jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape).astype(s.dtype)), shapes["params"]
    )
    stats = {
        layer: {"mean": jnp.zeros(v["mean"].shape), "var": jnp.ones(v["var"].shape)}
        for layer, v in shapes["batch_stats"].items()
    }
    return {"params": params, "batch_stats": stats}


def _nnx_from_torch(torch_model: nn.Module) -> nnx.Module:
    """The NNX DigitsCNN holding the torch model's weights. Flax's initialisers are only traced
    (``nnx.eval_shape``), never compiled: compiling them costs seconds on a small CPU and the
    weights are overwritten by the conversion anyway."""
    abstract = nnx.eval_shape(lambda: nnx_models.build_model("digits", seed=SEED, **WIDTHS))
    graphdef, shapes = nnx.split(abstract)

    def placeholder(s):
        if jax.dtypes.issubdtype(s.dtype, jax.dtypes.prng_key):
            return jax.random.key(SEED)  # the dropout stream's key
        return jnp.asarray(np.zeros(s.shape, s.dtype))

    model = nnx.merge(graphdef, jax.tree.map(placeholder, shapes))
    return torch_to_nnx(torch_model.state_dict(), torch_model, model)


@pytest.fixture(scope="module")
def nnx_model():
    """The module's one NNX model, with the weights of the seed-0 torch model."""
    return _nnx_from_torch(build_model("digits", seed=SEED, **WIDTHS))


@pytest.fixture(scope="module")
def nnx_opt(nnx_model):
    """One optimizer for ``nnx_model``: its optax transformation is static graph data, so a new
    one per test would recompile ``nnx_train.train_step``."""
    return nnx_train.make_optimizer(nnx_model)


def _torch_acc(model: nn.Module, x: np.ndarray, y: np.ndarray, order: np.ndarray, bs: int) -> float:
    """Accuracy over ``x[order]`` fed in consecutive batches of ``bs``, in the model's mode."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(order), bs):
            idx = order[i : i + bs]
            correct += (model(torch.from_numpy(x[idx])).argmax(1).numpy() == y[idx]).sum()
    return correct / len(order)


# ------------------------------------------------------------------------------------ rows


@pytest.mark.slow  # 5.4 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_row1_train_outside_epoch_loop(digits, monkeypatch):
    """Seed's bug: only epoch 0 trains in train mode; the running stats freeze after it.
    Linen must write the schedule (fit_bug_emulated) and the batch_stats guard flags it."""
    test_set = (digits.x_test, digits.y_test)
    final = {}
    for seed in (0, 1, 2):
        runs = {}
        for name, fit in (("fit", ttrain.fit), ("bug", ttrain.fit_seed_bug)):
            torch.manual_seed(seed)  # the same dropout masks
            model = build_model("digits", seed=seed, **WIDTHS)
            audit, fractions, means = ModeAudit(model), [], []

            def on_epoch(rec, audit=audit, fractions=fractions, means=means, model=model):
                fractions.append(audit.fraction())
                means.append(model.bn1.running_mean.clone())
                audit.reset()

            batches = lambda epoch, seed=seed: data.iterate_batches(
                digits.x_train, digits.y_train, BATCH, seed, epoch
            )
            hist = fit(model, ttrain.make_optimizer(model), batches, test_set, 4, on_epoch=on_epoch)
            runs[name] = (hist, fractions, means)
        (h_fit, f_fit, m_fit), (h_bug, f_bug, m_bug) = runs["fit"], runs["bug"]
        assert f_fit == [1.0, 1.0, 1.0, 1.0]
        assert f_bug == [1.0, 0.0, 0.0, 0.0]  # measured, not assumed
        assert h_fit[0]["step_losses"] == h_bug[0]["step_losses"]  # identical until the first test()
        assert all(torch.equal(m, m_bug[0]) for m in m_bug[1:])  # BN stats frozen after epoch 0
        assert not torch.equal(m_fit[0], m_fit[-1])
        final[seed] = {k: (h_fit[-1][k], h_bug[-1][k]) for k in ("test_acc", "test_loss", "train_loss")}
    print("\nrow1 torch after 4 epochs, (fit, seed bug) per seed:", final)
    for f in final.values():
        assert f["test_loss"][1] > f["test_loss"][0]  # worse on the test set...
        assert f["train_loss"][1] < f["train_loss"][0]  # ...while the logged loss looks better
    gap = np.mean([f["test_acc"][0] - f["test_acc"][1] for f in final.values()])
    print(f"row1 mean test-accuracy gap over 3 seeds: {gap:.4f}")
    assert gap > 0.01

    # The guard turns the silent bug into an error at the first step of epoch 1.
    monkeypatch.setattr(ttrain, "train_step", guard.guarded_step(ttrain.train_step))
    model = build_model("digits", seed=SEED, **WIDTHS)
    done = []
    with pytest.raises(guard.ModeError, match="bn1 .BatchNorm2d.*dropout .Dropout."):
        ttrain.fit_seed_bug(
            model,
            ttrain.make_optimizer(model),
            _torch_batches(digits, 256),
            test_set,
            2,
            on_epoch=done.append,
        )
    assert len(done) == 1
    model = build_model("digits", seed=SEED, **WIDTHS)
    assert len(ttrain.fit(model, ttrain.make_optimizer(model), _torch_batches(digits, 256), test_set, 2)) == 2
    monkeypatch.undo()

    # Linen: the bug exists only when written out; the batch_stats guard catches it.
    state0 = _linen_state(build_model("digits", seed=SEED, **WIDTHS))
    lin_test = (digits.channels_last()[1], digits.y_test)
    after0, h0 = ltrain.fit(state0, _linen_batches(digits, 256), lin_test, 1, jax.random.key(SEED))
    after1, h1 = ltrain.fit_bug_emulated(
        state0, _linen_batches(digits, 256), lin_test, 2, jax.random.key(SEED)
    )
    assert [h["train_mode"] for h in h0] == [1.0]
    assert [h["train_mode"] for h in h1] == [1.0, 0.0]
    fguard.check_batch_stats_updated(state0, after0)
    with pytest.raises(fguard.BatchStatsError) as info:
        fguard.check_batch_stats_updated(after0, after1)  # epoch 1 trained with train=False
    assert info.value.layers == ["bn1", "bn2", "bn3"]


def test_row2_eval_forgotten_before_test(digits, trained, nnx_model):
    """Testing in train mode: accuracy depends on the test batch size and order, and the test
    batches leak into the running statistics. Eval mode does neither."""
    x, y = digits.x_test, digits.y_test
    shuffled = np.random.default_rng(SEED).permutation(len(y))
    by_class = np.argsort(y, kind="stable")
    configs = [(360, shuffled), (24, shuffled), (24, by_class)]

    evalm = _fresh(trained).eval()
    eval_accs = [_torch_acc(evalm, x, y, order, bs) for bs, order in configs]
    assert len(set(eval_accs)) == 1  # eval mode: per-sample, batch-independent

    trainm = _fresh(trained).train()
    mean0, nbt0 = trainm.bn1.running_mean.clone(), int(trainm.bn1.num_batches_tracked)
    train_accs = []
    for bs, order in configs:
        torch.manual_seed(SEED)
        train_accs.append(_torch_acc(trainm, x, y, order, bs))
    print(
        f"\nrow2 torch eval-mode acc {eval_accs[0]:.4f}; train-mode acc "
        f"(360 shuffled, 24 shuffled, 24 sorted by class) = {[round(a, 4) for a in train_accs]}"
    )
    assert train_accs[0] < eval_accs[0] - 0.03
    assert train_accs[2] < train_accs[1] - 0.3  # same batch size, other order
    assert int(trainm.bn1.num_batches_tracked) - nbt0 == 1 + 15 + 15  # every test batch counted
    leak = (trainm.bn1.running_mean - mean0).abs().max().item()
    print(f"row2 torch: 'testing' moved bn1.running_mean by up to {leak:.4f}")
    assert leak > 1e-3

    # Linen: train=True at test time without mutable is an error (row 7). With mutable the
    # updates come back as a value; discarding them means no leak, but the batch dependence stays.
    state = _linen_state(trained)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    xl = jnp.asarray(digits.channels_last()[1])
    with pytest.raises(flax.errors.ModifyScopeVariableError):
        jax.jit(partial(LINEN.apply, train=True, rngs={"dropout": jax.random.key(0)}))(variables, xl)
    acc = lambda logits, order: float(np.mean(np.asarray(logits).argmax(1) == y[order]))
    lin = [
        acc(_linen_train_mode_logits(variables, xl[order], jax.random.key(0), batches=15), order)
        for order in (shuffled, by_class)
    ]
    print(f"row2 Linen train=True acc (24 shuffled, 24 sorted by class) = {[round(a, 4) for a in lin]}")
    assert lin[1] < lin[0] - 0.3

    # NNX: a model left in train mode updates its BatchStat in place during "testing", like torch.
    nnx_model.train()
    before = nnx_model.bn1.mean[...]  # immutable array: a snapshot
    nnx_train.eval_step(nnx_model, xl, jnp.asarray(y))  # "testing" in train mode
    assert not np.array_equal(before, nnx_model.bn1.mean[...])


def test_row3_no_grad_is_not_eval(digits, trained):
    """torch.no_grad() turns off autograd, not training mode: BN still uses and updates batch
    statistics and dropout still drops."""
    model = _fresh(trained).train()
    x = torch.from_numpy(digits.x_test)
    torch.manual_seed(SEED)
    nbt0, mean0 = int(model.bn3.num_batches_tracked), model.bn3.running_mean.clone()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert not torch.equal(a, b)  # dropout active
    assert int(model.bn3.num_batches_tracked) == nbt0 + 2  # stats updated twice
    assert not torch.equal(model.bn3.running_mean, mean0)
    with guard.eval_mode(model), torch.no_grad():
        c, d = model(x), model(x)
    assert torch.equal(c, d) and model.training  # eval: deterministic; restored
    y = digits.y_test
    acc_ng = float((a.argmax(1).numpy() == y).mean())
    acc_ev = float((c.argmax(1).numpy() == y).mean())
    print(f"\nrow3 torch no_grad-only acc {acc_ng:.4f} vs eval acc {acc_ev:.4f}")
    assert acc_ng < acc_ev

    # Linen has no no_grad: gradients are a transformation, the mode is a required keyword.
    state = _linen_state(trained)
    with pytest.raises(TypeError, match="train"):
        LINEN.apply({"params": state.params, "batch_stats": state.batch_stats}, jnp.zeros((2, 8, 8, 1)))


def test_row4_frozen_bn_unfrozen_by_train(digits, trained, nnx_model, monkeypatch):
    """Fine-tuning with bn1 frozen by bn1.eval(): the loop's model.train() silently unfreezes it."""
    shifted = lambda epoch: ((0.5 * x, y) for x, y in _torch_batches(digits, 256)(epoch))
    test_set = (digits.x_test, digits.y_test)

    model = _fresh(trained)
    model.bn1.eval()  # "frozen"
    mean0 = model.bn1.running_mean.clone()
    ttrain.fit(model, ttrain.make_optimizer(model), shifted, test_set, 1)
    drift = (model.bn1.running_mean - mean0).abs().max().item()
    print(f"\nrow4 torch: bn1 'frozen' running_mean drifted by up to {drift:.4f} in one epoch")
    assert drift > 1e-2

    # Guard: declared frozen + found in train mode at a step -> ModeError naming it.
    model = _fresh(trained)
    guard.mark_frozen(model.bn1)
    monkeypatch.setattr(ttrain, "train_step", guard.guarded_step(ttrain.train_step))
    with pytest.raises(guard.ModeError) as info:
        ttrain.fit(model, ttrain.make_optimizer(model), shifted, test_set, 1)
    assert info.value.frozen_in_train == ["bn1"]
    monkeypatch.undo()

    # Fix: train_mode / set_train keep marked modules in eval; the statistics stay bit-identical.
    mean0 = model.bn1.running_mean.clone()
    opt, step = ttrain.make_optimizer(model), guard.guarded_step(ttrain.train_step)
    with guard.train_mode(model):
        for xb, yb in shifted(0):
            step(model, opt, torch.from_numpy(xb), torch.from_numpy(yb))
    assert torch.equal(model.bn1.running_mean, mean0)
    assert not torch.equal(model.bn2.running_mean, trained.bn2.running_mean)

    # Linen: freezing is part of the call (use_running_average=True); no later call undoes it.
    class Net(linen.Module):
        freeze_bn1: bool = True

        @linen.compact
        def __call__(self, x, *, train: bool):
            x = linen.Dense(4, name="fc1")(x)
            x = linen.BatchNorm(use_running_average=not train or self.freeze_bn1, name="bn1")(x)
            x = linen.Dense(4, name="fc2")(x)
            return linen.BatchNorm(use_running_average=not train, name="bn2")(x)

    v = _numpy_init(Net(), jnp.ones((2, 3)), train=False)
    x8 = jnp.asarray(np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32))
    _, upd = Net().apply(v, x8, train=True, mutable=["batch_stats"])
    fguard.check_batch_stats_updated(v, upd, frozen=["bn1"])
    with pytest.raises(fguard.BatchStatsError) as info:
        fguard.check_batch_stats_updated(v, upd)
    assert info.value.layers == ["bn1"]

    # NNX: exactly torch's behaviour; nnx.view with a filter keeps it frozen.
    nnx_model.bn1.eval()
    nnx_model.train()
    assert nnx_model.bn1.use_running_average is False  # unfrozen
    with pytest.raises(fguard.ModeError):
        fguard.assert_training(nnx_model, frozen=["bn1"])
    nnx_model.bn1.eval()
    view = nnx.view(
        nnx_model, only=lambda path, _: path != ("bn1",), use_running_average=False, deterministic=False
    )
    assert view.bn1.use_running_average is True and view.bn2.use_running_average is False
    fguard.assert_training(view, frozen=["bn1"])


def test_row5_batch_of_one_in_train_mode(digits, trained):
    """torch refuses a BN batch of one value per channel; Linen/NNX silently normalise it to
    the bias: the output no longer depends on the input and every upstream gradient is 0."""
    model = _fresh(trained).train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        model(torch.from_numpy(digits.x_test[:1]))
    assert model.eval()(torch.from_numpy(digits.x_test[:1])).shape == (1, 10)

    # Linen, the project's model: a batch of one image per BN call (lax.map over 2 chunks of 1).
    state = _linen_state(trained)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = _linen_train_mode_logits(
        variables, jnp.asarray(digits.channels_last()[1][:2]), jax.random.key(0), batches=2
    )
    assert np.array_equal(logits[0], logits[1])  # two different images, the same logits

    # Why: with one value per channel, x - mean(x) == 0, so BN outputs its bias; no gradient
    # reaches the layers before it, and the running variance mixes in a batch variance of 0.
    class Net(linen.Module):
        @linen.compact
        def __call__(self, x):
            x = linen.BatchNorm(use_running_average=False, momentum=0.9, name="bn")(
                linen.Dense(4, name="fc1")(x)
            )
            return linen.Dense(3, name="fc2")(x)

    v = _numpy_init(Net(), jnp.ones((2, 5)))
    x1 = jnp.array([[0.3, -1.0, 2.0, 0.1, 0.7]])

    def loss(params):
        out, upd = Net().apply(
            {"params": params, "batch_stats": v["batch_stats"]}, x1, mutable=["batch_stats"]
        )
        return out.sum(), upd["batch_stats"]

    (_, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(v["params"])
    assert not np.any(np.asarray(grads["fc1"]["kernel"]))  # exactly zero below the BN
    assert not np.any(np.asarray(grads["bn"]["scale"]))  # scale multiplies x - mean == 0
    assert np.all(np.asarray(grads["bn"]["bias"]) != 0)  # only the bias still learns
    np.testing.assert_allclose(stats["bn"]["var"], 0.9 * np.ones(4), rtol=1e-6)

    bn = nnx.BatchNorm(4, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    out = bn(jnp.array([[1.0, -2.0, 3.0, 0.5]]))
    assert np.array_equal(out, np.zeros((1, 4))) and np.allclose(bn.var[...], 0.9)


def _forgot_batch_stats_step(state, batch, rng):
    """The row 6 bug: apply with mutable=['batch_stats'] and never store what comes back."""
    x, y = batch

    def loss(params):
        logits, _updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        return ltrain.loss_fn(logits, y)

    grads = jax.grad(loss)(state.params)
    return state.apply_gradients(grads=grads), {}


_forgot_batch_stats_step = jax.jit(_forgot_batch_stats_step)


@pytest.mark.slow  # 3.1 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_row6_linen_forgotten_batch_stats(digits, nnx_model, nnx_opt):
    """Silent in Linen: training looks normal, the running stats stay at 0/1, eval collapses."""
    x_test = digits.channels_last()[1]
    rng = jax.random.key(SEED)
    state0 = _linen_state(build_model("digits", seed=SEED, **WIDTHS))
    states = {}
    stored = partial(ltrain.train_step, train=True)
    for name, step in (("stored", stored), ("forgot", _forgot_batch_stats_step)):
        state, flagged = state0, []
        for epoch in range(3):
            before = state
            for i, batch in enumerate(_linen_batches(digits)(epoch)):
                state, _ = step(state, batch, jax.random.fold_in(jax.random.fold_in(rng, epoch), i))
            try:
                fguard.check_batch_stats_updated(before, state)  # once per epoch
            except fguard.BatchStatsError:
                flagged.append(epoch)
        states[name] = (state, flagged)
    (ok, ok_flagged), (bug, bug_flagged) = states["stored"], states["forgot"]
    assert ok_flagged == [] and bug_flagged == [0, 1, 2]
    fguard.assert_stats_tracked(ok)
    with pytest.raises(fguard.BatchStatsError):
        fguard.assert_stats_tracked(bug)
    for layer in ("bn1", "bn2", "bn3"):
        assert not np.any(np.asarray(bug.batch_stats[layer]["mean"]))
        assert np.all(np.asarray(bug.batch_stats[layer]["var"]) == 1.0)
    acc_ok = ltrain.evaluate(ok, x_test, digits.y_test)[1]
    acc_bug = ltrain.evaluate(bug, x_test, digits.y_test)[1]
    shuffled = np.random.default_rng(SEED).permutation(len(digits.y_test))
    logits = _linen_train_mode_logits(
        {"params": bug.params, "batch_stats": bug.batch_stats},
        jnp.asarray(x_test[shuffled]),
        jax.random.key(0),
        batches=15,
    )
    acc_bug_batchstats = float(np.mean(np.asarray(logits).argmax(1) == digits.y_test[shuffled]))
    print(
        f"\nrow6 Linen eval acc after 3 epochs: stored {acc_ok:.4f}, forgotten {acc_bug:.4f}; "
        f"forgotten model with batch statistics (train=True, shuffled batches of 24) {acc_bug_batchstats:.4f}"
    )
    assert acc_ok - acc_bug > 0.1
    assert acc_bug_batchstats - acc_bug > 0.05  # the weights are fine; the statistics are not

    # NNX cannot forget: its train step updates BatchStat in place (like torch's buffers).
    nnx_model.train()
    snapshot = fguard.batch_stats_of(nnx_model)  # immutable jax arrays: a free snapshot
    xb, yb = next(iter(_linen_batches(digits)(0)))
    nnx_train.train_step(nnx_model, nnx_opt, xb, yb)
    fguard.check_batch_stats_updated(snapshot, nnx_model)
    fguard.assert_stats_tracked(nnx_model)


def test_row7_linen_misuse_is_loud(digits, trained):
    """Linen: train=True without mutable, and dropout without an rng, both raise."""
    state = _linen_state(trained)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    x = jnp.asarray(digits.channels_last()[1][:BATCH])
    with pytest.raises(flax.errors.ModifyScopeVariableError, match='collection "batch_stats" is immutable'):
        jax.jit(partial(LINEN.apply, train=True, rngs={"dropout": jax.random.key(0)}))(variables, x)
    with pytest.raises(flax.errors.InvalidRngError, match='needs PRNG for "dropout"'):
        jax.jit(partial(LINEN.apply, train=True, mutable=["batch_stats"]))(variables, x)
    # NNX: BatchNorm needs nothing (in place); a Dropout built without rngs raises when used.
    with pytest.raises(ValueError, match="no `rngs` argument was provided to Dropout"):
        nnx.Dropout(0.5)(jnp.ones((2, 3)))
    # torch: both work silently; dropout draws from the global generator.
    model = _fresh(trained).train()
    assert model(torch.from_numpy(digits.x_test[:BATCH])).shape == (BATCH, 10)


@pytest.mark.slow  # 2.7 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_row8_nnx_eval_leaks_view_does_not(digits, nnx_model, nnx_opt):
    """NNX: evaluate() leaves model.eval() on, so later epochs train in eval mode, like torch;
    nnx.view gives fixed-mode views and the leak cannot happen."""
    test_set = (digits.channels_last()[1], digits.y_test)
    batches = _linen_batches(digits, 256)
    nnx_model.train()
    hist = nnx_train.fit_seed_bug(nnx_model, nnx_opt, batches, test_set, 2)
    assert [h["train_mode"] for h in hist] == [1.0, 0.0]
    with pytest.raises(fguard.ModeError) as info:
        fguard.assert_training(nnx_model)  # left in eval mode
    assert info.value.in_eval == ["bn1", "bn2", "bn3", "dropout"]
    hist = nnx_train.fit_view(nnx_model, nnx_opt, batches, test_set, 2)
    assert [h["train_mode"] for h in hist] == [1.0, 1.0]  # although the model is in eval
    assert nnx_model.bn1.use_running_average is True  # the views did not change it


@pytest.mark.slow  # 2.8 s in the idle default run of 2026-12-07: over the 2 s a default test may take
def test_row9_functional_call_and_vmap_with_batchnorm(digits):
    """torch.func: functional_call works (and mutates the buffers passed in); vmap over data
    raises on BN's in-place running-stat update; the workarounds; Linen's vmap over seeds."""
    from torch.func import functional_call, replace_all_batch_norm_modules_, stack_module_state, vmap

    torch.manual_seed(SEED)
    make = lambda: nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 10))
    model = make().train()
    x = torch.from_numpy(digits.x_train[:96].reshape(3, 32, 64))  # 3 batches of 32

    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    functional_call(model, (params, buffers), (x[0],))
    assert int(buffers["1.num_batches_tracked"]) == 1  # the passed dict was updated
    assert int(model[1].num_batches_tracked) == 0  # the module's own was not

    with pytest.raises(
        RuntimeError, match="running_mean or running_var, which will be updated in place, were not batched"
    ):
        vmap(model)(x)
    model.eval()
    assert vmap(model)(x).shape == (3, 32, 10)  # eval mode: reads only
    model.train()

    ensemble = [make() for _ in range(3)]  # batched buffers: works
    p, b = stack_module_state(ensemble)
    vmap(lambda pp, bb, xx: functional_call(ensemble[0], (pp, bb), (xx,)))(p, b, x)
    assert torch.equal(b["1.num_batches_tracked"], torch.ones(3, dtype=torch.long))

    patched = replace_all_batch_norm_modules_(copy.deepcopy(model))
    assert patched[1].running_mean is None and vmap(patched)(x).shape == (3, 32, 10)
    patched.eval()  # no running stats left:
    alone = patched(x[0])[:1]
    with_others = patched(torch.cat([x[0][:1], x[1]]))[:1]
    assert not torch.allclose(alone, with_others)  # eval output depends on the batch

    # Linen: vmap over seeds. The statistics are an input and an output with a seed axis, like
    # any other value (flax_impl.linen_train.train_epoch_scan_seeds does this for whole epochs).
    variables = [
        jax.tree.map(jnp.asarray, torch_to_linen(m.state_dict(), m))
        for m in (build_model("digits", seed=s, **WIDTHS) for s in (0, 1))
    ]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *variables)
    xs = jnp.asarray(digits.channels_last()[0][: 2 * BATCH]).reshape(2, BATCH, 8, 8, 1)
    per_seed = jax.jit(
        jax.vmap(
            lambda v, xb, key: LINEN.apply(v, xb, train=True, mutable=["batch_stats"], rngs={"dropout": key})
        )
    )
    logits, updates = per_seed(stacked, xs, jax.random.split(jax.random.key(0), 2))
    assert logits.shape == (2, BATCH, 10)
    mean = np.asarray(updates["batch_stats"]["bn1"]["mean"])
    assert mean.shape == (2, 4) and not np.array_equal(mean[0], mean[1])
    fguard.check_batch_stats_updated(stacked, updates)  # every seed's statistics moved
