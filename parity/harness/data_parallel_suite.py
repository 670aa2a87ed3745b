"""What ``parity check --data-parallel N`` runs: checks 1-4 of :mod:`parity.harness.data_parallel`
on a built-in model, and optionally the measured mismatches (MODE_BUGS.md rows 10-14).

Per model: the model's default architecture with dropout off (dropout masks differ per
framework and per rank), seeded, ``K`` SGD steps on ``K`` global batches of ``B`` training rows;
torch DDP over ``N`` gloo ranks (:mod:`torch_impl.data_parallel`) and Flax on ``N`` simulated
CPU devices in a child process (:func:`parity.harness.data_parallel.run_flax`); with
``device="cuda"``, ``N`` nccl ranks and the same ``N`` GPUs for Flax, strict float32. Every check
is a largest relative L2 gap per kind of tensor (logits, gradients, running mean, running var)
against :data:`TOL`; a mismatch row *passes* when every kind it measures is more than
:data:`MISMATCH_FACTOR` times ``TOL`` away, i.e. when the bug is visible.

Everything that can be refused is refused by :meth:`DataParallelConfig.validate`, before any
process starts: a world size the machine cannot hold (:func:`parity.replicas.check_replicas`),
a global batch not divisible by ``N`` (with the numbers), fewer than two rows per replica
(BatchNorm), more rows than the training split holds; on CUDA more replicas than GPUs (so on
a one-GPU machine anything above 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from parity import replicas
from parity.defaults import FLOAT64_REL_TOL
from parity.harness import data_parallel as dp
from parity.harness.compare import TOLERANCES
from parity.registry import MODELS
from parity.table import format_table
from torch_impl import data_parallel as torch_dp

#: the float32 tolerance of every check: the project's parity tolerance; the reduction-order
#: effect of splitting the batch measured <= 4.2e-6 (N = 2) and <= 5.0e-6 (N = 4), as large as
#: float32-vs-float64 itself (numbers and float64 re-measurement: tests/test_data_parallel.py)
TOL = TOLERANCES["gradient"]
#: a mismatch row shows its bug when each of its gaps is this many tolerances away
MISMATCH_FACTOR = 100
#: the trajectory's default length (``--trajectory`` sets it)
DEFAULT_STEPS = 3
#: BatchNorm in training mode needs two rows per replica (torch refuses one)
MIN_ROWS_PER_REPLICA = 2


@dataclass(frozen=True)
class DataParallelConfig:
    """One ``parity check --data-parallel`` run; ``device`` is resolved (``cpu`` or ``cuda``)."""

    world_size: int
    models: tuple[str, ...] = MODELS
    steps: int = DEFAULT_STEPS
    batch_size: int = 128
    device: str = "cpu"
    mismatches: bool = False
    seed: int = 0
    timeout_s: float = 1800.0
    json: Path | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` with one line for anything that cannot run (module doc)."""
        for m in self.models:
            if m not in MODELS:
                raise ValueError(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
        if self.steps < 1:
            raise ValueError(f"--trajectory must be at least 1 step with --data-parallel, got {self.steps}")
        replicas.check_replicas(self.world_size, self.device, "--data-parallel")
        n, b = self.world_size, self.batch_size
        if b % n:
            raise ValueError(f"global batch {b} is not divisible by --data-parallel {n} (remainder {b % n})")
        if b // n < MIN_ROWS_PER_REPLICA:
            raise ValueError(
                f"global batch {b} over {n} replicas leaves {b // n} row(s) per replica; "
                f"BatchNorm needs at least {MIN_ROWS_PER_REPLICA}"
            )
        for m in self.models:
            dp.check_rows(m, self.steps, b)


@dataclass(frozen=True)
class DataParallelRow:
    """One check (``expect == "same"``) or one demonstrated mismatch (``"differs"``)."""

    model: str
    check: str
    gaps: dict[str, float]
    expect: str = "same"
    #: the same comparison with both runs in float64, when float32 could not decide it
    float64_gaps: dict[str, float] | None = None

    @property
    def threshold(self) -> float:
        return TOL if self.expect == "same" else MISMATCH_FACTOR * TOL

    @property
    def passed(self) -> bool:
        """A "same" row passes within :data:`TOL` in float32, or, re-judged, within
        :data:`parity.defaults.FLOAT64_REL_TOL` in float64 (a float32 decision flip, such as a
        max-pool near-tie that the shards round differently, is not a difference of the code)."""
        if self.expect == "same":
            if self.float64_gaps is not None:
                return max(self.float64_gaps.values()) < FLOAT64_REL_TOL
            return max(self.gaps.values()) < self.threshold
        return min(self.gaps.values()) > self.threshold

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "check": self.check,
            "expect": self.expect,
            "gaps": dict(self.gaps),
            "threshold": self.threshold,
            "float64_gaps": None if self.float64_gaps is None else dict(self.float64_gaps),
            "passed": self.passed,
        }


