"""Fetching and decoding ahead of the model, in input order, within a budget.

The model batch is the worker's unit of work; everything before it (reading bytes, decoding an
image, rendering a page) happens in thread pools so that batch N+1 is ready when batch N is
done: reading in ``pool``, decoding in ``decode_pool`` (the same pool when none is given).
Without a bound, a message of 120 large PNGs or a document of 50 huge pages is decoded whole
before the model sees any of it. Here the cost of every unit is known before it is paid (an
image's header, a page's size), and a unit is admitted for decoding only while the units
decoding or decoded, and not yet released by the model, stay within ``max_units`` and
``max_pixels``. A single unit larger than the pixel budget is still admitted once nothing else
is held, so every input makes progress.

Only the thread that iterates touches the budget; the pool threads only read and decode.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jobs.errors import ItemErrorCode
from jobs.lifecycle import ClaimedItem, ItemOutcome
from model.errors import InputError
from workers.generation import Unit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedUnit:
    """One unit of an input (an image, or one page), its cost known, not decoded yet.

    ``decode`` returns the RGB image (None for a request of text alone) and raises
    ``InputError`` for a bad input.
    """

    item: ClaimedItem
    page: int | None
    pixels: int
    decode: Callable[[], Any]


@dataclass(frozen=True)
class Planned:
    """An input read and checked against its budgets; its units are decoded when admitted."""

    item: ClaimedItem
    units: tuple[PlannedUnit, ...]


# What fetching one input gives: its plan, its final outcome (it failed), or None: hand it back.
Fetched = Planned | ItemOutcome | None


@dataclass(frozen=True)
class HandBack:
    """The input could not be read for a transient reason: hand the item back."""

    item: ClaimedItem


@dataclass(frozen=True)
class Ready:
    """A unit decoded (``error_code`` None) or failed, in input order.

    ``units_of_item``: how many units its item has. ``pixels``: what it holds until released.
    """

    unit: Unit
    units_of_item: int
    pixels: int
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class Flush:
    """Nothing more fits the budget until the consumer runs the model on what it holds."""


Event = ItemOutcome | HandBack | Ready | Flush


class Lookahead:
    """Iterates the events of ``items`` in order: outcomes of inputs that failed to fetch,
    hand-backs, and decoded units; ``Flush`` when the budget is full of units the consumer
    holds. The consumer calls ``release(ready.pixels)`` for every ``Ready`` once it is done
    with it (after the model ran on it, or at once for a failed unit)."""

    def __init__(
        self,
        items: Sequence[ClaimedItem],
        fetch: Callable[[ClaimedItem], Fetched],
        pool: ThreadPoolExecutor,
        *,
        max_units: int,
        max_pixels: int,
        decode_pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self._items = items
        self._fetch = fetch
        self._pool = pool
        self._decode_pool = decode_pool or pool
        self.max_units = max(1, max_units)
        self.max_pixels = max_pixels
        self.held_units = 0
        self.held_pixels = 0
        # The most ever held at once, for tests and logs.
        self.peak_units = 0
        self.peak_pixels = 0

    def release(self, pixels: int) -> None:
        self.held_units -= 1
        self.held_pixels -= pixels

    def _fits(self, pixels: int) -> bool:
        if self.held_units == 0:
            return True
        return self.held_units < self.max_units and self.held_pixels + pixels <= self.max_pixels

    def _take(self, pixels: int) -> None:
        self.held_units += 1
        self.held_pixels += pixels
        self.peak_units = max(self.peak_units, self.held_units)
        self.peak_pixels = max(self.peak_pixels, self.held_pixels)

    def __iter__(self) -> Iterator[Event]:
        waiting = deque(self._items)
        # Inputs being read, at most max_units at a time: their bytes are what they hold.
        fetching: deque[tuple[ClaimedItem, Future[Fetched]]] = deque()
        planned: deque[tuple[PlannedUnit, int]] = deque()
        decoding: deque[tuple[PlannedUnit, Future[Ready]]] = deque()

        def fetch_more() -> None:
            while waiting and len(fetching) < self.max_units:
                item = waiting.popleft()
                fetching.append((item, self._pool.submit(self._fetch, item)))

        while True:
            fetch_more()
            while True:  # admit units for decoding while the budget allows
                if not planned:
                    # Wait for the next input only when no decoded unit could be handed over.
                    if not fetching or (decoding and not fetching[0][1].done()):
                        break
                    item, future = fetching.popleft()
                    got = future.result()
                    fetch_more()
                    if isinstance(got, Planned):
                        planned.extend((unit, len(got.units)) for unit in got.units)
                    elif isinstance(got, ItemOutcome):
                        yield got
                    else:
                        yield HandBack(item)
                    continue
                unit, count = planned[0]
                if not self._fits(unit.pixels):
                    break
                planned.popleft()
                self._take(unit.pixels)
                decoding.append((unit, self._decode_pool.submit(_decode, unit, count)))
            if decoding:
                unit, done = decoding.popleft()
                ready = done.result()
                # The reservation was the header's size; hold what was actually decoded.
                self.held_pixels += ready.pixels - unit.pixels
                yield ready
                del ready, done  # the consumer holds it now, and lets go of it after the model
            elif planned:
                yield Flush()
            elif not fetching and not waiting:
                return


def _decode(unit: PlannedUnit, units_of_item: int) -> Ready:
    """Runs in a pool thread: decodes one unit, turning every failure into a failed unit."""
    item = unit.item
    try:
        image = unit.decode()
    except InputError as exc:
        log.info("input failed item=%s job=%s code=%s", item.id, item.job_id, exc.code)
        return Ready(Unit(item, unit.page, None), units_of_item, 0, exc.code, exc.message)
    except Exception as exc:
        log.exception("unexpected error decoding item=%s job=%s", item.id, item.job_id)
        message = f"Decoding the input failed unexpectedly ({type(exc).__name__}: {exc})."
        return Ready(
            Unit(item, unit.page, None), units_of_item, 0, ItemErrorCode.internal_error, message
        )
    width, height = image.size if image is not None else (0, 0)  # None: text alone
    return Ready(Unit(item, unit.page, image), units_of_item, width * height)
