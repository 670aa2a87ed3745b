"""The runtime mode guards: ``torch_impl.guard`` (eval_mode, assert_training, guarded_step,
mark_frozen) and ``flax_impl.guard`` (the Linen batch_stats checks and the NNX mode check).

Rows of the catalogue that exercise these guards on real training loops live in
``tests/test_mode_bugs.py``; this file checks the guards' own contracts on tiny models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from flax_impl import guard as fguard
from flax_impl import linen_models, nnx_models
from flax_impl import linen_train as ltrain
from parity.convert import torch_to_linen
from torch_impl import guard
from torch_impl.models import DigitsCNN


def _modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def _tiny() -> DigitsCNN:
    torch.manual_seed(0)
    return DigitsCNN(channels=(4, 8), hidden=16)


# ------------------------------------------------------------------------ eval_mode (torch)


def test_eval_mode_restores_every_flag_and_keeps_a_frozen_bn_frozen():
    model = _tiny().train()
    model.bn1.eval()  # frozen on purpose
    before = _modes(model)
    assert before["bn1"] is False and before[""] is True
    with guard.eval_mode(model) as m:
        assert m is model
        assert not any(_modes(model).values())  # everything in eval inside
        model(torch.zeros(2, 1, 8, 8))
    assert _modes(model) == before  # exactly, bn1 still frozen


def test_naive_eval_then_train_unfreezes_the_frozen_bn():
    """The pattern eval_mode replaces: model.eval(); ...; model.train() loses bn1's freeze."""
    model = _tiny().train()
    model.bn1.eval()
    model.eval()
    model.train()
    assert model.bn1.training is True


def test_eval_mode_restores_on_exception_and_from_eval():
    model = _tiny().train()
    model.dropout.eval()
    before = _modes(model)
    with pytest.raises(KeyError), guard.eval_mode(model):
        raise KeyError("boom")
    assert _modes(model) == before
    model.eval()  # a model already in eval stays in eval
    with guard.eval_mode(model):
        pass
    assert not any(_modes(model).values())


def test_train_mode_keeps_marked_modules_frozen_and_restores():
    model = _tiny().eval()
    guard.mark_frozen(model.bn2)
    with guard.train_mode(model):
        modes = _modes(model)
        assert modes["bn2"] is False and modes["bn1"] is True and modes["dropout"] is True
    assert not any(_modes(model).values())


# ------------------------------------------------------------------- assert_training (torch)


def test_assert_training_names_every_module_in_eval_mode():
    model = _tiny().train()
    guard.assert_training(model)  # all in train mode: passes
    model.bn2.eval()
    model.dropout.eval()
    with pytest.raises(guard.ModeError) as info:
        guard.assert_training(model)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.in_eval == ["bn2", "dropout"] and err.frozen_in_train == []
    assert "bn2 (BatchNorm2d)" in str(err) and "dropout (Dropout)" in str(err)
    assert "bn1" not in str(err)


def test_assert_training_after_an_evaluation_helper():
    """The seed's bug in one line: the evaluation helper leaves eval mode on."""
    from torch_impl.train import evaluate

    model = _tiny().train()
    evaluate(model, np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int32))
    with pytest.raises(guard.ModeError) as info:
        guard.assert_training(model)
    assert info.value.in_eval == ["bn1", "bn2", "bn3", "dropout"]


def test_assert_training_allows_frozen_by_name_object_container_or_mark():
    model = _tiny().train()
    model.bn1.eval()
    guard.assert_training(model, frozen=["bn1"])
    guard.assert_training(model, frozen=[model.bn1])
    with pytest.raises(guard.ModeError):
        guard.assert_training(model)

    seq = nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), nn.Dropout(0.1)).train()
    seq[0].eval()  # a frozen block
    guard.assert_training(seq, frozen=["0"])  # the container covers its BN
    with pytest.raises(guard.ModeError) as info:
        guard.assert_training(seq)
    assert info.value.in_eval == ["0.1"]

    guard.mark_frozen(model.bn1)
    guard.assert_training(model)  # the mark is read off the module
    guard.unmark_frozen(model.bn1)
    with pytest.raises(guard.ModeError):
        guard.assert_training(model)


