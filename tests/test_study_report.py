"""The study's reading says only what its numbers support: each conditional claim is checked on
hand-made results where it must appear and where it must not."""

from __future__ import annotations

import math

import pytest

from parity.study.config import VARIANTS
from parity.study.reading import fits_more_generalises_less, reading, versus_paper
from parity.study.report import markdown_table
from parity.study.stats import fisher_exact_p, summarize


def _results(curves: dict[str, list[dict]], dataset: str = "digits") -> dict:
    """variant -> per-seed ``{"acc": [...], "loss": [...]}`` (one value per epoch) -> a result."""
    variants = {}
    for v, seeds in curves.items():
        runs = []
        for i, c in enumerate(seeds):
            epochs = [
                {
                    "epoch": e,
                    "train_loss": c["loss"][e],
                    "test_loss": 1.0,
                    "test_acc": a,
                    "train_mode": 1.0 if VARIANTS[v][1] or e == 0 else 0.0,
                    "diverged": False,
                }
                for e, a in enumerate(c["acc"])
            ]
            runs.append({"seed": i, "diverged": False, "diverged_epoch": None, "epochs": epochs})
        variants[v] = {
            "framework": VARIANTS[v][0],
            "correct": VARIANTS[v][1],
            "path": "torch",
            "wall_time_s": 1.0,
            "seeds": runs,
        }
    epochs = len(next(iter(curves.values()))[0]["acc"])
    return {"config": {"epochs": epochs, "dataset": dataset}, "variants": variants}


def _seeds(final_accs: list[float], final_losses: list[float], epochs: int = 6) -> list[dict]:
    """Seeds whose curves rise to ``final_accs`` with last train losses ``final_losses``."""
    return [
        {
            "acc": [0.5 + (a - 0.5) * e / (epochs - 1) for e in range(epochs)],
            "loss": [1.0] * (epochs - 1) + [loss],
        }
        for a, loss in zip(final_accs, final_losses, strict=True)
    ]


def _text(res: dict) -> str:
    return "\n".join(reading(res, summarize(res)))


GOOD = _seeds([0.95, 0.96, 0.94, 0.95], [0.010, 0.012, 0.011, 0.009])


def test_generalises_less_only_when_both_paired_intervals_exclude_zero():
    clear = _seeds([0.92, 0.93, 0.91, 0.92], [0.001, 0.002, 0.0015, 0.001])  # ~3 points lower, every seed
    res = _results({"torch_correct": GOOD, "torch_seed_bug": clear})
    assert fits_more_generalises_less(summarize(res)["torch_seed_bug"], summarize(res)["torch_correct"])
    assert "generalises less" in _text(res)
    # lower train loss and lower mean accuracy, but the accuracy CI includes zero: no claim
    noisy = _seeds([0.99, 0.90, 0.97, 0.91], [0.001, 0.002, 0.0015, 0.001])
    res = _results({"torch_correct": GOOD, "torch_seed_bug": noisy})
    s = summarize(res)
    assert s["torch_seed_bug"]["final_acc"]["mean"] < s["torch_correct"]["final_acc"]["mean"]
    assert s["torch_seed_bug"]["diff_vs_torch_correct"]["ci"][1] > 0
    assert "generalises less" not in _text(res)
    # lower accuracy for sure, but the train loss is not lower in every pairing's CI
    mixed = _seeds([0.92, 0.93, 0.91, 0.92], [0.001, 0.05, 0.0015, 0.03])
    assert "generalises less" not in _text(_results({"torch_correct": GOOD, "torch_seed_bug": mixed}))


@pytest.mark.parametrize(
    "acc, says, never",
    [
        (0.963, "a few points above theirs (+2.3)", "below theirs"),
        (0.9353, "within a point of theirs (-0.5)", "a few points above"),
        (0.90, "4.0 points below theirs", "a few points above"),
        (0.995, "5.5 points above theirs", "a few points above"),
    ],
)
def test_the_comparison_with_the_published_cnn_holds_for_the_number(acc, says, never):
    text = versus_paper(acc)
    assert says in text
    assert never not in text


def test_external_check_of_a_short_run_below_94_does_not_claim_a_few_points_above():
    from parity.study.reading import external_check

    res = _results({"torch_correct": _seeds([0.935, 0.93, 0.94], [0.1] * 3)}, dataset="mnist1d")
    res["model"] = {"params": 89962}
    res["config"]["model_config"] = {}
    text = external_check(res, summarize(res))
    assert "a few points above" not in text and "within a point of theirs" in text


def _fisher_by_hand(fa: int, na: int, fb: int, nb: int) -> float:
    """Two-sided Fisher p from its definition: the hypergeometric probabilities of every table with
    the same margins that is no more likely than the observed one, summed (exact integers)."""
    k, n = fa + fb, na + nb
    prob = {x: math.comb(na, x) * math.comb(nb, k - x) for x in range(max(0, k - nb), min(k, na) + 1)}
    return sum(p for p in prob.values() if p <= prob[fa]) / math.comb(n, k)


