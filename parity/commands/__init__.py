"""The ``parity`` sub-commands: argparse only.

Each module has ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). It turns the
``argparse.Namespace`` into a frozen, validated config and calls the library; nothing below
``parity.commands`` ever sees a ``Namespace``. :mod:`parity.cli` imports a module only when its
command runs, so ``parity lint`` loads neither torch nor jax.
"""
