"""Assertions for other projects' test suites: ``assert_parity`` and ``assert_trajectory_parity``.

::

    from parity.testing import LocalizeOptions, ModelPair, assert_parity

    def test_port_matches_torch():
        pair = ModelPair(torch_model, linen_model, variables)
        assert_parity(pair, x, LocalizeOptions(mode="train"))

On failure the ``AssertionError`` message is the localisation report: the first diverging
layer (or parameter, or step), its value and the tolerance, then the per-layer table.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from parity.harness.localize import (
    GradientOptions,
    LocalizationReport,
    LocalizeOptions,
    localize,
    localize_gradients,
)
from parity.harness.pair import ModelPair
from parity.harness.trajectory import TrajectoryOptions, TrajectoryReport, trajectory

__all__ = [
    "GradientOptions",
    "LocalizeOptions",
    "ModelPair",
    "TrajectoryOptions",
    "assert_parity",
    "assert_trajectory_parity",
]


def assert_parity(
    pair: ModelPair,
    x: np.ndarray,
    options: LocalizeOptions | None = None,
    y: np.ndarray | None = None,
    loss: str = "cross_entropy",
) -> list[LocalizationReport]:
    """Assert that every layer of ``pair``'s Flax model matches its torch model on ``x`` (torch
    layout) within ``options.tol``.

    Runs :func:`parity.harness.localize.localize`; with labels ``y`` also
    :func:`parity.harness.localize.localize_gradients` (same mode, tolerance, masks and
    ``loss``). Returns the reports when everything is within tolerance; raises
    ``AssertionError`` whose message is the failing report(s) otherwise.
    """
    o = options or LocalizeOptions()
    reports = [localize(pair, x, o)]
    if y is not None:
        grad = GradientOptions(o.mode, o.tol, loss, o.dropout_masks, o.seed, o.step)
        reports.append(localize_gradients(pair, x, y, grad))
    failed = [r for r in reports if not r.passed]
    if failed:
        raise AssertionError("\n\n".join(r.format() for r in failed))
    return reports


def assert_trajectory_parity(
    pair: ModelPair,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    options: TrajectoryOptions | None = None,
) -> TrajectoryReport:
    """Assert that training both sides of ``pair`` stays within tolerance at every step
    (:func:`parity.harness.trajectory.trajectory`). Returns the report; raises
    ``AssertionError`` with the per-step report (first divergent step, metric, tensor, value,
    tolerance) otherwise.
    """
    report = trajectory(pair, batches, options or TrajectoryOptions())
    if not report.passed:
        raise AssertionError(report.format())
    return report
