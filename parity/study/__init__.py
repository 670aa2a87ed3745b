"""The misplacement study: six mode-handling variants trained over seeds, audited and reported.

* :mod:`parity.study.runners`: :class:`StudyConfig`, :func:`run_study` and one adapter per
  execution path (torch, Linen loop / vmap-over-seeds, NNX) over the framework folders' loops;
* :mod:`parity.study.report`: statistics (paired CIs), the table, ``report.md`` and its reading;
* :mod:`parity.study.plots`: ``curves.png``;
* :mod:`parity.study.outputs`: the three files written as one set.

::

    from parity.study import StudyConfig, run_study, write_outputs
    results = run_study(StudyConfig(dataset="digits", seeds=3, epochs=10))
    write_outputs(results, "study-out")
"""

from parity.study.outputs import write_outputs as write_outputs
from parity.study.report import summarize as summarize
from parity.study.runners import QUICK as QUICK
from parity.study.runners import VARIANT_NAMES as VARIANT_NAMES
from parity.study.runners import VARIANTS as VARIANTS
from parity.study.runners import StudyConfig as StudyConfig
from parity.study.runners import data as data
from parity.study.runners import run_study as run_study

__all__ = ["QUICK", "VARIANTS", "VARIANT_NAMES", "StudyConfig", "run_study", "summarize", "write_outputs"]
