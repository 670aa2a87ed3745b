"""The reading of a study: plain-language paragraphs generated from its numbers.

Each claim (a cost in stability, "generalises less", "a few points above" the published CNN,
an audit that "matches") is made only when the numbers support it (:data:`PARAGRAPHS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from parity.study.stats import fisher_exact_p, mean_ci

#: MNIST-1D authors' CNN (github.com/greydanus/mnist1d, README table "Comparing MNIST and MNIST-1D")
MNIST1D_PAPER_CNN_ACC = "about 94%"
MNIST1D_PAPER_CNN_ACC_VALUE = 0.94
#: their ConvBase (notebooks/models.py): Conv1d(1,25,5,s2,p1), Conv1d(25,25,3,s2,p1) x2, ReLU,
#: Linear(125,10); parameters = 150 + 1900 + 1900 + 1260
MNIST1D_PAPER_CNN_PARAMS = 5210


def pct(x: float | None, digits: int = 2) -> str:
    """``x`` (a fraction) in percent with ``digits`` decimals; ``n/a`` when missing or not finite."""
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def ci_text(ci: tuple | None, signed: bool = False) -> str:
    """A CI ``(low, high)`` of fractions as ``[low, high]`` in points; ``n/a`` without one."""
    if ci is None:
        return "n/a"
    fmt = "{:+.2f}" if signed else "{:.2f}"
    return f"[{fmt.format(100 * ci[0])}, {fmt.format(100 * ci[1])}]"


def _points(x: float) -> str:
    return f"{abs(100 * x):.2f} points {'below' if x < 0 else 'above'}"


def _names(variants: Sequence[str]) -> str:
    return ", ".join(f"`{v}`" for v in variants)


@dataclass(frozen=True)
class _Reading:
    """What every paragraph of :func:`reading` reads: the results, their summary, the groups."""

    results: dict
    summary: dict[str, dict]

    @property
    def epochs(self) -> int:
        return self.results["config"]["epochs"]

    @property
    def ref(self) -> dict | None:
        return self.summary.get("torch_correct")

    @property
    def buggy(self) -> list[str]:
        return [v for v, s in self.summary.items() if not s["correct"]]

    @property
    def correct(self) -> list[str]:
        return [v for v, s in self.summary.items() if s["correct"]]


#: a CI that includes zero and reaches no further than this many points from it bounds the effect
#: tightly enough to say so; a wider one only says that this run cannot tell
NARROW_POINTS = 1.0


def _verdict(lo: float, hi: float, n_failed: int) -> str:
    """What a paired CI ``[lo, hi]`` says about a last-epoch difference."""
    if lo > 0 or hi < 0:
        return "the interval excludes zero"
    if n_failed:
        return (
            f"the interval includes zero because {n_failed} failed run{'s' * (n_failed > 1)} "
            "widen it (see Failed runs)"
        )
    bound = 100 * max(-lo, hi)
    if bound <= NARROW_POINTS:
        return (
            "the interval includes zero, so the difference is not distinguishable from zero; "
            f"any effect at the last epoch is under {bound:.2f} points"
        )
    return (
        "the interval includes zero, so the difference is not distinguishable from zero; effects from "
        f"{100 * lo:+.2f} to {100 * hi:+.2f} points are all consistent with these seeds"
    )


def _last_epoch_effect(r: _Reading) -> str | None:
    """**Last-epoch effect**: each seed-bug variant against ``torch_correct``, paired."""
    if r.ref is None:
        return None
    parts = []
    for v in r.buggy:
        s, d = r.summary[v], r.summary[v]["diff_vs_torch_correct"]
        if d["mean"] is None:
            continue
        text = f"`{v}` ended {_points(d['mean'])} `torch_correct` at epoch {r.epochs}"
        if d["ci"] is None:
            parts.append(text + " (one seed: no interval)")
            continue
        lo, hi = d["ci"]
        n_failed = len(s["diverged_seeds"]) + len(s["collapsed_seeds"])
        text += (
            f" (paired over {d['n']} seeds, 95% CI [{100 * lo:+.2f}, {100 * hi:+.2f}] points; "
            f"{_verdict(lo, hi, n_failed)})"
        )
        w = s.get("diff_vs_torch_correct_without_failed")
        if w and w["mean"] is not None:
            text += (
                f"; without the failed runs (diverged or collapsed seeds of either variant) it is "
                f"{100 * w['mean']:+.2f} points {ci_text(w['ci'], signed=True)} over {w['n']} seeds"
            )
        parts.append(text)
    return "**Last-epoch effect.** " + "; ".join(parts) + "." if parts else None


def _audit_text(v: str, a: dict, epochs: int) -> str:
    """One variant's measured audit, e.g. ``1.00 in epoch 1 and 0.00 in epochs 2–30``."""
    e1 = "n/a" if a["epoch1_mean"] is None else f"{a['epoch1_mean']:.2f}"
    if a["later_mean"] is None:
        return f"`{v}` {e1} in epoch 1, nothing measured after it"
    later = (
        f"{a['later_mean']:.2f}"
        if a["later_min"] == a["later_max"]
        else f"{a['later_min']:.2f}–{a['later_max']:.2f}"
    )
    return f"`{v}` {e1} in epoch 1 and {later} in {'epoch 2' if epochs == 2 else f'epochs 2–{epochs}'}"


