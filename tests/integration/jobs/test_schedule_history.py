"""A schedule's history (schedule_objects) on SQLite and PostgreSQL: a firing asks the database
only about the keys it listed, in pages, however long the history; rows of objects gone from
the source, and of superseded versions, are pruned a bounded walk at a time from the
schedule's cursor; a listing that failed (or came back empty) prunes nothing; and an object
still in the source is never processed twice because of it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select

from jobs import schedule_history, schedules
from jobs.db import Item, Schedule, ScheduleObject, SessionFactory, new_id, utcnow
from jobs.errors import RequestError
from jobs.schedule_sources import list_source
from jobs.schedules import add_schedule, fire_due_schedules
from jobs.submit.request import SubmitRequest
from jobs.submit.sources import IMAGE_EXTENSIONS
from storage import Blobs
from tests.helpers import ListPublisher, image_bytes, write_images

DUE = timedelta(minutes=15)


def _add(sf: SessionFactory, source: Path, now: datetime) -> Schedule:
    return add_schedule(
        sf,
        name="shots",
        source=str(source),
        request=SubmitRequest.of("caption", [], "m", batch_size=8),
        every="15m",
        cron=None,
        max_prompt_chars=4000,
        now=now,
    )


def _history(sf: SessionFactory, schedule_id: str, pairs: list[tuple[str, str]]) -> None:
    """Rows of earlier firings, written in one multi-row insert (as fast on both databases)."""
    rows = [
        {"id": new_id(), "schedule_id": schedule_id, "key": k, "etag": e, "job_id": "earlier"}
        for k, e in pairs
    ]
    with sf.begin() as session:
        for start in range(0, len(rows), 5000):
            session.execute(insert(ScheduleObject), rows[start : start + 5000])


def _pairs(sf: SessionFactory, schedule_id: str) -> set[tuple[str, str]]:
    with sf() as session:
        return set(
            session.execute(
                select(ScheduleObject.key, ScheduleObject.etag).where(
                    ScheduleObject.schedule_id == schedule_id
                )
            )
        )


def _cursor(sf: SessionFactory, schedule_id: str) -> str | None:
    with sf() as session:
        return session.scalar(select(Schedule.history_cursor).where(Schedule.id == schedule_id))


def _keys(sf: SessionFactory, job_id: str) -> list[str]:
    with sf() as session:
        sources = session.scalars(select(Item.source).where(Item.job_id == job_id))
        return sorted(Path(s).name for s in sources)


def _add_images(folder: Path, first: int, end: int) -> None:
    """shot{first}.png up to shot{end - 1}.png, leaving the files already there as they are."""
    for i in range(first, end):
        (folder / f"shot{i:03d}.png").write_bytes(image_bytes((40, 30), seed=i))


@contextmanager
def _history_reads(sf: SessionFactory) -> Iterator[list[tuple[str, Any]]]:
    """Every statement that reads schedule_objects, with its parameters, while inside."""
    engine = sf.kw["bind"]
    reads: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "schedule_objects" in statement:
            reads.append((statement, params))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        yield reads
    finally:
        event.remove(engine, "before_cursor_execute", seen)


def _bound_values(params: Any) -> list[Any]:
    """A statement's parameters, an array parameter (PostgreSQL's ``= ANY``) spread out."""
    values = list(params.values()) if isinstance(params, dict) else list(params)
    return [v for value in values for v in (value if isinstance(value, list) else [value])]


def test_a_firing_asks_only_about_the_listed_keys_however_long_the_history(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule_history, "PAGE_KEYS", 4)
    monkeypatch.setattr(schedule_history, "PAGE_KEYS_POSTGRES", 4)
    folder = tmp_path / "drop"
    folder.mkdir()
    write_images(folder, 10, prefix="shot")
    start = utcnow()
    schedule = _add(session_factory, folder, start)
    (first,) = fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE)
    assert len(_keys(session_factory, first)) == 10
    # Twenty thousand processed objects long gone, none of them listed.
    _history(session_factory, schedule.id, [(f"gone/{i:06d}.png", "1-1") for i in range(20_000)])
    _add_images(folder, 10, 12)

    with _history_reads(session_factory) as reads:
        (second,) = fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 2 * DUE)

    assert _keys(session_factory, second) == ["shot010.png", "shot011.png"]
    listed = {f"shot{i:03d}.png" for i in range(12)}
    lookups = [(s, p) for s, p in reads if "LIMIT" not in s.upper()]
    # Twelve listed keys, four a page: three lookups, each naming its keys and nothing else.
    assert len(lookups) == 3
    named = [v for _, p in lookups for v in _bound_values(p) if v != schedule.id]
    assert sorted(named) == sorted(listed)
    # The only other read is the pruning walk, bounded by its LIMIT whatever the history.
    walks = [(s, p) for s, p in reads if "LIMIT" in s.upper()]
    assert len(walks) == 1
    assert schedule_history.PRUNE_ROWS + 1 in _bound_values(walks[0][1])


def test_new_objects_and_new_versions_are_found_across_pages(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule_history, "PAGE_KEYS", 3)
    monkeypatch.setattr(schedule_history, "PAGE_KEYS_POSTGRES", 3)
    folder = tmp_path / "drop"
    folder.mkdir()
    paths = write_images(folder, 8, prefix="shot")
    start = utcnow()
    schedule = _add(session_factory, folder, start)
    (first,) = fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE)
    assert len(_keys(session_factory, first)) == 8
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 2 * DUE) == []

    paths[4].write_bytes(paths[4].read_bytes() + b"\0")  # a new version of an old key
    _add_images(folder, 8, 10)  # and two new keys
    (third,) = fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 3 * DUE)
    assert _keys(session_factory, third) == ["shot004.png", "shot008.png", "shot009.png"]
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 4 * DUE) == []
    listing = list_source(str(folder), blobs, IMAGE_EXTENSIONS)
    assert _pairs(session_factory, schedule.id) == {(o.key, o.etag) for o in listing}


def test_pruning_walks_the_history_a_bounded_step_at_a_time_and_wraps(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schedule_history, "PRUNE_ROWS", 10)
    folder = tmp_path / "drop"
    folder.mkdir()
    write_images(folder, 6, prefix="shot")
    start = utcnow()
    schedule = _add(session_factory, folder, start)
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE)
    listing = list_source(str(folder), blobs, IMAGE_EXTENSIONS)
    current = {(o.key, o.etag) for o in listing}
    # Superseded versions of listed keys, and objects no longer in the folder, around them in
    # key order ("a…" before "shot…", "z…" after).
    superseded = {(o.key, f"old-{v}") for o in listing for v in range(2)}
    removed = {(f"a/{i:02d}.png", "1-1") for i in range(7)} | {
        (f"z/{i:02d}.png", "1-1") for i in range(7)
    }
    _history(session_factory, schedule.id, sorted(superseded | removed))
    rows = sorted(current | superseded | removed)  # 32 rows, walked 10 at a time

    # Ten rows a firing in key order, never ending inside a key (its other versions would be
    # skipped for a lap): 10, 9 (shot004's three rows go together), 10, then the last 3, and
    # the walk starts again from the beginning.
    walked = [10, 19, 29, 32]
    now = start + DUE
    cursors = []
    for lap in range(4):
        now += DUE
        assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=now) == []
        cursors.append(_cursor(session_factory, schedule.id))
        left = _pairs(session_factory, schedule.id)
        assert current <= left  # what is listed is never forgotten
        assert left - current == set(rows[walked[lap] :]) - current
    assert cursors == [rows[9][0], rows[18][0], rows[28][0], None]
    assert _pairs(session_factory, schedule.id) == current
    # Nothing listed was processed twice on the way.
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 6


def test_a_listing_that_fails_or_comes_back_empty_prunes_nothing(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    write_images(folder, 3, prefix="shot")
    start = utcnow()
    schedule = _add(session_factory, folder, start)
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE)
    _history(session_factory, schedule.id, [("gone.png", "1-1")])
    before = _pairs(session_factory, schedule.id)

    moved = tmp_path / "elsewhere"
    folder.rename(moved)  # an unmounted share: the folder is not there
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 2 * DUE) == []
    assert _pairs(session_factory, schedule.id) == before
    with pytest.raises(RequestError) as refused:  # run-now says why
        fire_due_schedules(
            session_factory, blobs, ListPublisher(), now=start + 2 * DUE, names=["shots"]
        )
    assert refused.value.code == "source_not_found"
    assert _pairs(session_factory, schedule.id) == before

    folder.mkdir()  # an empty mount point: looks like a source emptied, forgets nothing
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 3 * DUE) == []
    assert _pairs(session_factory, schedule.id) == before
    assert _cursor(session_factory, schedule.id) is None

    shutil.rmtree(folder)
    moved.rename(folder)  # back, unchanged: nothing is new, and only the gone row goes
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 4 * DUE) == []
    assert _pairs(session_factory, schedule.id) == before - {("gone.png", "1-1")}


def test_an_object_removed_and_put_back_is_processed_again(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """The documented price of forgetting: the history holds only what is in the source."""
    folder = tmp_path / "drop"
    folder.mkdir()
    paths = write_images(folder, 3, prefix="shot")
    start = utcnow()
    _add(session_factory, folder, start)
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE)
    aside = tmp_path / "aside.png"
    paths[1].rename(aside)
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 2 * DUE) == []
    aside.rename(paths[1])  # the same file, its mtime and size kept
    (again,) = fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + 3 * DUE)
    assert _keys(session_factory, again) == ["shot001.png"]


def test_a_firing_that_loses_its_claim_forgets_nothing(
    session_factory: SessionFactory, blobs: Blobs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two schedulers, the second one's whole firing inside the first one's listing: it records
    a file the first listing never saw. The first one's claim then fails, and it forgets
    nothing, so that file is not processed again."""
    folder = tmp_path / "drop"
    folder.mkdir()
    write_images(folder, 2, prefix="shot")
    start = utcnow()
    schedule = _add(session_factory, folder, start)
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=start + DUE)
    real_listing = schedules.list_source
    created: list[str] = []
    rivals: list[int] = []

    def listing_then_a_rival(source: str, blobs: Blobs, extensions: frozenset[str]) -> Any:
        listed = real_listing(source, blobs, extensions)
        if not rivals:  # the rival's own listing comes back here too
            rivals.append(1)
            _add_images(folder, 2, 3)
            created.extend(fire_due_schedules(session_factory, blobs, ListPublisher(), now=due))
        return listed

    due = start + 2 * DUE
    monkeypatch.setattr(schedules, "list_source", listing_then_a_rival)
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=due) == []
    monkeypatch.undo()
    (rival,) = created
    assert _keys(session_factory, rival) == ["shot002.png"]
    assert ("shot002.png",) in {(k,) for k, _ in _pairs(session_factory, schedule.id)}
    assert fire_due_schedules(session_factory, blobs, ListPublisher(), now=due + DUE) == []
