"""workers.ahead.Lookahead without services: order, budgets, progress, failures contained."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from PIL import Image

from jobs.lifecycle import ClaimedItem, ItemOutcome
from jobs.outcome import Outcome
from model.errors import InputError
from workers.ahead import Fetched, Flush, HandBack, Lookahead, Planned, PlannedUnit, Ready


def _item(n: int) -> ClaimedItem:
    return ClaimedItem(
        id=f"item{n}",
        job_id="job",
        kind="caption",
        source=f"s{n}",
        input_uri=f"file:///x/{n}",
        prompt="p",
        attempts=1,
        lease_token="t",
    )


class Consumer:
    """Plays the pipeline's part: batches decoded units, releases them after the 'model'."""

    def __init__(self, ahead: Lookahead, batch_size: int) -> None:
        self.ahead = ahead
        self.batch_size = batch_size
        self.held: list[Ready] = []
        self.order: list[tuple[str, int | None]] = []
        self.batches: list[int] = []
        self.events: list[Any] = []

    def run_model(self) -> None:
        if self.held:
            self.batches.append(len(self.held))
        for ready in self.held:
            self.ahead.release(ready.pixels)
        self.held = []

    def run(self) -> None:
        for event in self.ahead:
            assert self.ahead.held_units <= self.ahead.max_units
            if isinstance(event, Ready):
                self.order.append((event.unit.item.id, event.unit.page))
                if event.error_code:
                    self.events.append(event)
                    self.ahead.release(event.pixels)
                    continue
                self.held.append(event)
                if len(self.held) >= self.batch_size:
                    self.run_model()
            elif isinstance(event, Flush):
                assert self.held, "Flush with nothing held would loop forever"
                self.run_model()
            else:
                self.events.append(event)
        self.run_model()
        assert (self.ahead.held_units, self.ahead.held_pixels) == (0, 0)


def _image_unit(item: ClaimedItem, page: int | None, side: int) -> PlannedUnit:
    return PlannedUnit(item, page, side * side, lambda: Image.new("RGB", (side, side)))


def test_units_come_in_input_order_within_both_budgets() -> None:
    rng = random.Random(3)
    items = [_item(n) for n in range(30)]
    sides = {item.id: [rng.randint(1, 60) for _ in range(rng.randint(1, 4))] for item in items}

    def fetch(item: ClaimedItem) -> Fetched:
        units = tuple(_image_unit(item, p + 1, s) for p, s in enumerate(sides[item.id]))
        return Planned(item, units)

    with ThreadPoolExecutor(4) as pool:
        ahead = Lookahead(items, fetch, pool, max_units=6, max_pixels=5000)
        consumer = Consumer(ahead, batch_size=3)
        consumer.run()
    expected = [(i.id, p + 1) for i in items for p in range(len(sides[i.id]))]
    assert consumer.order == expected
    assert ahead.peak_units <= 6 and ahead.peak_pixels <= 5000
    assert max(consumer.batches) <= 3


def test_a_unit_larger_than_the_pixel_budget_goes_through_alone() -> None:
    items = [_item(n) for n in range(3)]
    with ThreadPoolExecutor(2) as pool:
        ahead = Lookahead(
            items,
            lambda i: Planned(i, (_image_unit(i, None, 50),)),
            pool,
            max_units=8,
            max_pixels=10,
        )
        consumer = Consumer(ahead, batch_size=4)
        consumer.run()
    assert consumer.batches == [1, 1, 1]


def test_fetch_outcomes_hand_backs_and_decode_failures_are_events() -> None:
    items = [_item(n) for n in range(4)]

    def broken() -> Any:
        raise RuntimeError("bug")

    def corrupt() -> Any:
        raise InputError("image_decode_error", "The image could not be decoded: truncated.")

    def fetch(item: ClaimedItem) -> Fetched:
        if item.id == "item0":
            return ItemOutcome(item.id, item.lease_token, Outcome(error_code="input_not_found"))
        if item.id == "item1":
            return None
        decode = broken if item.id == "item2" else corrupt
        return Planned(item, (PlannedUnit(item, None, 100, decode),))

    with ThreadPoolExecutor(2) as pool:
        ahead = Lookahead(items, fetch, pool, max_units=4, max_pixels=1000)
        consumer = Consumer(ahead, batch_size=2)
        consumer.run()
    kinds: dict[str, str | None] = {}
    for e in consumer.events:
        if isinstance(e, ItemOutcome):
            kinds[e.item_id] = e.outcome.error_code
        elif isinstance(e, HandBack):
            kinds[e.item.id] = "hand back"
        else:
            kinds[e.unit.item.id] = e.error_code
    assert kinds == {
        "item0": "input_not_found",
        "item1": "hand back",
        "item2": "internal_error",
        "item3": "image_decode_error",
    }
    internal = next(e for e in consumer.events if getattr(e, "error_code", "") == "internal_error")
    assert "RuntimeError" in internal.error_message


def test_decoding_waits_for_the_budget_not_for_the_whole_message() -> None:
    """With a slow consumer, decodes started never run more than max_units ahead."""
    items = [_item(n) for n in range(40)]
    started: list[int] = []
    lock = threading.Lock()

    def fetch(item: ClaimedItem) -> Fetched:
        def decode() -> Any:
            with lock:
                started.append(1)
            return Image.new("RGB", (4, 4))

        return Planned(item, (PlannedUnit(item, None, 16, decode),))

    consumed = 0
    with ThreadPoolExecutor(8) as pool:
        ahead = Lookahead(items, fetch, pool, max_units=4, max_pixels=10**9)
        for event in ahead:
            assert isinstance(event, Ready)
            assert len(started) <= consumed + 4
            consumed += 1
            ahead.release(event.pixels)


@pytest.mark.parametrize("max_units", [0, 1])
def test_a_budget_of_one_unit_still_makes_progress(max_units: int) -> None:
    items = [_item(n) for n in range(3)]
    with ThreadPoolExecutor(2) as pool:
        ahead = Lookahead(
            items,
            lambda i: Planned(i, (_image_unit(i, None, 2),)),
            pool,
            max_units=max_units,
            max_pixels=100,
        )
        consumer = Consumer(ahead, batch_size=2)
        consumer.run()
    assert consumer.batches == [1, 1, 1]
