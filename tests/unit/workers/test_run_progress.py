"""``run``'s progress display and its signal handling, without a model or a database."""

from __future__ import annotations

import io
import os
import signal

import pytest
from rich.console import Console

from jobs.cli.progress import Interrupts, RunCounts, RunProgress
from jobs.cli.run_output import RunFormat
from jobs.exports import ResultFormat


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_at_most_every_interval_and_a_last_one() -> None:
    buffer, clock = io.StringIO(), Clock()
    console = Console(file=buffer, force_terminal=False, width=200)
    with RunProgress(console, RunCounts(total=10), label="job", interval=5, clock=clock) as p:
        assert not p.live
        clock.now += 1
        p.advance(2, 0)  # the first batch: a line
        clock.now += 1
        p.advance(2, 1)  # within the interval: none (2 succeeded, 1 failed)
        clock.now += 5
        p.advance(2, 0)  # past it: a line
        clock.now += 1
        p.advance(1, 0)
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "progress: 2/10 items done (0 failed), 2.00 items/s, ETA 4s",
        "progress: 7/10 items done (1 failed), 1.00 items/s, ETA 3s",
        "progress: 8/10 items done (1 failed), 1.00 items/s, ETA 2s",
    ]


def test_a_watch_ticks_a_line_at_once_then_every_interval_with_its_state() -> None:
    """``status --watch`` off a terminal: a line even while nothing moves, so a log shows the
    wait; the job's counts as the database has them (its total grows while it is written)."""
    buffer, clock = io.StringIO(), Clock()
    console = Console(file=buffer, force_terminal=False, width=200)
    with RunProgress(console, RunCounts(total=4), label="job", interval=5, clock=clock) as p:
        p.tick("queued, waiting for a worker")  # at once
        clock.now += 3
        p.tick("queued, waiting for a worker")  # within the interval: none
        clock.now += 3
        p.sync(2, 0, total=6)
        p.tick("in_progress")
        clock.now += 2
        p.sync(6, 1)
    lines = buffer.getvalue().splitlines()
    assert lines == [
        "progress: 0/4 items done (0 failed), - items/s, ETA -; queued, waiting for a worker",
        "progress: 2/6 items done (0 failed), 0.33 items/s, ETA 12s; in_progress",
        "progress: 6/6 items done (1 failed), 0.75 items/s, ETA 0s; in_progress",
    ]


def test_a_bar_on_a_terminal_with_done_failed_rate_and_eta() -> None:
    buffer, clock = io.StringIO(), Clock()
    console = Console(file=buffer, force_terminal=True, width=150, color_system=None)
    counts = RunCounts(total=8, done=2, failed=1)  # a resumed job: 2 finished before
    with RunProgress(console, counts, label="abcd1234", clock=clock) as progress:
        assert progress.live
        clock.now += 2
        progress.advance(3, 1)
        progress.note("a message above the bar")
    shown = buffer.getvalue()
    assert "abcd1234" in shown and "6/8" in shown and "2 failed" in shown
    assert "2.00 items/s" in shown and "ETA 1s" in shown  # 4 done here in 2 s; 2 left
    assert "a message above the bar" in shown
    assert "progress: " not in shown


def test_the_first_signal_asks_to_stop_and_a_second_stops_at_once() -> None:
    notices: list[str] = []
    with Interrupts(on_request=notices.append) as interrupts:
        interrupts.graceful = True
        os.kill(os.getpid(), signal.SIGTERM)
        assert interrupts.stop_requested() and notices == ["SIGTERM"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_batches_the_first_signal_stops_at_once() -> None:
    with Interrupts() as interrupts, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # loading the model: nothing to finish
    assert interrupts.requested == "SIGINT"


def test_run_formats_are_text_and_every_results_format_of_one_stream() -> None:
    # txt writes a folder of files, one per item: results -o DIR only, for now.
    streamed = {f.value for f in ResultFormat} - {ResultFormat.txt.value}
    assert {f.value for f in RunFormat} == {"text"} | streamed
