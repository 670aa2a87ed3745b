"""``parity sweep`` without training: its outputs from hand-made cell results.

A fake ``train`` turns each cell's :class:`StudyConfig` into a study result whose curves are
chosen here, so the schema, the resume rule, the atomic cell files, the collapse counting (with
exact binomial intervals) and the CI-conditioned reading are checked in milliseconds. The real
training of a cell is covered by tests/test_study_models.py.
"""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import binomtest

from parity import io as parity_io
from parity.cli import main
from parity.study.runners import VARIANTS, StudyConfig
from parity.sweep import runner
from parity.sweep.grid import SweepConfig, cell_id
from parity.sweep.outputs import write_summary_files
from parity.sweep.report import distinct_sentence, effect_sentences, render
from parity.sweep.summary import binomial_ci, cell_summary

GRID = SweepConfig(
    models=("signal1d", "resnet20"),
    schedules=("epoch", "end"),
    seeds=4,
    epochs=3,
    variants=("torch_correct", "torch_seed_bug", "nnx_seed_bug"),
)
#: seeds of nnx_seed_bug that learn, then fall to chance (collapse), in every cell
COLLAPSING = (1, 3)


def _curve(variant: str, seed: int, every) -> list[float]:
    """Test accuracy per epoch: torch_correct 0.8-0.9; the seed's bug 5-6 points lower when the
    loop evaluates inside training, the same as torch_correct under ``end``; two nnx seeds collapse."""
    base = [0.70 + 0.01 * seed, 0.80 + 0.01 * seed, 0.90 - 0.01 * seed]
    if variant == "nnx_seed_bug" and seed in COLLAPSING:
        return [0.6, 0.3, 0.1]
    if VARIANTS[variant][1] or every == "end":
        return base
    return [base[0], base[1] - 0.10 - 0.01 * (seed % 2), base[2] - 0.05 - 0.01 * (seed % 2)]


def fake_train(config: StudyConfig) -> dict:
    """A :func:`parity.study.run_study`-shaped result for ``config``, no training."""
    variants = {}
    for v in config.variants:
        seeds = []
        for seed in config.seed_list:
            epochs = [
                {
                    "epoch": e,
                    "train_loss": 1.0 / (e + 1),
                    "test_loss": 1.0,
                    "test_acc": acc,
                    "train_mode": 1.0 if VARIANTS[v][1] or e == 0 or config.eval_every == "end" else 0.0,
                    "diverged": False,
                    "evals": [],
                }
                for e, acc in enumerate(_curve(v, seed, config.eval_every)[: config.epochs])
            ]
            seeds.append({"seed": seed, "diverged": False, "diverged_epoch": None, "epochs": epochs})
        framework, correct, _ = VARIANTS[v]
        variants[v] = {
            "framework": framework,
            "correct": correct,
            "path": framework,
            "wall_time_s": 1.0,
            "seeds": seeds,
        }
    return {
        "config": config.to_dict(),
        "environment": {"device": "cpu", "cpu_count": 2},
        "model": {"name": config.model_name, "params": 1, "num_classes": 10, "steps_per_epoch": 4},
        "total_wall_time_s": 2.0,
        "variants": variants,
    }


class Counting:
    def __init__(self) -> None:
        self.cells: list[str] = []

    def __call__(self, config: StudyConfig) -> dict:
        self.cells.append(cell_id(config.model, config.eval_every))
        return fake_train(config)


def test_sweep_json_has_every_cell_its_effects_and_collapse_totals(tmp_path):
    document = runner.run_sweep(GRID, tmp_path, progress=False, train=fake_train)
    on_disk = json.loads((tmp_path / "sweep.json").read_text())
    assert on_disk["complete"] and on_disk["schema"] == 1
    assert [c["cell"] for c in on_disk["cells"]] == [cell_id(m, e) for m, e in GRID.cells()]
    for cell in on_disk["cells"]:
        assert set(cell) >= {"model", "dataset", "eval_every", "params", "wall_time_s", "variants"}
        assert list(cell["variants"]) == list(GRID.variants)
        for s in cell["variants"].values():
            assert set(s) >= {
                "final_acc",
                "epoch2_acc",
                "effect_last",
                "effect_epoch2",
                "collapse",
                "audit_as_expected",
            }
            assert s["audit_as_expected"] is True
    bug = on_disk["cells"][0]["variants"]["torch_seed_bug"]
    assert bug["effect_last"]["mean"] == pytest.approx(-0.055) and bug["effect_last"]["ci"][1] < 0
    assert bug["effect_epoch2"]["mean"] == pytest.approx(-0.105)
    assert on_disk["cells"][1]["variants"]["torch_seed_bug"]["effect_last"]["mean"] == pytest.approx(0.0)
    assert document["collapse_totals"] == on_disk["collapse_totals"]
    for name in ("cells/signal1d-eval-epoch.json", "cells/resnet20-eval-end.json"):
        assert json.loads((tmp_path / name).read_text())["results"]["config"]["model"] in GRID.models


