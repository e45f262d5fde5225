"""The threads that feed the model (reading and decoding inputs) and their share of the CPU.

They must never slow the model down. Measured on 2 cores with the tiny model, a batch that
generates in 43 ms alone took 730 ms beside 16 busy decode threads and 240 to 290 ms with those
threads at a lower priority: each of the model's many small torch ops gives the GIL up and
queues for it again, behind every runnable thread, and the scheduler shares a core evenly
between runnable threads. So a worker decodes on few threads (about its cores, split between
its slots), and those threads run at a lower priority than the model's: on a contended core the
scheduler gives the model's thread about ten times their share. Decoding still has every core
the model does not use: a lower priority only matters when a core is contended.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from jobs.cores import usable_cores

log = logging.getLogger(__name__)

# Added to a helper thread's nice value: on Linux a weight of about a tenth of the model's.
HELPER_NICENESS = 10
# Decode threads per slot at most, when chosen automatically: beyond a few, more threads add
# GIL contention for the model's thread faster than decoding speed.
MAX_AUTO_DECODE_THREADS = 4


def helper_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A pool whose threads run at a lower priority than the thread that feeds the model."""
    return ThreadPoolExecutor(
        max_workers=max(1, threads), thread_name_prefix=name, initializer=lower_priority
    )


def lower_priority() -> None:
    """Lowers the calling thread's priority by ``HELPER_NICENESS``.

    Linux only: there a nice value is per thread. Elsewhere ``setpriority`` on a thread id would
    reach the whole process, or another one; those threads keep their priority.
    """
    if sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        now = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, now + HELPER_NICENESS)  # the kernel caps it at 19
    except OSError as exc:  # a sandbox may forbid it: decoding works, only less politely
        log.debug("could not lower a helper thread's priority: %s", exc)


def decode_threads_per_slot(configured: int, slots: int, cores: int | None = None) -> int:
    """Decode threads each slot gets: ``configured`` (the worker's total; 0 chooses the usable
    cores, at most ``MAX_AUTO_DECODE_THREADS`` per slot) split between ``slots``, at least one."""
    slots = max(1, slots)
    if configured:
        return max(1, configured // slots)
    cores = usable_cores() if cores is None else cores
    return max(1, min(MAX_AUTO_DECODE_THREADS, cores // slots))
