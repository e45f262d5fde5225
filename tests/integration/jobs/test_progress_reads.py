"""The plain-SQL reads of ``status`` and ``jobs`` (``jobs.progress``), on SQLite and PostgreSQL,
against what they stand for: the claim order is the claim's (its predicates in
``jobs.lifecycle.claims``, and the job ``claim_next`` really takes), and a reader on a
connection of its own reads what a session reads (``jobs.sqlread``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobs.db import Item, Job, SessionFactory, utcnow
from jobs.fleet import Serving
from jobs.lifecycle import claim_next
from jobs.lifecycle.claims import has_claimable, within_window
from jobs.lifecycle.common import OPEN_JOB_STATES
from jobs.progress import active_jobs, find_job_row, list_recent_jobs, read_progress
from jobs.queries import job_row
from jobs.sqlread import Reader, open_reader, session_reader
from storage import Blobs
from tests.helpers import submit_captions

FAKE = Serving(model="fake", revision=None, quantization="none")


def _claims_order(session: Session, model: str, now: object) -> list[str]:
    """The claim's own predicates, as SQLAlchemy expressions, in its order."""
    return list(
        session.scalars(
            select(Job.id)
            .where(
                Job.model == model,
                Job.status.in_(OPEN_JOB_STATES),
                within_window(Job, now),
                has_claimable(Job.id, now),
            )
            .order_by(Job.priority.desc(), Job.turn_at, Job.created_at, Job.id)
        )
    )


@pytest.fixture
def mixed_jobs(session_factory: SessionFactory, blobs: Blobs, tmp_path: Path) -> dict[str, str]:
    """Jobs of one model in every state the claim order tells apart, and one of another."""
    names = ("plain", "high", "later", "named_only", "past_window", "other_model", "cancelled")
    made = {
        name: submit_captions(
            session_factory,
            blobs,
            tmp_path / name,
            n=2,
            batch_size=1,
            **(
                {"priority": 3}
                if name == "high"
                else {"model": "other"}
                if name == "other_model"
                else {}
            ),
        )[0]
        for name in names
    }
    now = utcnow()
    with session_factory.begin() as session:
        session.execute(
            update(Item)
            .where(Item.job_id == made["later"])
            .values(not_before=now + timedelta(hours=1))
        )
        # Items that lost a worker go alone, by name: no doorbell's claim takes them.
        session.execute(update(Item).where(Item.job_id == made["named_only"]).values(attempts=1))
        session.execute(
            update(Job)
            .where(Job.id == made["past_window"])
            .values(expires_at=now - timedelta(minutes=1))
        )
        session.execute(update(Job).where(Job.id == made["cancelled"]).values(status="cancelled"))
    return made


def test_the_claim_order_read_is_the_claims(
    session_factory: SessionFactory, mixed_jobs: dict[str, str]
) -> None:
    now = utcnow()
    for at in (now, now + timedelta(hours=2)):  # before and after "later" may start
        with session_factory() as session:
            mine = [job_id for job_id, _ in active_jobs(session_reader(session), "fake", now=at)]
            assert mine == _claims_order(session, "fake", at)
    assert mine[0] == mixed_jobs["high"] and mixed_jobs["later"] in mine
    with session_factory() as session:
        early = [job_id for job_id, _ in active_jobs(session_reader(session), "fake", now=now)]
    assert set(early) == {mixed_jobs["high"], mixed_jobs["plain"]}


def test_position_one_is_the_job_the_next_claim_takes(
    session_factory: SessionFactory, mixed_jobs: dict[str, str]
) -> None:
    """Claim after claim, the job ``status`` shows at position 1 is the one claimed."""
    taken = 0
    while True:
        with session_factory() as session:
            reader = session_reader(session)
            first = active_jobs(reader, "fake", now=utcnow())
            if first:
                job = session.get(Job, first[0][0])
                assert job is not None
                turn = read_progress(reader, job_row(job)).turn
                assert turn is not None and turn.position == 1
        claimed = claim_next(session_factory, worker="w", lease_seconds=60, serving=FAKE)
        if not claimed:
            assert first == []
            break
        assert {c.job_id for c in claimed} == {first[0][0]}
        taken += 1
    assert taken == 4  # high's two items, then plain's two


def _same_reads(one: Reader, other: Reader, job_id: str) -> None:
    assert find_job_row(one, job_id) == find_job_row(other, job_id)
    now = utcnow()
    a = read_progress(one, find_job_row(one, job_id), now=now)
    b = read_progress(other, find_job_row(other, job_id), now=now)
    assert a == b
    assert list_recent_jobs(one, metadata={"team": "a"}) == list_recent_jobs(
        other, metadata={"team": "a"}
    )


def test_a_reader_of_its_own_reads_what_a_session_reads(
    db_url: str, session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Datetimes (aware UTC), JSON metadata and counts come back the same through the driver
    alone as through SQLAlchemy's session, on each database."""
    job_id, _ = submit_captions(
        session_factory, blobs, tmp_path / "m", n=3, metadata={"team": "a", "run": "7"}
    )
    claim_next(session_factory, worker="w", lease_seconds=60)
    with open_reader(db_url) as own, session_factory() as session:
        assert own is not None
        _same_reads(own, session_reader(session), job_id)
        row = find_job_row(own, job_id[:6])
        assert row.metadata == {"team": "a", "run": "7"}
        assert row.created_at.tzinfo is not None
        assert row.started_at is not None and row.started_at.utcoffset() == timedelta(0)
        assert [p.id for p in list_recent_jobs(own, metadata={"team": "b"})] == []