def test_assert_training_reports_a_frozen_module_put_back_in_train_mode():
    model = _tiny()
    guard.mark_frozen(model.bn1)
    model.train()  # silently unfreezes bn1 (row 4)
    with pytest.raises(guard.ModeError) as info:
        guard.assert_training(model)
    assert info.value.frozen_in_train == ["bn1"] and info.value.in_eval == []
    assert "declared frozen" in str(info.value)
    guard.assert_training(model, check_frozen=False)
    guard.set_train(model)  # the fine-tuning-safe model.train()
    assert model.bn1.training is False and model.bn2.training is True
    guard.assert_training(model)


def test_assert_training_rejects_unknown_frozen_names():
    model = _tiny().train()
    with pytest.raises(ValueError, match="bn9"):
        guard.assert_training(model, frozen=["bn9"])
    with pytest.raises(ValueError, match="not a submodule"):
        guard.assert_training(model, frozen=[nn.BatchNorm1d(3)])


# ---------------------------------------------------------------------- guarded_step (torch)


def test_guarded_step_checks_the_first_argument_or_the_given_model():
    from torch_impl.train import make_optimizer, train_step

    model = _tiny().train()
    opt = make_optimizer(model)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    step = guard.guarded_step(train_step)
    assert step.__name__ == "train_step"
    assert torch.isfinite(step(model, opt, x, y))
    model.eval()
    w = model.fc2.weight.detach().clone()
    with pytest.raises(guard.ModeError):
        step(model, opt, x, y)
    assert torch.equal(model.fc2.weight, w)  # raised before the step ran

    calls = []

    @guard.guarded_step(model=model, frozen=["bn3"])
    def closure_step():
        calls.append(1)

    model.train()
    model.bn3.eval()
    closure_step()
    assert calls == [1]
    with pytest.raises(TypeError, match="model="):
        guard.guarded_step(model)


def test_training_guard_catches_the_seed_loop_without_editing_it():
    from parity import data
    from torch_impl.train import fit, fit_seed_bug, make_optimizer

    ds = data.load("digits")
    batches = lambda epoch: data.iterate_batches(ds.x_train[:128], ds.y_train[:128], 32, 0, epoch)
    test_set = (ds.x_test[:64], ds.y_test[:64])
    model, done = _tiny(), []
    with pytest.raises(guard.ModeError) as info, guard.training_guard(model):
        fit_seed_bug(model, make_optimizer(model), batches, test_set, 2, on_epoch=done.append)
    assert len(done) == 1 and info.value.in_eval == ["bn1", "bn2", "bn3", "dropout"]
    assert not model._forward_pre_hooks  # removed on exit, even on error
    model = _tiny()
    with guard.training_guard(model):  # evaluate() runs under no_grad: not checked
        assert len(fit(model, make_optimizer(model), batches, test_set, 2)) == 2
    with pytest.raises(ValueError, match="bn9"), guard.training_guard(model, frozen=["bn9"]):
        pass
    # recording instead of raising: the run goes on, every offending step is reported
    model, seen = _tiny(), []
    with guard.training_guard(model, on_violation=seen.append):
        assert len(fit_seed_bug(model, make_optimizer(model), batches, test_set, 2)) == 2
    assert len(seen) == 4 and all(e.in_eval == ["bn1", "bn2", "bn3", "dropout"] for e in seen)


# -------------------------------------------------------------------- Linen batch_stats guard
# The guard's contract on hand-made states; the real training loops (the project's train_step
# passes, a dropped update and fit_bug_emulated are flagged) are rows 1 and 6 of test_mode_bugs.


def _linen_state() -> ltrain.TrainState:
    """A Linen TrainState with the tiny torch model's weights; BN statistics at 0 / 1."""
    tm = _tiny()
    variables = jax.tree.map(jnp.asarray, torch_to_linen(tm.state_dict(), tm))
    model = linen_models.build_model("digits", channels=(4, 8), hidden=16)
    return ltrain.create_train_state(model, variables, ltrain.make_optimizer())


