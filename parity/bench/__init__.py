"""``parity bench``: training steps per second per framework and execution style.

Every style (:data:`STYLES`) trains the same converted model on the same batches; each is gated
against ``torch_eager``'s losses before it is timed, and its timed run is checked (finite
losses, BatchNorm statistics moved). BENCHMARKS.md describes the method and the styles.
Modules: ``spec`` (styles, :class:`BenchConfig`, :class:`Runner`), ``workload`` (weights,
batches, FLOPs, :func:`make_runner`), ``torch_runners``/``flax_runners``, ``gate``, ``peak``,
``measure`` (:func:`benchmark`), ``output`` (tables, JSON), ``plot``.
"""

from parity.bench.gate import Gate as Gate
from parity.bench.gate import check_gate as check_gate
from parity.bench.gate import check_timed_run as check_timed_run
from parity.bench.gate import probe_dropout as probe_dropout
from parity.bench.gate import reference_losses as reference_losses
from parity.bench.measure import benchmark as benchmark
from parity.bench.measure import measure_style as measure_style
from parity.bench.measure import time_runner as time_runner
from parity.bench.output import check_output_paths as check_output_paths
from parity.bench.output import format_report as format_report
from parity.bench.output import write_outputs as write_outputs
from parity.bench.peak import measure_peak as measure_peak
from parity.bench.peak import median_rate as median_rate
from parity.bench.peak import theoretical_cpu_peak as theoretical_cpu_peak
from parity.bench.spec import GATE_RTOL as GATE_RTOL
from parity.bench.spec import GATE_STEPS as GATE_STEPS
from parity.bench.spec import GPU_TARGETS as GPU_TARGETS
from parity.bench.spec import SEEDS as SEEDS
from parity.bench.spec import STYLES as STYLES
from parity.bench.spec import BenchConfig as BenchConfig
from parity.bench.spec import BenchError as BenchError
from parity.bench.spec import Runner as Runner
from parity.bench.spec import default_steps as default_steps
from parity.bench.spec import skip_reason as skip_reason
from parity.bench.spec import validate as validate
from parity.bench.workload import Workload as Workload
from parity.bench.workload import forward_macs as forward_macs
from parity.bench.workload import make_runner as make_runner
from parity.bench.workload import make_workload as make_workload
from parity.bench.workload import train_flops_per_example as train_flops_per_example
from parity.registry import MODELS as MODELS
