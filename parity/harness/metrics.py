"""The numbers every comparison reports, the float64 re-judgement of a float32 value, and
torch's unbiased BatchNorm variance recovered from Flax's biased one.

Framework-free (numpy only): :mod:`parity.harness.compare`, :mod:`parity.harness.localize`
and :mod:`parity.harness.trajectory` all measure with these, so none imports another for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from flax_impl import BN_MOMENTUM
from parity.defaults import FLOAT32_REL_TOL, FLOAT64_REL_TOL

#: Tolerances of the foundation checks (float32, CPU): see :data:`parity.defaults.FLOAT32_REL_TOL`.
TOLERANCES = {"forward": FLOAT32_REL_TOL, "gradient": FLOAT32_REL_TOL, "bn_state": FLOAT32_REL_TOL}
#: Bound on a relative difference when both sides are recomputed in float64 (docs/HARNESS.md).
GRADIENT_TOL_FLOAT64 = FLOAT64_REL_TOL
#: How much farther than torch float32 a float32 Flax value may be from the float64 result
#: (:func:`judged_forward`, and the trajectory's float64-reference bound).
REF_FACTOR = 10.0


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` in float64 (``||a - b||`` when ``b`` is zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    denom = np.linalg.norm(b)
    diff = np.linalg.norm(a - b)
    return float(diff / denom) if denom > 0 else float(diff)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64 (``1`` when both are zero)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def share_outside(candidate: np.ndarray, reference: np.ndarray, tol: float) -> float:
    """Share of elements with ``|candidate - reference| > tol * (|reference| + rms(reference))``.

    Relative for large elements, absolute at the layer's own scale for elements near zero (a
    plain relative test would flag every element that happens to be close to zero).
    """
    c, r = np.asarray(candidate, np.float64), np.asarray(reference, np.float64)
    if r.size == 0:
        return 0.0
    rms = float(np.sqrt(np.mean(r * r)))
    return float(np.mean(np.abs(c - r) > tol * (np.abs(r) + rms)))


def judged_rel_l2(row: Any, tol: float) -> float:
    """The value a row is judged by, on the float32 scale; ``<= tol`` exactly when it passed.

    The row's own ``judged`` when it has one (a layer judged on the float32 scale a module
    ``dtype`` imposes). Otherwise:

    ``rel_l2`` when the row has no float64 verdict, or when its verdict agrees with float32 and
    ``rel_l2`` shows it (passed within ``tol``). A failing row shows its real relative
    difference, the larger of ``rel_l2`` and ``port_float64_rel_l2``, when that exceeds ``tol``
    (a difference of 0.78 reads 0.78). Otherwise (passed only in float64, or failed only in
    float64) the float64 difference on the float32 scale: ``port_float64_rel_l2 * tol /
    GRADIENT_TOL_FLOAT64``."""
    if getattr(row, "judged", None) is not None:
        return row.judged
    port = row.port_float64_rel_l2
    if port is None or (row.passed and row.rel_l2 <= tol):
        return row.rel_l2
    if not row.passed and max(row.rel_l2, port) > tol:
        return max(row.rel_l2, port)
    return port * tol / GRADIENT_TOL_FLOAT64


def judged_forward(
    torch32: np.ndarray,
    flax32: np.ndarray,
    tol: float,
    float64: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> float:
    """The judged relative L2 difference of two float32 outputs.

    ``rel_l2(flax32, torch32)`` when it is within ``tol``. Above it, ``float64()`` gives
    ``(torch64, flax64)``, the same outputs recomputed in float64 (docs/HARNESS.md, "Gradients
    float32 cannot resolve", which the forward shares): the value becomes the float64
    difference on the float32 scale (``rel64 * tol / GRADIENT_TOL_FLOAT64``) when the float64
    outputs agree within ``GRADIENT_TOL_FLOAT64`` *and* Flax float32 is no farther from them
    than ``REF_FACTOR`` times torch float32 is (the forward is continuous: no decision flips,
    so a Flax float32 that is less accurate than torch's is a defect and keeps its value).
    A ``flax64`` that is not float64 (the port fixes ``dtype=float32`` in a module) is judged on
    the float32 scale: within ``max(tol, REF_FACTOR * torch float32's distance from float64)``
    of torch float64, reported as that fraction of ``tol``.
    """
    rel = rel_l2(flax32, torch32)
    if rel <= tol:
        return rel
    torch64, flax64 = float64()
    if np.asarray(flax64).dtype != np.float64:
        # the port fixes its own narrower dtype (a module dtype=float32): float64 cannot judge
        # it, the float32 scale it imposes does (docs/HARNESS.md, "Verdicts")
        bound = max(tol, REF_FACTOR * rel_l2(torch32, torch64))
        narrow = rel_l2(flax64, torch64)
        return narrow * tol / bound if narrow <= bound else rel
    port = rel_l2(flax64, torch64)
    as_accurate = rel_l2(flax32, torch64) <= max(tol, REF_FACTOR * rel_l2(torch32, torch64))
    return port * tol / GRADIENT_TOL_FLOAT64 if (port <= GRADIENT_TOL_FLOAT64 and as_accurate) else rel


def unbiased_running_var(
    flax_vars: list[np.ndarray], n: int | Sequence[int], momentum: float = BN_MOMENTUM
) -> np.ndarray:
    """PyTorch's ``running_var`` implied by a history of Flax running variances.

    Flax updates ``v_k = m v_{k-1} + (1 - m) s2_k`` with the biased batch variance ``s2_k``;
    PyTorch uses the unbiased ``s2_k * n / (n - 1)``, ``n`` being the number of values per
    channel (``N`` for a dense BN, ``N*H*W`` for a conv BN). Both start from ``flax_vars[0]``.
    The batch variance is recovered from each Flax step, so the correction is exact algebra.
    ``n`` is one count for every step, or one per step (batches of different sizes).
    """
    steps = len(flax_vars) - 1
    counts = [int(n)] * steps if isinstance(n, (int, np.integer)) else [int(c) for c in n]
    if len(counts) != steps:
        raise ValueError(f"{len(counts)} values-per-channel counts for {steps} steps")
    if any(c < 2 for c in counts):
        raise ValueError("the unbiased variance needs at least 2 values per channel in every batch")
    t = np.asarray(flax_vars[0], np.float64)
    for prev, cur, c in zip(flax_vars, flax_vars[1:], counts):
        batch_var = (np.asarray(cur, np.float64) - momentum * np.asarray(prev, np.float64)) / (1 - momentum)
        t = momentum * t + (1 - momentum) * batch_var * c / (c - 1)
    return t