def test_collapse_counting_on_a_constructed_case_with_exact_binomial_intervals(tmp_path):
    cell = cell_summary(fake_train(GRID.study("signal1d", "epoch")))
    nnx = cell["variants"]["nnx_seed_bug"]
    assert nnx["collapsed_seeds"] == list(COLLAPSING)
    expected = binomtest(2, 4).proportion_ci(method="exact")
    assert nnx["collapse"]["k"] == 2 and nnx["collapse"]["n"] == 4
    assert nnx["collapse"]["ci"] == pytest.approx((expected.low, expected.high))
    assert cell["variants"]["torch_correct"]["collapse"]["k"] == 0
    assert binomial_ci(0, 0)["ci"] is None
    assert binomial_ci(0, 8)["ci"][1] == pytest.approx(1 - 0.025 ** (1 / 8))  # Clopper-Pearson, k = 0


def test_the_headline_counts_each_distinct_run_once(tmp_path):
    # 2 models x (epoch, end) x 4 seeds. torch_correct trains one run per model and seed, whatever
    # the schedule (8 runs, not 16); under `end` torch_seed_bug is that same run (its paired
    # differences are exactly zero), so it is not a second one; nnx_seed_bug's seeds 1 and 3
    # collapse in every cell: 4/8 leaking (epoch) + torch_seed_bug 0/8 leaking, 4/8 in the control.
    document = runner.run_sweep(GRID, tmp_path, progress=False, train=fake_train)
    got = {g: (c["k"], c["n"]) for g, c in document["distinct_collapses"].items()}
    assert got == {"seed_bug_leaking": (4, 16), "correct": (0, 8), "seed_bug_control": (4, 8)}
    # Fisher's exact test on [[4, 12], [0, 8]] by hand: P(X = x) = C(16, x) C(8, 4 - x) / C(24, 4)
    # = (70, 896, 3360, 4480, 1820) / 10626 for x = 0..4; two-sided p sums the tables no likelier
    # than the observed x = 4: (1820 + 896 + 70) / 10626 = 0.2622
    sentence = distinct_sentence(document["distinct_collapses"])
    assert (
        "collapsed 4/16, correct runs 0/8, seed-bug runs that no evaluation reached (the control) 4/8"
        in sentence
    )
    assert f"p = {2786 / 10626:.2g}" in sentence and "cannot tell" in sentence
    # the old count, 8/16 seed-bug vs 0/16 correct, counted torch_correct once per schedule
    assert document["collapse_totals"]["torch_correct"]["n"] == 8 * len(GRID.schedules)


def test_a_seed_bug_run_under_end_is_a_run_of_its_own_when_it_differs_from_torch_correct(tmp_path):
    def shifted(config: StudyConfig) -> dict:  # the `end` torch_seed_bug run differs by one point
        results = fake_train(config)
        if config.eval_every == "end":
            for seed in results["variants"]["torch_seed_bug"]["seeds"]:
                seed["epochs"][-1]["test_acc"] -= 0.01
        return results

    document = runner.run_sweep(GRID, tmp_path, progress=False, train=shifted)
    got = {g: (c["k"], c["n"]) for g, c in document["distinct_collapses"].items()}
    assert got == {"seed_bug_leaking": (4, 16), "correct": (0, 8), "seed_bug_control": (4, 16)}


def test_a_significant_difference_over_distinct_runs_is_claimed():
    # 13/64 leaking vs 0/32 correct: p = 0.0040 by the hypergeometric sums
    distinct = {
        "seed_bug_leaking": binomial_ci(13, 64),
        "correct": binomial_ci(0, 32),
        "seed_bug_control": binomial_ci(0, 0),
    }
    sentence = distinct_sentence(distinct)
    assert "collapse more often than the correct runs" in sentence and "the control" not in sentence
    none = {g: binomial_ci(0, 6) for g in distinct}
    assert distinct_sentence(none).endswith(
        "no run collapsed, so there is no difference in collapse rate to test."
    )