@dataclass
class DataParallelResult:
    """Every row of a run, in order."""

    config: DataParallelConfig
    rows: list[DataParallelRow] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)


#: torch variants of the mismatch rows (MODE_BUGS.md 10, 11, 14)
MISMATCH_VARIANTS = (
    torch_dp.Variant("plain", sync_bn=False),
    torch_dp.Variant("broadcast", sync_bn=False, broadcast_buffers=True),
    torch_dp.Variant("eval_on_rank0", sync_bn=False, eval_rank=0, eval_after=0),
)


def _check_rows(model: str, ranks: list[dict], single: dict, out: dict, spec, x0: np.ndarray) -> list:
    views = dp.replica_views(out, "shard_map_axis")
    return [
        DataParallelRow(
            model, "1 DDP + SyncBN == torch one process", dp.compare_records(ranks, "sync", single, "single")
        ),
        DataParallelRow(model, "2 Linen jit, sharded batch == one device", dp.compare_flax(out, "jit")),
        DataParallelRow(model, "2 NNX jit, sharded batch == one device", dp.compare_flax(out, "nnx_jit")),
        DataParallelRow(
            model,
            "3 Linen shard_map + axis_name == jit",
            dp.compare_records(views, "shard_map_axis", out, "jit", False),
        ),
        DataParallelRow(
            model,
            "4 DDP + SyncBN == Linen jit (converter)",
            dp.compare_torch_flax(ranks, "sync", out, "jit", spec, x0),
        ),
    ]


def _only(gaps: dict[str, float], kinds: tuple[str, ...]) -> dict[str, float]:
    return {k: gaps[k] for k in kinds}


def _mismatch_rows(model: str, ranks: list[dict], single: dict, out: dict) -> list:
    stats, r1 = ("running_mean", "running_var"), ranks[-1]
    per_rank = [dp.compare_records([r], "eval_on_rank0", r, "plain") for r in ranks]
    eval_on = {k: max(g[k] for g in per_rank) for k in ("logits", "grad", "running_mean")}
    unsynced, synced = out["eval/unsynced"], out["eval/synced"]
    return [
        DataParallelRow(
            model,
            "10 DDP without SyncBN vs one process",
            dp.compare_records(ranks, "plain", single, "single"),
            "differs",
        ),
        DataParallelRow(
            model,
            "11 broadcast_buffers: last rank's stats moved",
            _only(dp.compare_records([r1], "broadcast", r1, "plain"), stats),
            "differs",
        ),
        DataParallelRow(
            model,
            "12 shard_map without axis_name vs jit",
            dp.compare_flax(out, "shard_map_no_axis", "jit"),
            "differs",
        ),
        DataParallelRow(
            model,
            "13 eval, stats not pmean-ed: replicas",
            {"logits": dp.rel_l2(unsynced[-1], unsynced[0])},
            "differs",
        ),
        DataParallelRow(model, "13 eval after pmean: replicas", {"logits": dp.rel_l2(synced[-1], synced[0])}),
        DataParallelRow(model, "14 eval() left on by rank 0 vs without", eval_on, "differs"),
    ]


