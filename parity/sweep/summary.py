"""The sweep's numbers: per cell and variant, the paired effects and the collapse counts.

**Collapse rule** (the one ``parity study``'s summary applies, so both commands count the same
runs): a seed *collapsed* when its training loss stayed finite (it did not diverge), its test
accuracy was above twice chance (20% for 10 classes) at some epoch, and at the last epoch it is
at or below twice chance. Counts come with an exact (Clopper-Pearson) 95% binomial interval,
``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``.
"""

from __future__ import annotations

from typing import Any

from parity.study.stats import expected_train_mode, summarize


def binomial_ci(k: int, n: int) -> dict:
    """``{'k', 'n', 'rate', 'ci': [low, high]}``: ``k`` events in ``n`` runs with the exact 95%
    Clopper-Pearson interval (``rate``/``ci`` ``None`` when ``n`` is 0)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci": None}
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return {"k": k, "n": n, "rate": k / n, "ci": [float(ci.low), float(ci.high)]}


def _ci(stat: dict | None) -> dict | None:
    """``{'n', 'mean', 'ci'}`` of a :func:`parity.study.stats.mean_ci` result (std dropped)."""
    if not stat or stat["mean"] is None:
        return None
    return {"n": stat["n"], "mean": stat["mean"], "ci": None if stat["ci"] is None else list(stat["ci"])}


def cell_summary(results: dict) -> dict[str, Any]:
    """One cell's entry of ``sweep.json`` from its :func:`parity.study.run_study` results:
    per variant the last-epoch and epoch-2 accuracy, the paired differences against
    ``torch_correct`` (95% t intervals), the audit verdict, and the collapse count with its
    exact binomial interval."""
    summary = summarize(results)
    variants = {}
    for v, s in summary.items():
        collapsed = len(s["collapsed_seeds"])
        variants[v] = {
            "correct": s["correct"],
            "final_acc": _ci(s["final_acc"]),
            "epoch2_acc": _ci(s["epoch2_acc"]),
            "effect_last": _ci(s.get("diff_vs_torch_correct")),
            "effect_epoch2": _ci(s.get("epoch2_diff_vs_torch_correct")),
            "collapsed_seeds": s["collapsed_seeds"],
            "diverged_seeds": s["diverged_seeds"],
            "collapse": binomial_ci(collapsed, s["seeds"]),
            "audit_as_expected": s["audit"]["as_expected"],
        }
    c, m = results["config"], results["model"]
    return {
        "model": c["model"],
        "dataset": c["dataset"],
        "eval_every": c["eval_every"],
        "params": m["params"],
        "steps_per_epoch": m["steps_per_epoch"],
        "wall_time_s": results["total_wall_time_s"],
        "variants": variants,
    }


def collapse_totals(cells: list[dict]) -> dict[str, dict]:
    """Per variant, collapses summed over every cell, with the exact binomial interval. A run
    that several cells share (``torch_correct`` under every schedule) counts once per cell
    here; :func:`distinct_collapses` counts each run once."""
    totals: dict[str, list[int]] = {}
    for cell in cells:
        for v, s in cell["variants"].items():
            k, n = totals.setdefault(v, [0, 0])
            totals[v] = [k + s["collapse"]["k"], n + s["collapse"]["n"]]
    return {v: binomial_ci(k, n) for v, (k, n) in totals.items()}


def _leaks(eval_every: int | str, steps_per_epoch: int, epochs: int) -> bool:
    """Whether a seed-bug loop under this schedule evaluates before its last training step, so
    that eval mode leaks into training (:func:`parity.study.stats.expected_train_mode`)."""
    return bool((expected_train_mode(False, eval_every, steps_per_epoch, epochs) < 1).any())


def _same_as_reference(s: dict) -> bool:
    """A seed-bug variant whose paired differences to ``torch_correct`` are exactly zero at epoch
    2 and at the last epoch in every seed: the very run ``torch_correct`` trained (under ``end``
    ``torch_seed_bug`` is bit-identical to it), not a second run."""
    return all(
        e is not None and e["mean"] == 0.0 and e["ci"] is not None and e["ci"] == [0.0, 0.0]
        for e in (s["effect_last"], s["effect_epoch2"])
    )


def distinct_collapses(cells: list[dict], epochs: int) -> dict[str, dict]:
    """Collapses over the grid's distinct runs, each run counted once, in three groups:

    * ``correct``: runs of the correct variants. A correct loop never evaluates in training mode,
      so its training is the same under every schedule: one run per (model, variant, seed),
      however many schedules the grid has.
    * ``seed_bug_leaking``: seed-bug runs under a schedule that evaluates before the last
      training step, so eval mode leaks into training: one per (model, variant, schedule, seed).
    * ``seed_bug_control``: seed-bug runs that no evaluation reached (``end``), unless they are
      the correct run itself (:func:`_same_as_reference`), which is then counted once, as correct.

    Each group: ``{'k', 'n', 'rate', 'ci'}`` (:func:`binomial_ci`)."""
    groups: dict[str, dict[tuple, bool]] = {"correct": {}, "seed_bug_leaking": {}, "seed_bug_control": {}}
    for cell in cells:
        leaks = _leaks(cell["eval_every"], cell["steps_per_epoch"], epochs)
        for v, s in cell["variants"].items():
            if s["correct"] or (not leaks and _same_as_reference(s)):
                group, name = "correct", (cell["model"], v if s["correct"] else "torch_correct")
            else:
                group = "seed_bug_leaking" if leaks else "seed_bug_control"
                name = (cell["model"], v, cell["eval_every"])
            for seed in range(s["collapse"]["n"]):
                collapsed = seed in s["collapsed_seeds"]
                groups[group][(*name, seed)] = groups[group].get((*name, seed), False) or collapsed
    return {g: binomial_ci(sum(runs.values()), len(runs)) for g, runs in groups.items()}
