"""The migrations produce exactly the tables the code declares, on both databases."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from jobs.db import Base, make_engine
from jobs.migrate import build_alembic_config, current_revision, head_revision, upgrade_database

# Alembic cannot read an index with DESC columns back from SQLite (it warns, and reports it
# removed and added again); on SQLite that index is checked by its columns in
# ``test_the_claim_order_index_is_there`` instead.
_UNREADABLE_ON_SQLITE = {"ix_jobs_open_turn"}


def test_migrations_match_the_declared_tables(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade_database(engine)
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    if engine.dialect.name == "sqlite":
        diff = [
            d for d in diff if not (d[0].endswith("_index") and d[1].name in _UNREADABLE_ON_SQLITE)
        ]
    assert diff == []
    upgrade_database(engine)  # idempotent


def test_the_claim_order_index_is_there(db_url: str) -> None:
    """The index a doorbell's claim walks: its columns, their order, and its condition."""
    from sqlalchemy import text

    engine = make_engine(db_url)
    upgrade_database(engine)
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            sql = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'ix_jobs_open_turn'")
            ).scalar_one()
        else:
            sql = connection.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_jobs_open_turn'")
            ).scalar_one()
    flat = " ".join(sql.replace('"', "").split())
    assert "(model, priority, turn_at DESC, created_at DESC, id DESC)" in flat, flat
    assert "queued" in flat and "in_progress" in flat, flat


def test_head_revision_is_alembics(db_url: str) -> None:
    """``head_revision`` reads the migration files without Alembic; it must agree with it."""
    script = ScriptDirectory.from_config(build_alembic_config(db_url))
    assert head_revision() == script.get_current_head()


def test_a_database_without_tables_has_no_revision(db_url: str) -> None:
    assert current_revision(make_engine(db_url)) is None


def test_0007_leaves_existing_jobs_fully_written_and_goes_back(db_url: str) -> None:
    """0007 adds ``jobs.submit_lease_expires_at`` empty: every job written before it was written
    in one transaction, so none may look half-written (never finalised) after the upgrade."""
    from alembic import command
    from sqlalchemy import text

    engine, to = _stepper(db_url)
    to("0006", command.upgrade)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at) "
                "VALUES ('j', 'caption', 'in_progress', '{}', 'm', CURRENT_TIMESTAMP)"
            )
        )
    to("0007", command.upgrade)
    with engine.connect() as connection:
        lease = connection.execute(text("SELECT submit_lease_expires_at FROM jobs")).scalar()
    assert lease is None
    to("0006", command.downgrade)
    assert current_revision(engine) == "0006"
    to("head", command.upgrade)


def test_0008_gives_existing_jobs_priority_0_and_no_window_and_goes_back(db_url: str) -> None:
    """0008 adds the fair-share columns: a job written before it has priority 0, no window and
    no turn yet (served first in its tie), and is claimable by a doorbell; and it goes back."""
    from alembic import command
    from sqlalchemy import text

    from jobs.db import make_session_factory
    from jobs.lifecycle import claim_next

    engine, to = _stepper(db_url)
    to("0007", command.upgrade)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at) "
                "VALUES ('j', 'caption', 'queued', '{\"batch_size\": 2}', 'm', CURRENT_TIMESTAMP)"
            )
        )
        for seq in range(3):
            connection.execute(
                text(
                    "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                    "transient_failures, created_at) VALUES "
                    f"('i{seq}', 'j', {seq}, 's', 'u', 'queued', 0, 0, CURRENT_TIMESTAMP)"
                )
            )
    to("0008", command.upgrade)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT priority, expires_at, completion_window_seconds, turn_at FROM jobs")
        ).one()
    assert tuple(row)[:3] == (0, None, None) and row.turn_at is not None  # never served
    to("head", command.upgrade)  # the claim of today's code reads the columns of later ones
    claimed = claim_next(make_session_factory(engine), worker="w", lease_seconds=60)
    assert [c.id for c in claimed] == ["i0", "i1"]
    to("0007", command.downgrade)
    assert current_revision(engine) == "0007"
    to("head", command.upgrade)