def _audit_verdict(summary: dict[str, dict]) -> str:
    """Whether the audits match: contradicted, not measured after epoch 1, or all matching."""
    bad = [v for v, s in summary.items() if s["audit"]["as_expected"] is False]
    unmeasured = [v for v, s in summary.items() if s["audit"]["as_expected"] is None]
    if bad:
        return f" UNEXPECTED audit for {_names(bad)}: the loop does not do what it claims."
    if unmeasured:
        text = (
            f" Not measured after epoch 1 for {_names(unmeasured)} (one epoch, or divergence in "
            "epoch 1): epoch 1 trains in train mode in every variant, so these runs cannot tell the "
            "correct loop from the seed's bug."
        )
        matched = [v for v in summary if v not in unmeasured]
        return text + (f" {_names(matched)} match their expectation." if matched else "")
    expectations = "; ".join(dict.fromkeys(f"{s['audit']['expected']}" for s in summary.values()))
    return f" Every variant matches its expectation ({expectations})."


def _mode_audit(r: _Reading) -> str | None:
    """**Mode audit**: the measured train-mode share per variant and whether it matches."""
    if not r.summary:
        return None
    text = (
        "**Mode audit (measured at call time, not assumed).** Share of BatchNorm/Dropout calls "
        "in training steps that ran in training mode: "
        + "; ".join(_audit_text(v, s["audit"], r.epochs) for v, s in r.summary.items())
        + "."
        + _audit_verdict(r.summary)
    )
    bug_names = [v for v in r.buggy if v != "linen_bug_emulated"]
    if bug_names:
        text += (
            f" In {' and '.join(f'`{v}`' for v in bug_names)} nothing in the code says "
            '"train in eval mode": one `.train()` call before the loop and an `evaluate()` that '
            "leaves `.eval()` behind are enough."
        )
    if "linen_bug_emulated" in r.summary:
        text += " In Linen the same schedule had to be written on purpose (`linen_bug_emulated`)."
    return text