def run_model(config: DataParallelConfig, model: str, log: Callable[[str], None]) -> list[DataParallelRow]:
    """Checks 1-4 (and the mismatch rows if asked) for one model."""
    spec = torch_dp.RunSpec(model=model, config={"dropout": 0.0}, seed=config.seed)
    x, y, x_eval = dp.model_batches(model, config.steps, config.batch_size)
    n, device = config.world_size, config.device
    variants = (torch_dp.Variant("sync"), *(MISMATCH_VARIANTS if config.mismatches else ()))
    log(
        f"# {model}: torch DDP over {n} {torch_dp.BACKENDS[device]} ranks ({len(variants)} variant(s), {config.steps} steps)"
    )
    ranks = torch_dp.run_ddp(spec, variants, x, y, n, config.timeout_s, replicas.max_replicas(device), device)
    single = torch_dp.run_single(spec, x, y, device)
    log(
        f"# {model}: Flax on {n} {'GPU(s)' if device == 'cuda' else 'simulated CPU devices'} (a child process)"
    )
    out = dp.run_flax(spec, x, y, x_eval, n, timeout_s=config.timeout_s, device=device)
    rows = _check_rows(model, ranks, single, out, spec, x[0])
    if not rows[0].passed:
        rows[0] = _rejudge_in_float64(config, rows[0], spec, x, y, log)
    return rows + (_mismatch_rows(model, ranks, single, out) if config.mismatches else [])


def _rejudge_in_float64(
    config: DataParallelConfig, row: DataParallelRow, spec, x: np.ndarray, y: np.ndarray, log
) -> DataParallelRow:
    """Check 1 again with DDP + SyncBN and the one process both in float64: float32 can route a
    max-pool gradient to the other element of a near-tied window when the shards round
    differently (3.5e-7 relative apart: tests/test_data_parallel_cli.py), which BN's cancelling
    bias gradients amplify to ~1e-2; float64 resolves such ties, so a real difference remains."""
    log(f"# {row.model}: check 1 is {max(row.gaps.values()):.2e} in float32; judged again in float64")
    spec64 = dataclasses.replace(spec, dtype="float64")
    n, device = config.world_size, config.device
    ranks = torch_dp.run_ddp(
        spec64, (torch_dp.Variant("sync"),), x, y, n, config.timeout_s, replicas.max_replicas(device), device
    )
    single = torch_dp.run_single(spec64, x, y, device)
    return dataclasses.replace(row, float64_gaps=dp.compare_records(ranks, "sync", single, "single"))


def run_data_parallel(config: DataParallelConfig, log: Callable[[str], None]) -> DataParallelResult:
    """Every model of ``config`` (validated first); raises ``ValueError`` for refused input and
    :class:`torch_impl.data_parallel.WorkerError` / ``RuntimeError`` when a worker fails."""
    config.validate()
    result = DataParallelResult(config)
    for model in config.models:
        result.rows.extend(run_model(config, model, log))
    return result


def _cell(gaps: dict[str, float], kind: str) -> str:
    return f"{gaps[kind]:.2e}" if kind in gaps else "-"


def _float64_note(row: DataParallelRow) -> str:
    if row.float64_gaps is None:
        return ""
    return (
        f" (float64 {max(row.float64_gaps.values()):.1e} < {FLOAT64_REL_TOL:.0e})"
        if row.passed
        else " (float64 too)"
    )


def format_rows(rows: list[DataParallelRow]) -> str:
    """The text table: one line per row, one column per kind of tensor."""
    head = ["model", "check", *dp.KINDS, "expect", "pass"]
    body = [
        [
            r.model,
            r.check,
            *(_cell(r.gaps, k) for k in dp.KINDS),
            f"{'<' if r.expect == 'same' else '>'} {r.threshold:.0e}",
            ("ok" if r.passed else "FAIL") + _float64_note(r),
        ]
        for r in rows
    ]
    return format_table(head, body)


def write_json(result: DataParallelResult, path: Path) -> None:
    """``{"passed", "world_size", "device", "steps", "batch_size", "tolerance", "rows"}``, atomically."""
    from parity.io import atomic_write_json

    c = result.config
    doc = {
        "passed": result.passed,
        "world_size": c.world_size,
        "device": c.device,
        "models": list(c.models),
        "steps": c.steps,
        "batch_size": c.batch_size,
        "seed": c.seed,
        "tolerance": TOL,
        "rows": [r.as_dict() for r in result.rows],
    }
    atomic_write_json(path, doc)
