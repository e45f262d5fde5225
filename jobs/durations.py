"""Periods written as a number and a unit (``90m``, ``24h``, ``7d``), as users write them."""

from __future__ import annotations

import re

from jobs.errors import RequestError

_PERIOD = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_period(
    text: str, *, option: str, low: int, high: int, code: str = "invalid_option"
) -> int:
    """Seconds in ``text``, between ``low`` and ``high``; a RequestError (``code``) naming
    ``option`` otherwise."""
    match = _PERIOD.match(text.strip().lower())
    if not match or not match.group(1).strip("0"):
        raise RequestError(
            f"{option} {text!r} is not a period: use a number and s, m, h or d, like 15m.",
            code=code,
        )
    digits, unit = match.groups()
    seconds = high + 1 if len(digits) > 12 else int(digits) * _UNITS[unit]
    if not low <= seconds <= high:
        raise RequestError(
            f"{option} {text!r} is out of range: a period is between {written_period(low)} and "
            f"{written_period(high)}.",
            code=code,
        )
    return seconds


def written_period(seconds: int) -> str:
    """``seconds`` as a user would write it: 30d, 12h, 90m, 45s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# A completion window: at least a minute (the sweeper's resolution is its interval), at most a
# year, like a schedule's period.
MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = 366 * 86400


def parse_window(text: str, *, option: str = "--completion-window") -> int:
    return parse_period(text, option=option, low=MIN_WINDOW_SECONDS, high=MAX_WINDOW_SECONDS)


# A retention: at least a minute (the sweeper's resolution again), at most ten years.
MIN_RETAIN_SECONDS = 60
MAX_RETAIN_SECONDS = 3660 * 86400


def parse_retain(text: str, *, option: str = "--retain") -> int:
    return parse_period(text, option=option, low=MIN_RETAIN_SECONDS, high=MAX_RETAIN_SECONDS)