def test_0009_leaves_existing_jobs_without_retention_and_their_items_whole(db_url: str) -> None:
    """0009 adds retention: a job ended before it keeps no retention (never due), its items
    survive the upgrade (no rebuild of jobs that would cascade), and it goes back."""
    from datetime import timedelta

    from alembic import command
    from sqlalchemy import text

    from jobs.db import make_session_factory, utcnow
    from jobs.lifecycle import mark_retained

    engine, to = _stepper(db_url)
    to("0008", command.upgrade)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at, finished_at) "
                "VALUES ('j', 'caption', 'completed', '{}', 'm', CURRENT_TIMESTAMP, "
                "CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                "transient_failures, created_at) VALUES "
                "('i', 'j', 0, 's', 'u', 'succeeded', 1, 0, CURRENT_TIMESTAMP)"
            )
        )
    to("0009", command.upgrade)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT retain_seconds, retained_until, keep_inputs FROM jobs")
        ).one()
        assert tuple(row) == (None, None, False)
        assert connection.execute(text("SELECT count(*) FROM items")).scalar_one() == 1
    far = utcnow() + timedelta(days=36500)
    assert mark_retained(make_session_factory(engine), now=far, limit=10) == 0
    to("0008", command.downgrade)
    assert current_revision(engine) == "0008"
    to("head", command.upgrade)


def test_0010_keeps_existing_items_and_an_item_input_goes_with_its_item(db_url: str) -> None:
    """0010 adds ``item_inputs``: items written before it have no other input, a row added
    after it is deleted with its item (ON DELETE CASCADE), and it goes back."""
    from alembic import command
    from sqlalchemy import text

    engine, to = _stepper(db_url)
    to("0009", command.upgrade)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at) "
                "VALUES ('j', 'chat', 'queued', '{}', 'm', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                "transient_failures, created_at) VALUES "
                "('i', 'j', 0, 's', 'u', 'queued', 0, 0, CURRENT_TIMESTAMP)"
            )
        )
    to("0010", command.upgrade)
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM item_inputs")).scalar_one() == 0
        connection.execute(
            text(
                "INSERT INTO item_inputs (item_id, position, uri, sha256) VALUES ('i', 1, 'v', 'x')"
            )
        )
        connection.execute(text("DELETE FROM items WHERE id = 'i'"))
        assert connection.execute(text("SELECT count(*) FROM item_inputs")).scalar_one() == 0
    to("0009", command.downgrade)
    assert current_revision(engine) == "0009"
    to("head", command.upgrade)


def test_0012_leaves_existing_items_without_a_key_and_goes_back(db_url: str) -> None:
    """0012 adds the reuse columns empty: an item written before it has no key (never reused,
    nor a source: what it was asked is not known the same way), the partial index holds none
    of them, and it goes back."""
    from alembic import command
    from sqlalchemy import text

    engine, to = _stepper(db_url)
    to("0011", command.upgrade)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at) "
                "VALUES ('j', 'caption', 'completed', '{}', 'm', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                "transient_failures, created_at, result_text) VALUES "
                "('i', 'j', 0, 's', 'u', 'succeeded', 1, 0, CURRENT_TIMESTAMP, 'a caption')"
            )
        )
    to("0012", command.upgrade)
    with engine.connect() as connection:
        row = connection.execute(
            text("SELECT reuse_key, reused_from, result_text FROM items")
        ).one()
        assert tuple(row) == (None, None, "a caption")
    to("0011", command.downgrade)
    assert current_revision(engine) == "0011"
    to("head", command.upgrade)


def _stepper(db_url: str) -> tuple[Engine, Callable[[str, Any], None]]:
    """The database's engine, and a function that runs one Alembic step (``command.upgrade``
    or ``command.downgrade``) to a revision on it."""
    engine = make_engine(db_url)
    config = build_alembic_config(db_url)

    def to(revision: str, step: Any) -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, revision)

    return engine, to


def test_0013_adds_reviews_that_go_with_their_item_and_goes_back(db_url: str) -> None:
    """0013 adds ``reviews``: none for items written before it, a review is deleted with its
    item (ON DELETE CASCADE), and it goes back."""
    from alembic import command
    from sqlalchemy import text

    engine, to = _stepper(db_url)
    to("0011", command.upgrade)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, model, created_at) "
                "VALUES ('j', 'caption', 'completed', '{}', 'm', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO items (id, job_id, seq, source, input_uri, status, attempts, "
                "transient_failures, created_at) VALUES "
                "('i', 'j', 0, 's', 'u', 'succeeded', 0, 0, CURRENT_TIMESTAMP)"
            )
        )
    to("0013", command.upgrade)
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM reviews")).scalar_one() == 0
        connection.execute(
            text(
                "INSERT INTO reviews (item_id, job_id, decision, decided_at) "
                "VALUES ('i', 'j', 'approved', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(text("DELETE FROM items WHERE id = 'i'"))
        assert connection.execute(text("SELECT count(*) FROM reviews")).scalar_one() == 0
    to("0011", command.downgrade)
    assert current_revision(engine) == "0011"
    to("head", command.upgrade)
