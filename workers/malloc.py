"""glibc's malloc arenas, capped for a worker process.

glibc gives threads their own malloc arenas, up to eight per core, and keeps what each arena
once held. A worker runs many threads (its slots, a decode pool per message, lease keepers), so
its resident memory crept up batch after batch: ``bench/steady_state.py`` measured +4.5 to
+7.7 % over 5,000 items with the default, +1.7 % with two arenas (and no slower: 191 items/s
against 135 to 164). Most large buffers (decoded images, tensors) are mapped on their own
rather than taken from an arena, so two arenas cost the decode threads little.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h


def cap_arenas(arenas: int = ARENAS) -> bool:
    """Caps the arenas glibc creates from now on; returns whether it did. Nothing when the
    operator set ``MALLOC_ARENA_MAX`` (glibc read it at start) or outside glibc."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    done = bool(mallopt(_M_ARENA_MAX, arenas))
    if done:
        log.debug("malloc arenas capped at %d", arenas)
    return done
