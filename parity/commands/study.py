"""``parity study``: the options become a frozen, validated :class:`StudyOptions` over
:func:`parity.study.driver.run_study`; nothing below this module sees the ``Namespace``.

Exit codes: 0 done; 1 a mode audit contradicted its expectation, or the outputs could not be
written (``results.json`` saved elsewhere); 2 bad input, checked before any training; 130
interrupted (finished variants kept for a rerun, the previous outputs unchanged).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from parity.registry import STUDY_MODEL_DATASET
from parity.study.config import (
    EVAL_SCHEDULES,
    LINEN_PATHS,
    QUICK,
    STUDY_DATASETS,
    STUDY_MODELS,
    VARIANT_NAMES,
    StudyConfig,
    StudyError,
)

DEFAULTS = StudyConfig()


def _variant_list(text: str) -> list[str]:
    """One ``--variants`` token: a name or a comma-separated list of names."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    for name in names:
        if name not in VARIANT_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown variant {name!r}; choose from {', '.join(VARIANT_NAMES)}"
            )
    return names


def eval_schedule(text: str) -> int | str:
    """One ``--eval-every`` value: a step count >= 1, ``epoch`` or ``end``."""
    if text in EVAL_SCHEDULES:
        return text
    try:
        steps = int(text)
    except ValueError:
        steps = 0
    if steps < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: a number of training steps >= 1, or one of {', '.join(EVAL_SCHEDULES)}"
        )
    return steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``parity study``: what to train, how to run it, where the files go."""
    _add_training_options(parser)
    _add_model_options(parser)
    _add_execution_options(parser)
    _add_output_options(parser)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=STUDY_DATASETS,
        default=None,
        help=f"dataset (default: the --model's, else {DEFAULTS.dataset})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help=f"number of seeds 0..N-1 (default {DEFAULTS.seeds}; --quick {QUICK['seeds']})",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs per run (default {DEFAULTS.epochs}; --quick {QUICK['epochs']})",
    )
    parser.add_argument(
        "--lr", type=float, default=DEFAULTS.lr, help=f"SGD learning rate (default {DEFAULTS.lr})"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULTS.batch_size,
        help=f"batch size, at least 2 (default {DEFAULTS.batch_size})",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        type=_variant_list,
        default=None,
        metavar="VARIANT",
        help=f"variants to train, space- or comma-separated (default: all of {', '.join(VARIANT_NAMES)})",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    pairs = ", ".join(f"{m} ({d})" for m, d in STUDY_MODEL_DATASET.items())
    parser.add_argument(
        "--model",
        choices=STUDY_MODELS,
        default=None,
        help=f"architecture and its dataset: {pairs} (default: the dataset's own, signal1d on mnist1d)",
    )
    parser.add_argument(
        "--eval-every",
        type=eval_schedule,
        default=DEFAULTS.eval_every,
        metavar="STEPS",
        help="when the loops evaluate inside training: every STEPS training steps, 'epoch' (after "
        "every epoch, the default) or 'end' (only after the last epoch: the control, where "
        "no evaluation can leak a mode)",
    )


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    from parity.device import DEVICES, PRECISIONS

    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULTS.device,
        help="auto: the GPU when torch and jax both see one, else the CPU (with a warning when "
        "only torch sees a GPU) (default auto)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="float32 policy on GPUs: strict = no TF32 in either framework, so "
        "both compute alike; default = each framework's own (default strict)",
    )
    parser.add_argument(
        "--linen-path",
        choices=LINEN_PATHS,
        default=DEFAULTS.linen_path,
        help="Linen execution: loop of jitted steps per seed, or a scan epoch "
        "vmap-ed over seeds; auto = loop on CPU, vmap on GPU (default auto)",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        metavar="N",
        help="torch intra-op threads (default: 1 on CPU, where these small models "
        "gain nothing from more; torch's own on a GPU)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=DEFAULTS.devices,
        metavar="N",
        help="spread the seeds over N devices: GPUs, or on CPU N worker processes (and N simulated "
        "jax devices for --linen-path vmap); same numbers as 1 (default 1)",
    )


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="./study-out",
        metavar="DIR",
        help="output directory for results.json, curves.png, report.md (default ./study-out)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a first look: {QUICK['seeds']} seeds x {QUICK['epochs']} epochs "
        "(explicit --seeds/--epochs win)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class StudyOptions:
    """What ``parity study`` was asked to do: the study, where its files go, whether to show
    progress. Built by :func:`options_from_args`, validated there."""

    study: StudyConfig
    out: str
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`StudyError` for a bad study field (see :meth:`StudyConfig.validate`) or
        an empty ``out``."""
        self.study.validate()
        if not self.out.strip():
            raise StudyError("--out is empty; name the output directory (default ./study-out)")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The :class:`StudyConfig` the options describe (``--quick`` fills unset seeds/epochs)."""
    base = QUICK if args.quick else {"seeds": DEFAULTS.seeds, "epochs": DEFAULTS.epochs}
    variants = (
        tuple(dict.fromkeys(n for token in args.variants for n in token)) if args.variants else VARIANT_NAMES
    )
    model = args.model
    dataset = args.dataset or (STUDY_MODEL_DATASET[model] if model else DEFAULTS.dataset)
    return StudyConfig(
        dataset=dataset,
        seeds=base["seeds"] if args.seeds is None else args.seeds,
        epochs=base["epochs"] if args.epochs is None else args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        variants=variants,
        device=args.device,
        precision=args.precision,
        linen_path=args.linen_path,
        torch_threads=args.torch_threads,
        model=model,
        eval_every=args.eval_every,
        devices=args.devices,
    )


def options_from_args(args: argparse.Namespace) -> StudyOptions:
    """The validated :class:`StudyOptions` of the parsed arguments (:class:`StudyError` if invalid)."""
    options = StudyOptions(config_from_args(args), args.out, progress=not args.no_progress)
    options.validate()
    return options


def _warn(message: str) -> None:
    print(f"parity study: warning: {message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Run the study the options describe; print the table; write the outputs."""
    from parity.io import ensure_writable_dir
    from parity.study.outputs import check_output_names

    options = options_from_args(args)
    try:
        out = ensure_writable_dir(options.out)  # before any training
    except OSError as e:
        raise StudyError(str(e)) from e
    check_output_names(out)
    return run_options(options, out)


