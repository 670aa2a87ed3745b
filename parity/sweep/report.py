"""``sweep.md``: the grid's table and a reading whose every sentence its interval supports.

Each claim is written from the numbers: an effect is called a loss (or a gain) only when its
95% interval excludes zero; an interval that includes zero is reported as "not distinguishable
from zero"; collapse rates are compared only through Fisher's exact test.
"""

from __future__ import annotations

from typing import Any

from parity.study.report import eval_schedule_text
from parity.study.stats import fisher_exact_p
from parity.sweep.grid import cell_id


def _pts(stat: dict | None) -> str:
    """``-0.80 [-1.20, -0.35]`` in points, or ``n/a``."""
    if not stat:
        return "n/a"
    if stat["ci"] is None:
        return f"{100 * stat['mean']:+.2f} (n={stat['n']})"
    lo, hi = stat["ci"]
    return f"{100 * stat['mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def _rate(c: dict) -> str:
    if not c["n"]:
        return "n/a"
    lo, hi = c["ci"]
    return f"{c['k']}/{c['n']} [{100 * lo:.0f}%, {100 * hi:.0f}%]"


def _acc(stat: dict | None) -> str:
    return "n/a" if not stat else f"{100 * stat['mean']:.2f}"


def table(document: dict) -> str:
    """The grid as a markdown table: one row per cell and variant."""
    head = (
        "| model | eval | variant | last-epoch acc % | last-epoch effect, points [95% CI] "
        "| epoch-2 effect, points [95% CI] | collapsed [95% CI] | diverged | audit |\n"
        "|---|---|---|---:|---|---|---|---|---|\n"
    )
    rows = []
    for cell in document["cells"]:
        for v, s in cell["variants"].items():
            audit = {True: "ok", False: "UNEXPECTED", None: "n/a"}[s["audit_as_expected"]]
            rows.append(
                f"| {cell['model']} | {cell['eval_every']} | `{v}` | {_acc(s['final_acc'])} | "
                f"{_pts(s['effect_last']) if v != 'torch_correct' else 'reference'} | "
                f"{_pts(s['effect_epoch2']) if v != 'torch_correct' else 'reference'} | "
                f"{_rate(s['collapse'])} | {len(s['diverged_seeds'])}/{s['collapse']['n']} | {audit} |"
            )
    return head + "\n".join(rows) + "\n"


def _direction(stat: dict | None) -> str | None:
    """``below``/``above`` when the interval excludes zero, ``None`` otherwise."""
    if not stat or stat["ci"] is None:
        return None
    lo, hi = stat["ci"]
    return "below" if hi < 0 else "above" if lo > 0 else None


def effect_sentences(document: dict, key: str, when: str) -> list[str]:
    """One sentence per (cell, seed-bug variant) whose ``key`` effect interval excludes zero,
    then one listing the cells where no interval does."""
    out, quiet = [], []
    for cell in document["cells"]:
        name = f"{cell['model']}, evaluation {eval_schedule_text(cell['eval_every'])}"
        found = False
        for v, s in cell["variants"].items():
            side = None if s["correct"] else _direction(s[key])
            if side:
                found = True
                out.append(
                    f"- {name}: `{v}` is {side} `torch_correct` {when}: {_pts(s[key])} points (95% CI excludes 0)."
                )
        if not found:
            quiet.append(cell_id(cell["model"], cell["eval_every"]))
    if quiet:
        out.append(f"- No seed-bug effect {when} distinguishable from zero in: {', '.join(quiet)}.")
    return out


def control_sentence(document: dict) -> str | None:
    """What the ``end`` cells (no evaluation inside training) show, if the grid has any."""
    ends = [c for c in document["cells"] if c["eval_every"] == "end"]
    if not ends:
        return None
    shifted = [
        f"{c['model']} `{v}`"
        for c in ends
        for v, s in c["variants"].items()
        if not s["correct"] and _direction(s["effect_last"])
    ]
    if shifted:
        return (
            "The control (evaluation only at the end) still shows an effect for "
            + ", ".join(shifted)
            + ": with no evaluation inside training there is no mode to leak, so this is a difference "
            "between the frameworks' runs (dropout randomness), not the seed's bug."
        )
    return (
        "The control (evaluation only at the end) shows no last-epoch effect distinguishable from zero "
        f"in {'its one cell' if len(ends) == 1 else f'any of its {len(ends)} cells'}, as it should: with "
        "no evaluation inside training the seed's "
        "loop never leaves training mode."
    )