def _runtime_guard(r: _Reading) -> str | None:
    """**Runtime guard**: whether the recording guard objected in the torch variants, and where."""
    guarded = {v: x["seeds"] for v, x in r.results["variants"].items() if v.startswith("torch_")}
    if not guarded:
        return None
    every = r.results["config"].get("eval_every", "epoch")
    where = "at the first step of" if every == "epoch" else "first in"
    parts = []
    for v, seeds in guarded.items():
        hits = [x for x in seeds if x.get("guard_epoch") is not None]
        if not hits:
            parts.append(f"`{v}` silent in all {len(seeds)} runs")
            continue
        first = min(hits, key=lambda x: x["guard_epoch"])
        parts.append(
            f"`{v}` would have raised in {len(hits)}/{len(seeds)} runs, {where} "
            f"epoch {first['guard_epoch'] + 1}, naming {', '.join(first['guard_modules'])}"
        )
    return (
        "**Runtime guard.** `torch_impl.guard.training_guard`, recording instead of raising, "
        "checked every torch training step: " + "; ".join(parts) + "."
    )


def _epoch2(r: _Reading) -> str | None:
    """**Epoch 2**: mean test accuracy in the first epoch the bug trains in eval mode."""
    if r.ref is None or r.epochs < 2 or not r.buggy:
        return None
    parts = [f"`torch_correct` {pct(r.ref['epoch2_acc']['mean'])}%"]
    for v in r.buggy:
        d = r.summary[v].get("epoch2_diff_vs_torch_correct")
        extra = "" if not d or d["mean"] is None else f" ({100 * d['mean']:+.2f} points)"
        parts.append(f"`{v}` {pct(r.summary[v]['epoch2_acc']['mean'])}%{extra}")
    every = r.results["config"].get("eval_every", "epoch")
    title = "Epoch 2, the first epoch trained in eval mode" if every == "epoch" else "Epoch 2"
    return f"**{title}.** Mean test accuracy: " + ", ".join(parts) + "."


def fits_more_generalises_less(s: dict, ref: dict) -> bool:
    """True when the paired 95% CIs say both: a lower last-epoch test accuracy than ``ref``
    (``diff_vs_torch_correct`` entirely below zero) and a lower last train loss (the paired
    per-seed difference of the last finite train losses entirely below zero)."""
    acc = s.get("diff_vs_torch_correct")
    pairs = [
        (a, b)
        for a, b in zip(s["final_train_loss_per_seed"], ref["final_train_loss_per_seed"], strict=True)
        if a is not None and b is not None
    ]
    loss = mean_ci([a - b for a, b in pairs])
    return bool(acc and acc["ci"] and acc["ci"][1] < 0 and loss["ci"] and loss["ci"][1] < 0)


def _late_training(r: _Reading) -> str | None:
    """**Late training**: last train losses and the late swing; the "generalises less" reading
    only where :func:`fits_more_generalises_less` holds."""
    if r.ref is None or r.ref["swing"] is None:
        return None
    losses = ", ".join(
        f"`{v}` {s['final_train_loss_median']:.2g}"
        for v, s in r.summary.items()
        if s["final_train_loss_median"] is not None
    )
    sw = ", ".join(f"`{v}` {100 * s['swing']:.2f}" for v, s in r.summary.items() if s["swing"] is not None)
    text = (
        f"**Late training.** Median last-epoch train loss over seeds: {losses}. Epoch-to-epoch swing of "
        f"a seed's test accuracy over epochs {r.epochs // 2}–{r.epochs} (mean absolute change, points; "
        f"lower is steadier): {sw}."
    )
    fits_more = [v for v in r.buggy if fits_more_generalises_less(r.summary[v], r.ref)]
    if fits_more:
        text += (
            f" {_names(fits_more)} end{'s' if len(fits_more) == 1 else ''} with a lower train loss and a "
            "lower test accuracy than `torch_correct`, both by paired 95% CIs that exclude zero: without "
            "dropout and with frozen normalisation statistics the network fits the training set further "
            "and generalises less."
        )
    return text