def test_a_finished_cell_is_not_trained_again(tmp_path):
    first = Counting()
    runner.run_sweep(GRID, tmp_path, progress=False, train=first)
    assert len(first.cells) == 4
    again = Counting()
    document = runner.run_sweep(GRID, tmp_path, progress=False, train=again)
    assert again.cells == [] and len(document["resumed_cells"]) == 4 and document["complete"]
    (tmp_path / "cells" / "resnet20-eval-epoch.json").unlink()
    (tmp_path / "cells" / "signal1d-eval-end.json").write_text('{"study_config": ')  # torn by hand
    third = Counting()
    runner.run_sweep(GRID, tmp_path, progress=False, train=third)
    assert third.cells == ["signal1d-eval-end", "resnet20-eval-epoch"]
    longer = Counting()  # another configuration: no cell of it is finished
    runner.run_sweep(
        GRID.__class__(**{**GRID.to_dict(), "epochs": 2}), tmp_path, progress=False, train=longer
    )
    assert len(longer.cells) == 4


def test_an_interrupted_cell_leaves_no_partial_file(tmp_path, monkeypatch):
    calls = Counting()

    def interrupted(config: StudyConfig) -> dict:
        if len(calls.cells) == 2:
            raise KeyboardInterrupt
        return calls(config)

    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(GRID, tmp_path, progress=False, train=interrupted)
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == [
        "signal1d-eval-end.json",
        "signal1d-eval-epoch.json",
    ]
    assert not json.loads((tmp_path / "sweep.json").read_text())["complete"]

    real_dumps = json.dumps

    def dies_while_writing(obj, *a, **k):  # the interrupt arrives while the cell's file is written
        text = real_dumps(obj, *a, **k)
        if "study_config" in obj:
            raise KeyboardInterrupt
        return text

    monkeypatch.setattr(parity_io.json, "dumps", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(GRID, tmp_path, progress=False, train=Counting())
    names = sorted(p.name for p in (tmp_path / "cells").iterdir())
    assert names == ["signal1d-eval-end.json", "signal1d-eval-epoch.json"]  # no resnet20 file, no .tmp


def test_the_reading_writes_a_sentence_only_where_the_interval_excludes_zero(tmp_path):
    document = runner.run_sweep(GRID, tmp_path, progress=False, train=fake_train)
    last = effect_sentences(document, "effect_last", "at the last epoch")
    claimed = [s for s in last if "excludes 0" in s]
    assert len(claimed) == 2 and all(
        "evaluation after every epoch" in s and "torch_seed_bug" in s for s in claimed
    )
    assert (
        last[-1]
        == "- No seed-bug effect at the last epoch distinguishable from zero in: signal1d-eval-end, resnet20-eval-end."
    )
    text = render(document)
    assert "shows no last-epoch effect distinguishable from zero in any of its 2 cells" in text
    assert (
        "Fisher's exact test of leaking seed-bug against correct runs" in text
        and "`nnx_seed_bug` 8/16" in text
    )
    paths = write_summary_files(document, tmp_path)
    assert (
        paths["png"].stat().st_size > 0
        and "| signal1d | epoch | `torch_seed_bug` |" in paths["md"].read_text()
    )
    assert not math.isnan(document["wall_time_s"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "resnet99"], "unknown name 'resnet99'"),
        (["--schedules", "0"], "a number of training steps >= 1"),
        (["--variants", "torch_seed_bug"], "include it"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    try:
        code = main(["sweep", *argv, "--out", str(tmp_path)])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_only_the_sweeps_own_temporary_files_are_removed(tmp_path):
    # before: every `.*.tmp` in --out and --out/cells was deleted, the user's own files included
    (tmp_path / "cells").mkdir()
    mine = [tmp_path / ".notes.tmp", tmp_path / "cells" / ".draft.tmp", tmp_path / ".sweep.json.mine.tmp"]
    leftovers = [
        tmp_path / ".sweep.json.ab12cd_3.tmp",
        tmp_path / "cells" / ".signal1d-eval-end.json.zz9y8x7w.tmp",
    ]
    for path in mine + leftovers:
        path.write_text("x")
    runner.run_sweep(GRID, tmp_path, progress=False, train=fake_train)
    assert all(p.read_text() == "x" for p in mine)
    assert not any(p.exists() for p in leftovers)
