"""What a per-layer or per-gradient comparison reports: one :class:`LayerDiff` per compared
tensor, gathered in a :class:`LocalizationReport` (first divergent row, table, JSON)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from parity.harness.metrics import cosine, judged_rel_l2, rel_l2, share_outside
from parity.table import format_table


@dataclass(frozen=True)
class LayerDiff:
    """One compared tensor: a layer output, a BN running statistic, or a parameter gradient.

    ``name`` is the torch name; ``kind`` is ``output``, ``running_mean``, ``running_var`` or
    ``grad``; values compare Flax (``candidate``) against torch (``reference``), both in
    torch-comparable layout. ``float64_rel_l2`` (optional) is torch float32 vs torch float64 on
    the same computation: the float32 noise floor of that tensor. ``port_float64_rel_l2``
    (gradients only, set by :func:`rejudge_in_float64`) is Flax float64 vs torch float64: the
    verdict on a gradient that float32 cannot resolve. ``judged`` (optional): the value the row
    is judged by on the float32 scale when neither of those is it (a layer a module ``dtype``
    keeps in float32: ``tol * port / bound``), see :func:`parity.harness.metrics.judged_rel_l2`.
    """

    name: str
    kind: str
    flax_name: str
    shape: tuple[int, ...]
    max_abs: float
    rel_l2: float
    cosine: float
    outside: float
    passed: bool
    float64_rel_l2: float | None = None
    note: str = ""
    port_float64_rel_l2: float | None = None
    judged: float | None = None

    def as_dict(self) -> dict:
        """JSON-ready dict (``shape`` as a list)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def compare_tensor(
    name: str,
    kind: str,
    flax_name: str,
    candidate: np.ndarray | None,
    reference: np.ndarray | None,
    tol: float,
    note: str = "",
) -> LayerDiff:
    """A :class:`LayerDiff` for ``candidate`` (Flax) vs ``reference`` (torch); ``passed`` is
    ``rel_l2 <= tol``. A missing side or a shape mismatch is a failing row with ``inf``."""
    if candidate is None or reference is None or np.shape(candidate) != np.shape(reference):
        why = (
            "missing on the Flax side"
            if candidate is None
            else "missing on the torch side"
            if reference is None
            else f"shape {np.shape(candidate)} vs torch {np.shape(reference)}"
        )
        shape = tuple(np.shape(reference if reference is not None else candidate))
        return LayerDiff(
            name,
            kind,
            flax_name,
            shape,
            math.inf,
            math.inf,
            0.0,
            1.0,
            False,
            note=(note + "; " if note else "") + why,
        )
    c, r = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    max_abs = float(np.max(np.abs(c - r))) if c.size else 0.0
    rel = rel_l2(c, r)
    return LayerDiff(
        name,
        kind,
        flax_name,
        tuple(r.shape),
        max_abs,
        rel,
        cosine(c, r),
        share_outside(c, r, tol),
        bool(rel <= tol),
        note=note,
    )


@dataclass
class LocalizationReport:
    """Rows in forward order (layers) or backward order (gradients), and the first failure."""

    title: str
    rows: list[LayerDiff]
    tol: float
    meta: dict = field(default_factory=dict)

    @property
    def first_divergent(self) -> LayerDiff | None:
        """The first row whose ``rel_l2`` exceeds the tolerance, or ``None``."""
        return next((r for r in self.rows if not r.passed), None)

    @property
    def passed(self) -> bool:
        """True when every row is within tolerance."""
        return self.first_divergent is None

    def row(self, name: str, kind: str | None = None) -> LayerDiff:
        """The row for torch name ``name`` (and ``kind``, default the first one of that name)."""
        for r in self.rows:
            if r.name == name and (kind is None or r.kind == kind):
                return r
        raise KeyError(
            f"{name!r}{'' if kind is None else f' ({kind})'} not in the report; "
            f"rows: {', '.join(sorted({r.name for r in self.rows}))}"
        )

    def worst_judged(self) -> float:
        """The largest value the rows are judged by (:func:`parity.harness.metrics.judged_rel_l2`:
        ``rel_l2``, or a float64 re-judged gradient on the float32 scale); ``0`` without rows."""
        return max((judged_rel_l2(r, self.tol) for r in self.rows), default=0.0)

    def summary(self) -> str:
        """One line: passed, or the first divergent row with its value and the tolerance."""
        first = self.first_divergent
        if first is None:
            worst = max((r.rel_l2 for r in self.rows), default=0.0)
            judged = self.worst_judged()
            extra = f", judged {judged:.2e} after the float64 verdicts" if judged != worst else ""
            return (
                f"{self.title}: all {len(self.rows)} tensors within tol {self.tol:.1e} "
                f"(worst rel_l2 {worst:.2e}{extra})"
            )
        return (
            f"{self.title}: first divergent: {first.name} ({first.kind}, flax {first.flax_name}): "
            f"rel_l2 {first.rel_l2:.3e} > tol {self.tol:.1e}, max_abs {first.max_abs:.3e}, "
            f"cosine {first.cosine:.6f}, {first.outside:.1%} of elements outside"
            + (f" [{first.note}]" if first.note else "")
        )

    def format(self) -> str:
        """The summary line and a table, one row per compared tensor."""
        head = (
            "name",
            "kind",
            "flax",
            "shape",
            "max_abs",
            "rel_l2",
            "cosine",
            "outside",
            "f64_ref",
            "f64_port",
            "pass",
        )
        body = [
            (
                r.name,
                r.kind,
                r.flax_name,
                "x".join(map(str, r.shape)),
                f"{r.max_abs:.2e}",
                f"{r.rel_l2:.2e}",
                f"{r.cosine:.6f}",
                f"{r.outside:.1%}",
                "-" if r.float64_rel_l2 is None else f"{r.float64_rel_l2:.1e}",
                "-" if r.port_float64_rel_l2 is None else f"{r.port_float64_rel_l2:.1e}",
                ("ok" if r.passed else "FAIL") + (f" {r.note}" if r.note else ""),
            )
            for r in self.rows
        ]
        return self.summary() + "\n" + format_table(head, body)

    def __str__(self) -> str:
        return self.format()

    def as_dict(self) -> dict:
        """``{'title', 'tol', 'passed', 'first_divergent', 'rows', **meta}`` for JSON."""
        first = self.first_divergent
        return {
            "title": self.title,
            "tol": self.tol,
            "passed": self.passed,
            "first_divergent": None if first is None else {"name": first.name, "kind": first.kind},
            "rows": [r.as_dict() for r in self.rows],
            **self.meta,
        }
