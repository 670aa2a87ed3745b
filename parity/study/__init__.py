"""The misplacement study: six mode-handling variants trained over seeds, audited and reported.

:mod:`~parity.study.config` (what to train), :mod:`~parity.study.runners` (one trainer per
execution path), :mod:`~parity.study.driver` (:func:`run_study`), :mod:`~parity.study.stats`
(paired CIs, the summary), :mod:`~parity.study.reading` (the generated sentences),
:mod:`~parity.study.report` (table, ``report.md``), :mod:`~parity.study.outputs` (the files).

::

    from parity.study import StudyConfig, run_study, write_outputs
    results = run_study(StudyConfig(dataset="digits", seeds=3, epochs=10))
    write_outputs(results, "study-out")
"""

from parity.study.config import QUICK as QUICK
from parity.study.config import VARIANT_NAMES as VARIANT_NAMES
from parity.study.config import VARIANTS as VARIANTS
from parity.study.config import StudyConfig as StudyConfig
from parity.study.driver import run_study as run_study
from parity.study.outputs import write_outputs as write_outputs
from parity.study.stats import summarize as summarize

__all__ = ["QUICK", "VARIANTS", "VARIANT_NAMES", "StudyConfig", "run_study", "summarize", "write_outputs"]