def _frameworks(r: _Reading) -> str | None:
    """**Frameworks**: paired differences between variants with the same mode handling; "agree up
    to seed noise" only for the pairs whose 95% CI includes zero."""
    parts, apart = [], []
    for group, base in ((r.correct, "torch_correct"), (r.buggy, "torch_seed_bug")):
        if base not in r.summary:
            continue
        for v in group:
            if v == base:
                continue
            d = mean_ci(
                np.subtract(r.summary[v]["final_acc_per_seed"], r.summary[base]["final_acc_per_seed"])
            )
            if d["mean"] is not None:
                parts.append(f"`{v}` − `{base}` {100 * d['mean']:+.2f} {ci_text(d['ci'], signed=True)}")
                if d["ci"] is not None and (d["ci"][0] > 0 or d["ci"][1] < 0):
                    apart.append(f"`{v}` − `{base}`")
    if not parts:
        return None
    verdict = "So these pairs should agree up to seed noise, not exactly; " + (
        f"{', '.join(apart)} differ{'s' * (len(apart) == 1)} by more (the 95% CI excludes zero)."
        if apart
        else "every interval includes zero."
    )
    return (
        "**Frameworks.** The same mode handling should give the same result in every framework. "
        "Last-epoch paired differences, points [95% CI]: " + "; ".join(parts) + ". Every variant "
        "of a seed starts from the same converted weights and sees the same batches; dropout masks "
        "come from each framework's own generator, and `torch_seed_bug` keeps the unbiased batch "
        "variance in its running statistics where Flax keeps the biased one, which matters once "
        "training runs on running statistics. " + verdict
    )


def _failed_count(summary: dict[str, dict], variants: list[str]) -> tuple[int, int]:
    """(failed runs, runs) over ``variants``: diverged or collapsed seeds."""
    failed = sum(len(summary[v]["diverged_seeds"]) + len(summary[v]["collapsed_seeds"]) for v in variants)
    return failed, sum(summary[v]["seeds"] for v in variants)


def _failure_rate(r: _Reading) -> str | None:
    """**Failure rate**: failed runs of the seed-bug variants against the correct ones, with
    Fisher's exact test; a stability cost is claimed only when p < 0.05."""
    if not r.buggy or not r.correct:
        return None
    (fb, nb), (fc, nc) = _failed_count(r.summary, r.buggy), _failed_count(r.summary, r.correct)
    text = f"**Failure rate.** Failed runs (diverged or collapsed): seed bug {fb}/{nb}, correct {fc}/{nc}"
    if fb + fc == 0:
        return text + "; no run failed, so this study shows no cost in stability."
    p = fisher_exact_p(fb, nb, fc, nc)
    text += f" (Fisher's exact test, two-sided p = {p:.2g})."
    if p < 0.05 and fb / nb > fc / nc:
        return text + " The seed's bug fails more often than the correct loops: a cost in stability."
    return text + (
        " Too few failures to say that either fails more often (the runs are paired by seed, so "
        "this is a rough comparison)."
    )


def _failed_runs(r: _Reading) -> str | None:
    """**Failed runs**: each diverged or collapsed seed, and whether only buggy variants failed."""
    failed = []
    for v, s in r.summary.items():
        for seed in s["diverged_seeds"]:
            failed.append(
                f"`{v}` seed {seed} diverged (non-finite train loss; stopped, its test accuracy carried forward)"
            )
        seeds = r.results["variants"][v]["seeds"]
        for seed in s["collapsed_seeds"]:
            last = next(x for x in seeds if x["seed"] == seed)["epochs"][-1]
            failed.append(
                f"`{v}` seed {seed} collapsed: last-epoch test accuracy {pct(last['test_acc'], 1)}%, "
                f"train loss {last['train_loss']:.2f} (ln 10 = 2.30 is a constant prediction), "
                "with every loss finite"
            )
    if not failed:
        return None
    ok = [v for v, s in r.summary.items() if not s["diverged_seeds"] and not s["collapsed_seeds"]]
    failing = [v for v, s in r.summary.items() if s["diverged_seeds"] or s["collapsed_seeds"]]
    return (
        "**Failed runs.** "
        + "; ".join(failed)
        + "."
        + (f" No failed run in {_names(ok)}." if ok else "")
        + (
            " A failed run is part of the bug's damage: the means and intervals above include it."
            if all(not r.summary[v]["correct"] for v in failing)
            else " The means and intervals above include the failed runs."
        )
    )