def _moved(batch_stats: dict, layers=("bn1", "bn2", "bn3")) -> dict:
    """``batch_stats`` with the running mean of ``layers`` moved, as a stored update would."""
    return {
        k: ({"mean": v["mean"] + 0.1, "var": v["var"]} if k in layers else v) for k, v in batch_stats.items()
    }


def test_batch_stats_guard_flags_unchanged_layers_by_name():
    state = _linen_state()
    with pytest.raises(fguard.BatchStatsError) as info:
        fguard.assert_stats_tracked(state)  # a fresh state is at 0 / 1
    assert info.value.layers == ["bn1", "bn2", "bn3"]

    stored = state.replace(batch_stats=_moved(state.batch_stats))
    fguard.check_batch_stats_updated(state, stored)
    fguard.assert_stats_tracked(stored)

    with pytest.raises(fguard.BatchStatsError) as info:
        fguard.check_batch_stats_updated(state, state.replace(step=1))  # update never stored
    assert info.value.layers == ["bn1", "bn2", "bn3"]
    assert "did not store" in str(info.value)

    partial = state.replace(batch_stats=_moved(state.batch_stats, ("bn1", "bn3")))
    with pytest.raises(fguard.BatchStatsError) as info:
        fguard.check_batch_stats_updated(state, partial)
    assert info.value.layers == ["bn2"]
    with pytest.raises(fguard.BatchStatsError) as info:
        fguard.assert_stats_tracked(partial)
    assert info.value.layers == ["bn2"]
    fguard.check_batch_stats_updated(state, partial, frozen=["bn2"])
    fguard.assert_stats_tracked(partial, frozen=["bn2"])
    with pytest.raises(ValueError, match="bn7"):
        fguard.check_batch_stats_updated(state, partial, frozen=["bn7"])


def test_batch_stats_guard_accepts_states_variable_dicts_and_trees():
    state = _linen_state()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    moved = _moved(state.batch_stats)
    fguard.check_batch_stats_updated(variables, moved)
    fguard.check_batch_stats_updated(state.batch_stats, {"batch_stats": moved})
    with pytest.raises(fguard.BatchStatsError):
        fguard.check_batch_stats_updated(variables, dict(state.batch_stats))
    assert set(fguard.batch_stats_of(state)) == {f"bn{i}/{s}" for i in (1, 2, 3) for s in ("mean", "var")}
    with pytest.raises(TypeError):
        fguard.batch_stats_of(42)
    with pytest.raises(ValueError, match="no BatchNorm"):
        fguard.batch_stats_of({"batch_stats": {}})
    with pytest.raises(ValueError, match="different BatchNorm statistics"):
        fguard.check_batch_stats_updated(state, {k: v for k, v in moved.items() if k != "bn3"})


# ------------------------------------------------------------------------- NNX guard


def test_nnx_guard_names_modules_in_the_wrong_mode():
    """Modes are static attributes, so an abstract model (``nnx.eval_shape``: nothing compiled)
    is enough; BatchStat checks on a real NNX model are in rows 2 and 6 of test_mode_bugs."""
    from flax import nnx

    model = nnx.eval_shape(lambda: nnx_models.build_model("digits", seed=0, channels=(4, 8), hidden=16))
    model.train()
    fguard.assert_training(model)
    model.eval()
    with pytest.raises(fguard.ModeError) as info:
        fguard.assert_training(model)
    assert info.value.in_eval == ["bn1", "bn2", "bn3", "dropout"]
    assert "bn1, bn2, bn3, dropout" in str(info.value)
    model.train()
    model.bn1.eval()
    fguard.assert_training(model, frozen=["bn1"])
    model.train()  # unfreezes bn1, as in torch
    with pytest.raises(fguard.ModeError) as info:
        fguard.assert_training(model, frozen=["bn1"])
    assert info.value.frozen_in_train == ["bn1"] and info.value.in_eval == []
    fguard.assert_training(model, frozen=["bn1"], check_frozen=False)
    with pytest.raises(ValueError, match="nope"):
        fguard.assert_training(model, frozen=["nope"])