def test_fisher_exact_has_the_published_value_and_the_hand_computed_ones():
    # Fisher's lady tasting tea, [[3, 1], [1, 3]]: two-sided p = 34/70 = 0.4857 (Fisher 1935)
    assert fisher_exact_p(3, 4, 1, 4) == pytest.approx(34 / 70, rel=1e-9)
    for table in [(1, 24, 0, 24), (5, 24, 0, 24), (3, 8, 1, 8), (0, 8, 0, 8), (8, 8, 0, 8), (13, 64, 0, 16)]:
        assert fisher_exact_p(*table) == pytest.approx(_fisher_by_hand(*table), rel=1e-9), table
    # 5/24 vs 0/24: only x = 5 and its mirror x = 0 are as unlikely: 2 C(24, 5) / C(48, 5) = 0.0496
    assert fisher_exact_p(5, 24, 0, 24) == pytest.approx(2 * math.comb(24, 5) / math.comb(48, 5), rel=1e-9)


def test_a_stability_cost_is_claimed_only_when_the_failure_rates_differ():
    collapse = {"acc": [0.5, 0.6, 0.4, 0.2, 0.1, 0.1], "loss": [2.3] * 6}
    one_failure = _results({"torch_correct": GOOD, "torch_seed_bug": GOOD[:3] + [collapse]})
    text = _text(one_failure)
    assert "seed bug 1/4, correct 0/4" in text and "p = 1" in text
    assert "cost in stability" not in text.replace("no cost in stability", "")
    many = {"torch_correct": GOOD * 3, "torch_seed_bug": [collapse] * 8 + GOOD}
    text = _text(_results(many))
    assert "seed bug 8/12, correct 0/12" in text and "a cost in stability" in text
    assert "no run failed, so this study shows no cost in stability" in _text(
        _results({"torch_correct": GOOD, "torch_seed_bug": GOOD})
    )


def test_an_audit_with_nothing_after_epoch_one_is_not_measured_not_matching():
    one_epoch = {v: [{"acc": [0.7], "loss": [1.0]}] * 2 for v in ("torch_correct", "torch_seed_bug")}
    res = _results(one_epoch)
    s = summarize(res)
    assert s["torch_seed_bug"]["audit"]["as_expected"] is None
    text = _text(res)
    assert "Every variant matches" not in text and "matches its expectation" not in text
    assert "Not measured after epoch 1 for `torch_correct`, `torch_seed_bug`" in text
    assert "not measured" in markdown_table(s) and "UNEXPECTED" not in markdown_table(s)
    # a wrong epoch-1 mode is still a contradiction, measured
    res["variants"]["torch_correct"]["seeds"][0]["epochs"][0]["train_mode"] = 0.0
    assert summarize(res)["torch_correct"]["audit"]["as_expected"] is False


def test_the_cli_exit_code_treats_not_measured_as_no_contradiction(tmp_path, capsys):
    from parity import cli

    argv = ["study", "--dataset", "digits", "--seeds", "1", "--epochs", "1", "--variants", "torch_seed_bug"]
    code = cli.main([*argv, "--device", "cpu", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    report = (tmp_path / "report.md").read_text()
    assert (
        "Not measured after epoch 1 for `torch_seed_bug`" in report and "Every variant matches" not in report
    )


def test_frameworks_agree_up_to_seed_noise_only_where_the_interval_includes_zero():
    shifted = _seeds([0.98, 0.99, 0.97, 0.98], [0.01] * 4)  # 3 points above in every seed
    text = _text(_results({"torch_correct": GOOD, "linen": shifted, "nnx_view": GOOD}))
    assert "`linen` − `torch_correct` differs by more (the 95% CI excludes zero)" in text
    assert "every interval includes zero" not in text
    text = _text(_results({"torch_correct": GOOD, "nnx_view": GOOD[1:] + GOOD[:1]}))
    assert "every interval includes zero" in text and "differs by more" not in text


def test_an_interval_that_includes_zero_is_not_called_seed_noise_when_it_is_wide():
    # 3 seeds whose paired differences are -12, +9, -2 points: mean -1.67, 95% CI about [-28, +25]
    wide = _results({"torch_correct": GOOD[:3], "torch_seed_bug": _seeds([0.83, 1.05, 0.92], [0.01] * 3)})
    text = _text(wide)
    assert "not distinguishable from zero" in text and "points are all consistent with these seeds" in text
    assert "seed noise" not in text.split("**Frameworks.**")[0]
    # differences of -0.1, +0.1, 0.0 points: a CI of about +-0.25 points bounds the effect
    narrow = _results({"torch_correct": GOOD[:3], "torch_seed_bug": _seeds([0.949, 0.961, 0.94], [0.01] * 3)})
    text = _text(narrow)
    assert "not distinguishable from zero; any effect at the last epoch is under 0.2" in text
