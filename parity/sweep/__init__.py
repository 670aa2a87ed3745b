"""``parity sweep``: the misplacement study over a grid of models x evaluation schedules.

* :mod:`parity.sweep.grid`: :class:`SweepConfig`, the default grid and ``QUICK``;
* :mod:`parity.sweep.runner`: :func:`run_sweep` (one study per cell, cells written atomically,
  finished cells resumed);
* :mod:`parity.sweep.summary`: per-cell effects and the collapse rule with exact binomial CIs;
* :mod:`parity.sweep.report` / :mod:`parity.sweep.plot` / :mod:`parity.sweep.outputs`:
  ``sweep.md`` and ``sweep.png``.
"""

from parity.sweep.grid import QUICK as QUICK
from parity.sweep.grid import SweepConfig as SweepConfig
from parity.sweep.runner import run_sweep as run_sweep

__all__ = ["QUICK", "SweepConfig", "run_sweep"]
