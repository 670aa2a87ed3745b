"""Assertions for other projects' test suites: ``assert_parity`` and ``assert_trajectory_parity``.

::

    from parity.testing import assert_parity

    def test_port_matches_torch():
        assert_parity(torch_model, linen_model, x, variables=variables, mode="train")

On failure the ``AssertionError`` message is the localisation report: the first diverging
layer (or parameter, or step), its value and the tolerance, then the per-layer table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from torch import nn as tnn

from parity.harness.localize import LocalizationReport, localize, localize_gradients
from parity.harness.trajectory import TrajectoryReport, trajectory


def assert_parity(
    torch_model: tnn.Module,
    flax_model: Any,
    x: np.ndarray,
    *,
    variables: Mapping | None = None,
    mode: str = "eval",
    tol: float = 1e-5,
    y: np.ndarray | None = None,
    **kwargs,
) -> list[LocalizationReport]:
    """Assert that every layer of ``flax_model`` matches ``torch_model`` on ``x`` within ``tol``.

    Runs :func:`parity.harness.localize.localize` (``kwargs`` go to it: ``layer_map``, ``reinject``,
    ``dropout_masks``, ``seed``, ``flatten_shapes``, ``call_kwargs``); with labels ``y`` also
    :func:`parity.harness.localize.localize_gradients` (``loss`` and ``param_map`` may be passed).
    Returns the reports when everything is within tolerance; raises ``AssertionError`` whose
    message is the failing report(s) otherwise.
    """
    grad_keys = {"loss", "param_map"}
    loc_kwargs = {k: v for k, v in kwargs.items() if k not in grad_keys}
    reports = [localize(torch_model, flax_model, x, variables=variables, mode=mode, tol=tol, **loc_kwargs)]
    if y is not None:
        g_kwargs = {
            k: v
            for k, v in kwargs.items()
            if k in grad_keys | {"dropout_masks", "seed", "step", "layer_map", "call_kwargs"}
        }
        reports.append(
            localize_gradients(
                torch_model, flax_model, x, y, variables=variables, mode=mode, tol=tol, **g_kwargs
            )
        )
    failed = [r for r in reports if not r.passed]
    if failed:
        raise AssertionError("\n\n".join(r.format() for r in failed))
    return reports


def assert_trajectory_parity(
    torch_model: tnn.Module, flax_model: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]], **kwargs
) -> TrajectoryReport:
    """Assert that training both sides stays within tolerance at every step.

    ``kwargs`` go to :func:`parity.harness.trajectory.trajectory` (``variables``, ``optimizer``,
    ``steps``, ``tol``, ``float64_reference``, ...). Returns the report; raises
    ``AssertionError`` with the per-step report (first divergent step, metric, tensor, value,
    tolerance) otherwise.
    """
    report = trajectory(torch_model, flax_model, batches, **kwargs)
    if not report.passed:
        raise AssertionError(report.format())
    return report
