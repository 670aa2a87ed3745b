"""The ``parity`` command line: a thin layer over library functions.

Each sub-command lives in its own module under :mod:`parity.commands`, which exposes two
functions:

* ``add_arguments(parser: argparse.ArgumentParser) -> None``
* ``run(args: argparse.Namespace) -> int``  (the process exit code)

Modules are imported only when their sub-command runs, so ``parity lint`` starts without
loading torch or jax.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from parity.errors import ParityError

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "study": (
        "parity.commands.study",
        "train every mode-handling variant over seeds and report the seed's bug",
    ),
    "sweep": (
        "parity.commands.sweep",
        "the study over a grid of models x evaluation schedules, with collapse counts",
    ),
    "check": ("parity.commands.check", "compare the torch, Linen and NNX models on converted weights"),
    "convert": (
        "parity.commands.convert",
        "convert a checkpoint between torch (.pt, .safetensors) and Flax (.msgpack)",
    ),
    "port": (
        "parity.commands.port",
        "write the Flax port (NNX or Linen) of a torch model, its weights, and check it",
    ),
    "map": ("parity.commands.map", "show how a torch model's weights pair with a Flax model's"),
    "lint": ("parity.commands.lint", "find train()/eval() misplacement in PyTorch training code"),
    "bench": ("parity.commands.bench", "training throughput per framework and execution style"),
}


#: sub-commands in which torch runs while XLA compiles in a background thread
#: (:mod:`parity.harness.ahead`): torch's OpenMP threads sleep between parallel regions instead
#: of spinning, which took the second core from the compiler (ResNet-18 ``check --localize``,
#: idle 2-core box: 41-43 -> 33-34 CPU s, 28-31 -> 24-25 s wall; BENCHMARKS.md). It changes no
#: value. Not ``bench``: its torch rates are measured with the default policy.
SLEEPING_OMP_THREADS = frozenset({"check", "port"})


def configure_threads(command: str) -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for :data:`SLEEPING_OMP_THREADS` unless the user set a
    policy; it takes effect when torch is first imported (later in this process)."""
    if command in SLEEPING_OMP_THREADS:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser; only the chosen sub-command's module is imported."""
    from parity import __version__

    parser = argparse.ArgumentParser(prog="parity", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in (argv or []) if not a.startswith("-")), None)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``parity``; returns the exit code (0 ok, 1 findings/failures, 2 usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    configure_threads(args.command)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args))
    except ParityError as e:  # the one place a user-facing error becomes one line and an exit code
        print(f"parity {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # outputs are written atomically (parity.io): nothing half-written
        print(f"parity {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
