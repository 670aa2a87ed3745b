"""The one base of the project's one-line errors, caught once in :mod:`parity.cli`.

Raise a subclass (or :class:`ParityError` itself) for anything a user can fix: bad input, a
model that does not fit, a device that is missing. The message is the whole story, one line,
naming what the user gave; the CLI prints ``parity COMMAND: message`` and exits 2.
Framework-free: importing it loads neither torch nor jax.
"""

from __future__ import annotations


class ParityError(Exception):
    """A user-facing error: its message is printed as one line, without a traceback."""

    #: the process exit code the CLI returns for it (2: bad input, as argparse does)
    exit_code: int = 2
