"""What ``llava-batch run`` (and ``status --watch``, ``submit --wait``) shows while it works,
and how a run stops.

Progress goes to stderr: a rich bar (items done and failed, items/s, ETA) when stderr is a
terminal; otherwise a plain line after the first batch (a watch: at once), then at most one
every ``interval`` seconds, and a last one, so a log of a long run shows it moving.

Stopping: the first SIGINT (Ctrl-C) or SIGTERM asks the run to stop after the batch in flight
(its results are recorded; what is not done stays queued, resumable); a second one stops at once
by raising ``KeyboardInterrupt`` in the main thread, and the runner hands back what it holds.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

log = logging.getLogger(__name__)


@dataclass
class RunCounts:
    """Items of the job: all, finished (done, of which failed), and finished by this run."""

    total: int
    done: int = 0
    failed: int = 0
    done_here: int = 0

    def rate(self, elapsed: float) -> float | None:
        return self.done_here / elapsed if self.done_here and elapsed > 0 else None

    def describe(self, elapsed: float) -> str:
        rate = self.rate(elapsed)
        left = max(self.total - self.done, 0)
        eta = f"{left / rate:.0f}s" if rate else "-"
        speed = f"{rate:.2f} items/s" if rate else "- items/s"
        return f"{self.done}/{self.total} items done ({self.failed} failed), {speed}, ETA {eta}"


class RunProgress:
    """The progress of one run on ``console`` (stderr): a bar on a terminal, lines otherwise."""

    def __init__(
        self,
        console: Console,
        counts: RunCounts,
        *,
        label: str,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.counts = counts
        self.live = console.is_terminal and not console.is_dumb_terminal
        self._label = label
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last_line: float | None = None
        self._lines_done: int | None = None  # items done at the last line printed
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self.state = ""  # what a line adds after the counts (``tick``)

    def __enter__(self) -> RunProgress:
        if self.live:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("[red]{task.fields[failed]} failed[/red]"),
                TextColumn("{task.fields[speed]}"),
                TextColumn("ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console,
                # Results printed to a terminal stdout go above the bar; to a pipe or a file
                # they go there directly.
                redirect_stdout=sys.stdout.isatty(),
            )
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=self.counts.total, **self._fields())
            self._bar.update(self._task, completed=self.counts.done)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._refresh()
            self._bar.stop()
            self._bar = None
        elif exc_type is None and self._lines_done != self.counts.done:
            self._print_line()

    def advance(self, succeeded: int, failed: int) -> None:
        """One batch is done: ``succeeded`` and ``failed`` items more."""
        self.counts.done += succeeded + failed
        self.counts.done_here += succeeded + failed
        self.counts.failed += failed
        self._refresh()
        if self._bar is None:
            now = self._clock()
            if self._last_line is None or now - self._last_line >= self._interval:
                self._print_line()

    def sync(self, done: int, failed: int, *, total: int | None = None) -> None:
        """The job's counts as the database has them (sweeps finish items too; a big job's
        ``total`` grows while it is written)."""
        self.counts.done_here += max(done - self.counts.done, 0)
        self.counts.done, self.counts.failed = done, failed
        if total is not None:
            self.counts.total = total
        self._refresh()

    def tick(self, state: str = "") -> None:
        """Shows that time passes: with the bar, ``state`` beside it; otherwise a line now if
        none was printed for ``interval`` seconds, ending ``; state``."""
        self.state = state
        if self._bar is not None and self._task is not None:
            label = f"{self._label} {state}" if state else self._label
            self._bar.update(self._task, description=label)
            return
        now = self._clock()
        if self._last_line is None or now - self._last_line >= self._interval:
            self._print_line()

    def note(self, message: str) -> None:
        """A message above the bar (or a line of its own)."""
        self.console.print(message, markup=False, highlight=False)

    def describe(self) -> str:
        return self.counts.describe(self._clock() - self._started)

    def _fields(self) -> dict[str, Any]:
        counts, elapsed = self.counts, self._clock() - self._started
        rate = counts.rate(elapsed)
        eta = f"{max(counts.total - counts.done, 0) / rate:.0f}s" if rate else "-"
        return {
            "failed": counts.failed,
            "speed": f"{rate:.2f} items/s" if rate else "- items/s",
            "eta": eta,
        }

    def _refresh(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.counts.done, **self._fields())

    def _print_line(self) -> None:
        self._last_line, self._lines_done = self._clock(), self.counts.done
        state = f"; {self.state}" if self.state else ""
        self.console.print(f"progress: {self.describe()}{state}", markup=False, highlight=False)


class Interrupts:
    """SIGINT and SIGTERM while a run is under way (a context manager; the previous handlers
    come back on exit). While ``graceful`` (working through batches), the first signal only sets
    ``requested`` and calls ``on_request``; a second, or any outside ``graceful`` (loading the
    model), raises ``KeyboardInterrupt`` at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, on_request: Callable[[str], None] | None = None) -> None:
        self.on_request = on_request
        self.graceful = False
        self.requested: str | None = None  # the name of the first signal
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def stop_requested(self) -> bool:
        return self.requested is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None or not self.graceful:
            self.requested = self.requested or name
            raise KeyboardInterrupt(name)
        self.requested = name
        if self.on_request is not None:
            try:
                self.on_request(name)
            except RuntimeError as exc:  # stderr was mid-write in this very thread
                log.debug("could not show the stop notice: %s", exc)
