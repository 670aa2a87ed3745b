"""One progress mechanism for every long command: a rich bar on stderr, or plain lines in a log.

::

    with Progress("epochs", total=48, enabled=True) as bar:
        bar.describe("torch_correct seed 0")
        bar.advance()
        bar.log("torch_correct seed 0: 96.1 %")   # printed above the bar, kept in logs

On a terminal the bar redraws in place; when stderr is a file or a pipe (CI logs), each
``describe`` prints one ``[done/total] text`` line instead. ``enabled=False`` makes every method
a no-op, so library code can always take a ``Progress``.
"""

from __future__ import annotations

import sys
from types import TracebackType


class Progress:
    """A bar over ``total`` units of work named ``unit``; rich on a terminal, lines elsewhere."""

    def __init__(self, unit: str, total: int, enabled: bool = True, transient: bool = False) -> None:
        self.unit, self.total, self.enabled = unit, total, enabled
        self.done = 0
        self._bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        console = Console(stderr=True)
        self.console = console
        if console.is_terminal:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description:<34}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(unit),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=transient,
            )
            self._task = self._bar.add_task("starting", total=total)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, value, tb)

    def describe(self, text: str) -> None:
        """Name the work now under way (a log line per call when not on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, description=text, refresh=True)  # now, not at the next tick
        else:
            print(f"[{self.done}/{self.total} {self.unit}] {text}", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` units done."""
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def log(self, text: str) -> None:
        """Print a line that stays (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)