def collapse_sentence(document: dict) -> str:
    """Collapse counts per variant and cell, then the comparison over distinct runs (each run
    counted once, :func:`parity.sweep.summary.distinct_collapses`) with Fisher's exact test."""
    totals = document["collapse_totals"]
    parts = [f"`{v}` {_rate(t)}" for v, t in totals.items()]
    text = (
        "Collapsed runs per variant, summed over the cells (exact 95% binomial CI): " + ", ".join(parts) + "."
    )
    diverged = [
        f"{c['model']}-eval-{c['eval_every']} `{v}` seed {', '.join(map(str, s['diverged_seeds']))}"
        for c in document["cells"]
        for v, s in c["variants"].items()
        if s["diverged_seeds"]
    ]
    if diverged:
        text += " Diverged (non-finite training loss; not counted as collapsed): " + "; ".join(diverged) + "."
    distinct = document.get("distinct_collapses")
    return text + (" " + distinct_sentence(distinct) if distinct else "")


def distinct_sentence(distinct: dict) -> str:
    """The headline: leaking seed-bug runs against correct runs, each distinct run once."""
    bug, good, control = (distinct[g] for g in ("seed_bug_leaking", "correct", "seed_bug_control"))
    text = (
        "Counting each distinct run once (a correct loop trains the same run under every schedule, and "
        "under `end` `torch_seed_bug` is the `torch_correct` run itself): seed-bug runs whose "
        f"evaluation leaked eval mode into training collapsed {bug['k']}/{bug['n']}, correct runs "
        f"{good['k']}/{good['n']}"
    )
    if control["n"]:
        text += f", seed-bug runs that no evaluation reached (the control) {control['k']}/{control['n']}"
    if not (bug["n"] and good["n"]):
        return text + "."
    if bug["k"] + good["k"] == 0:
        return text + ": no run collapsed, so there is no difference in collapse rate to test."
    p = fisher_exact_p(bug["k"], bug["n"], good["k"], good["n"])
    verdict = (
        "the leaking seed-bug runs collapse more often than the correct runs"
        if p < 0.05 and bug["k"] / bug["n"] > good["k"] / good["n"]
        else "at the 5% level the grid cannot tell the leaking seed-bug runs' collapse rate from the correct runs'"
    )
    return text + (
        f". Fisher's exact test of leaking seed-bug against correct runs (two-sided; it takes the runs as "
        f"independent, though runs of one seed share their initial weights): p = {p:.2g}, so {verdict}."
    )


def render(document: dict, figure: str | None = "sweep.png") -> str:
    """The whole ``sweep.md``."""
    c, env = document["config"], document.get("environment") or {}
    lines = [
        "# parity sweep",
        "",
        f"Grid: models {', '.join(c['models'])} x evaluation schedules {', '.join(map(str, c['schedules']))}; "
        f"{c['seeds']} seeds x {c['epochs']} epochs per cell; variants {', '.join(c['variants'])}; "
        f"batch {c['batch_size']}, lr {c['lr']}"
        + (f", first {c['train_subset']} training examples" if c["train_subset"] else "")
        + f". {'Complete' if document['complete'] else 'INCOMPLETE'}: {len(document['cells'])}/"
        f"{len(c['models']) * len(c['schedules'])} cells; this run {document['wall_time_s']:.0f} s"
        + (f" ({len(document['resumed_cells'])} cells resumed)" if document["resumed_cells"] else "")
        + f"; device {env.get('device', '?')}, {env.get('cpu_count', '?')} CPUs; {document['created_utc']}.",
        "",
        "Effects are paired per seed against `torch_correct` (same initial weights, same batches), in "
        "accuracy points with 95% Student-t intervals. A run *collapsed* when its loss stayed finite, it "
        "was above twice chance at some epoch and ended at or below it.",
        "",
        table(document),
    ]
    if figure:
        lines += [f"![last-epoch and epoch-2 effects, collapse rates]({figure})", ""]
    lines += [
        "## Reading",
        "",
        "Last epoch:",
        *effect_sentences(document, "effect_last", "at the last epoch"),
    ]
    lines += ["", "Epoch 2:", *effect_sentences(document, "effect_epoch2", "at epoch 2"), ""]
    control = control_sentence(document)
    lines += ([control, ""] if control else []) + [collapse_sentence(document), ""]
    return "\n".join(lines)


def reading(document: dict) -> list[str]:
    """The reading's sentences alone (for docs/STUDY.md)."""
    text: list[Any] = [*effect_sentences(document, "effect_last", "at the last epoch")]
    text += effect_sentences(document, "effect_epoch2", "at epoch 2")
    return [*text, *(s for s in (control_sentence(document), collapse_sentence(document)) if s)]
