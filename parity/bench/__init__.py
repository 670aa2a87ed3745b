"""``parity bench``: training steps per second per framework and execution style.

Every style trains the same model (one torch initialisation, converted with
:mod:`parity.convert`) on the same synthetic batches, with BatchNorm in training mode and
dropout on; a step is forward, backward and the SGD-with-momentum update.

Styles (:data:`STYLES`):

* ``torch_eager``: :func:`torch_impl.train.train_step` in a Python loop; the reference.
* ``torch_compile``: the same loop around ``torch.compile(model)`` (the optimizer stays eager).
* ``torch_cudagraph``: the whole step (forward, backward, ``optimizer.step()``) captured once
  with ``torch.cuda.graph`` and replayed; GPU only.
* ``linen_jit``: :func:`flax_impl.linen_train.train_step` (``jax.jit``) in a Python loop.
* ``linen_scan``: :func:`flax_impl.linen_train.train_epoch_scan`, all steps in one ``lax.scan`` with
  the data on the device.
* ``linen_vmap_scan``: :func:`flax_impl.linen_train.train_epoch_scan_seeds`, the scan ``vmap``-ed over
  ``--seeds`` (8) models; its rate is in model-steps per second (seeds x steps / time).
* ``nnx_jit``: :func:`flax_impl.nnx_train.train_step` (``nnx.jit``) in a Python loop.
* ``nnx_split``: NNX's functional API: ``nnx.split((model, optimizer))`` once, a ``jax.jit``
  step on ``(graphdef, state)`` that merges, steps and returns the new state.

Method (what :func:`benchmark` does for each model, batch size and style):

1. **Correctness gate** (:mod:`parity.bench.gate`). Under ``strict`` precision and with dropout
   off (models built with ``dropout=0.0``, the only way two frameworks' steps can be compared:
   their dropout random streams differ), the style's first :data:`GATE_STEPS` losses must match
   ``torch_eager``'s within a relative :data:`GATE_RTOL`; then, for a model with dropout, the
   style's own runner with dropout on, one batch repeated and learning rate 0 must give losses
   that differ between steps (the masks change). A style that fails is reported ``failed`` and
   not timed. ``--quick`` gates each style once per model, at its first batch size.
2. **Warm-up.** A fresh runner with the model's own dropout runs one full repeat; its extra time
   over the fastest timed repeat is reported as ``compile_s`` (plus graph capture for CUDA
   graphs).
3. **Timing.** ``repeats`` repeats of ``steps`` steps, each ended by a device synchronisation
   (``torch.cuda.synchronize`` / ``block_until_ready``); steps/s = steps / seconds; the median,
   min and max are reported. Batches are gathered on the device before timing.
4. **Checks of the timed run itself.** Every loss of every repeat is finite, and every
   BatchNorm running statistic moved between before the warm-up and after the last repeat;
   otherwise the style is reported ``failed`` (no rate).

Styles that cannot run here (CUDA graphs on CPU) or would blow a run's time budget
(:func:`skip_reason`) are reported ``skipped`` with the reason; a style that raises is reported
``error`` and the others still run.

FLOPs per step are counted analytically (:func:`train_flops_per_example`) and compared with
the device's peak (:mod:`parity.bench.peak`): a float32 matmul under the timing precision, the
median of long samples, measured before and after each model's timings; on CPU it is checked
against ``cores x clock x FLOP/cycle`` and flagged when above it.

Modules: :mod:`~parity.bench.spec` (styles, constants, :class:`BenchConfig`, the
:class:`Runner` interface), :mod:`~parity.bench.workload` (shared weights and batches, FLOPs),
:mod:`~parity.bench.torch_runners` and :mod:`~parity.bench.flax_runners` (the runner classes,
one per style but for torch_eager and torch_compile, which share one; each module is loaded only
when its framework's styles run), :mod:`~parity.bench.gate`,
:mod:`~parity.bench.peak`, :mod:`~parity.bench.measure` (timing and :func:`benchmark`),
:mod:`~parity.bench.output` (tables, JSON, path checks) and :mod:`~parity.bench.plot`.

Tensors: torch gets channels-first batches (NCHW / NCW), Flax channels-last (NHWC / NWC) via
:func:`parity.layout.to_channels_last`; both index the same rows.
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