def run_options(options: StudyOptions, out: Path) -> int:
    """Train, print the table, write the outputs into ``out`` (an existing, writable directory).
    Each finished variant is kept in ``out`` until the outputs are written, so an interrupted
    run resumes (:mod:`parity.study.partial`)."""
    from parity.study.driver import run_study
    from parity.study.outputs import clean_stale
    from parity.study.partial import PARTIAL_DIR
    from parity.study.runners import configure_runtime
    from parity.study.stats import summarize

    clean_stale(out)  # what a killed run left behind
    config = options.study
    if config.devices > 1 and config.device != "cuda":  # simulated CPU devices: before jax starts
        from parity.replicas import ensure_jax_cpu_devices

        try:
            ensure_jax_cpu_devices(config.devices)
        except ValueError as e:  # parity.replicas speaks ValueError
            raise StudyError(str(e)) from e
    runtime = configure_runtime(config.device, config.precision, warn=_warn)
    try:
        results = run_study(config, progress=options.progress, runtime=runtime, keep=out)
    except KeyboardInterrupt:
        kept = sorted(p.stem for p in (out / PARTIAL_DIR).glob("*.json"))
        print(
            f"parity study: interrupted; {_kept_text(kept, out / PARTIAL_DIR)}; the outputs in {out} "
            "are unchanged. Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    if results.get("resumed_variants"):
        print(f"parity study: resumed {', '.join(results['resumed_variants'])} from {out / PARTIAL_DIR}")
    summary = summarize(results)
    _print_table(results, summary, runtime)  # first: the numbers are shown whatever happens next
    code = _write(results, out)
    if code:
        return code
    bad = [v for v, s in summary.items() if s["audit"]["as_expected"] is False]
    if bad:
        print(f"parity study: mode audit contradicts the expectation for {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def _kept_text(kept: list[str], folder: Path) -> str:
    if not kept:
        return "no variant had finished"
    return f"finished variants kept in {folder}: {', '.join(kept)}"


def _print_table(results: dict, summary: dict, runtime) -> None:
    from parity.study.report import print_table

    c = results["config"]
    print_table(
        summary,
        title=f"parity study: {c['model']} on {c['dataset']}, {c['seeds']} seeds x {c['epochs']} epochs, {runtime.device} "
        f"({runtime.precision} float32), {results['total_wall_time_s']:.0f} s",
    )


def _write(results: dict, out: Path) -> int:
    """Write the outputs; 0 when written, else the exit code after saving what can be saved."""
    from parity.study.outputs import save_results_elsewhere, write_outputs
    from parity.study.partial import PARTIAL_DIR

    try:
        paths = write_outputs(results, out)
    except KeyboardInterrupt:
        print(
            f"parity study: interrupted while writing; {out} holds one complete set of files "
            f"(the previous run's or this one's), never a mix; the finished variants are kept in "
            f"{out / PARTIAL_DIR}",
            file=sys.stderr,
        )
        return 130
    except Exception as e:  # the training is done: keep its numbers whatever failed
        saved, failed = save_results_elsewhere(results)
        where = f"results.json saved to {saved}" if saved else "results.json could not be saved anywhere"
        tried = f" (also failed: {'; '.join(failed)})" if failed else ""
        raise StudyWriteError(f"could not write the outputs to {out}: {e}; {where}{tried}") from e
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


class StudyWriteError(StudyError):
    """The study trained but its outputs could not be written (results.json saved elsewhere)."""

    exit_code = 1