#: the paragraphs of the reading, in order; each returns ``None`` when it has nothing to say
PARAGRAPHS = (
    _last_epoch_effect,
    _mode_audit,
    _runtime_guard,
    _epoch2,
    _late_training,
    _frameworks,
    _failed_runs,
    _failure_rate,
)


def reading(results: dict, summary: dict[str, dict]) -> list[str]:
    """Plain-language paragraphs generated from the numbers (:data:`PARAGRAPHS`)."""
    r = _Reading(results, summary)
    return [p for paragraph in PARAGRAPHS if (p := paragraph(r)) is not None]


# ---------------------------------------------------------------------------- external check


def versus_paper(acc: float) -> str:
    """How a correct-CNN test accuracy ``acc`` (fraction) compares with the authors' ~94%, in words
    that hold for the number: "a few points above" only for 1 to 5 points above."""
    d = 100 * (acc - MNIST1D_PAPER_CNN_ACC_VALUE)
    if d > 5:
        return f"{d:.1f} points above theirs, more than a larger normalised model alone explains"
    if d >= 1:
        return f"a few points above theirs ({d:+.1f}), which is what a larger normalised model should give"
    if d > -1:
        return f"within a point of theirs ({d:+.1f})"
    return (
        f"{-d:.1f} points below theirs, where a larger normalised model should not be: too few "
        "epochs (the default is 30) or a problem with the data or the training"
    )


def external_check(results: dict, summary: dict[str, dict]) -> str:
    """How the correct CNN compares with the MNIST-1D authors' CNN (mnist1d only)."""
    cfg = results["config"]
    if cfg["dataset"] != "mnist1d":
        return (
            "The external reference (the MNIST-1D authors' CNN, about 94%) is for MNIST-1D; this "
            f"study ran on `{cfg['dataset']}`, so there is no published number to compare with here."
        )
    ref = summary.get("torch_correct") or next((s for s in summary.values() if s["correct"]), None)
    if cfg.get("model", "signal1d") != "signal1d":
        measured = (
            ""
            if ref is None or ref["final_acc"]["mean"] is None
            else (
                f" Our correct `{cfg['model']}` reached {pct(ref['final_acc']['mean'])}% after {cfg['epochs']} epochs."
            )
        )
        return (
            "The MNIST-1D authors report " + MNIST1D_PAPER_CNN_ACC + " for their CNN; the architecture "
            f"comparison written here is for the default `signal1d` CNN, not `{cfg['model']}`." + measured
        )
    params = results["model"]["params"]
    text = (
        "The MNIST-1D authors report " + MNIST1D_PAPER_CNN_ACC + " test accuracy for their CNN "
        '(README of github.com/greydanus/mnist1d, table "Comparing MNIST and MNIST-1D"). '
    )
    measured = ref is not None and ref["final_acc"]["mean"] is not None
    if measured:
        text += (
            f"Our correct CNN reached {pct(ref['final_acc']['mean'])}% after {cfg['epochs']} epochs "
            f"(mean of {ref['final_acc']['n']} seeds): {versus_paper(ref['final_acc']['mean'])}. "
        )
    return text + (
        f"The architectures differ: theirs (`ConvBase` in the repository's notebooks/models.py) is three "
        f"stride-2 Conv1d layers of 25 channels with ReLU and one linear layer, no BatchNorm, no dropout, "
        f"about {MNIST1D_PAPER_CNN_PARAMS / 1000:.1f}k parameters; ours has two convolutions with "
        f"BatchNorm and max-pooling, a {cfg['model_config'].get('hidden', 128)}-unit "
        f"dense layer with BatchNorm, dropout, and {params / 1000:.1f}k parameters, trained with SGD + "
        f"momentum. It is a sanity check of the data and the training, not a like-for-like comparison."
    )
