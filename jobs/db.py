"""SQLAlchemy tables. ``jobs`` and ``items`` are a public contract: users poll them with SQL.

Change them only through an Alembic migration that runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    any_,
    bindparam,
    create_engine,
    desc,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    InstrumentedAttribute,
    Mapped,
    Session,
    mapped_column,
    sessionmaker,
)

from jobs.limits import (
    MAX_CUSTOM_ID_CHARS,
    MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_MODEL_CHARS,
    MAX_NAME_CHARS,
)
from jobs.states import ItemStatus, JobStatus

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from jobs.settings import Settings

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on both backends (SQLite stores naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# The condition of the index ix_items_reuse_key (and of every query meant to use it).
REUSABLE_PREDICATE = "reuse_key IS NOT NULL AND status = 'succeeded' AND reused_from IS NULL"

# ``jobs.turn_at`` of a job no worker has taken a batch of yet: before every real time.
NEVER_SERVED = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # The open jobs of a model in claim order (jobs.lifecycle.claims.claim_next), read
        # backwards: priority DESC, then turn_at, created_at and id ascending. A claim walks it
        # and stops at the first job with work, instead of sorting every open job.
        Index(
            "ix_jobs_open_turn",
            "model",
            "priority",
            desc("turn_at"),
            desc("created_at"),
            desc("id"),
            postgresql_where=text("status IN ('queued', 'in_progress')"),
            sqlite_where=text("status IN ('queued', 'in_progress')"),
        ),
        # What retention will delete next (jobs.retention): only jobs that have a date.
        Index(
            "ix_jobs_retained_until",
            "retained_until",
            postgresql_where=text("retained_until IS NOT NULL"),
            sqlite_where=text("retained_until IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(MAX_NAME_CHARS))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued, index=True)
    prompt: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    model: Mapped[str] = mapped_column(String(MAX_MODEL_CHARS))
    idempotency_key: Mapped[str | None] = mapped_column(
        String(MAX_IDEMPOTENCY_KEY_CHARS), unique=True
    )
    # Key/value labels the user gave (--meta), like a hosted batch API's metadata. The attribute
    # is job_metadata: "metadata" is taken on declarative classes.
    job_metadata: Mapped[dict[str, str] | None] = mapped_column("metadata", JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set while a big submit is still writing the job's rows in chunks: the producer's lease,
    # renewed by each chunk's commit, cleared by the last one (a small job is written in one
    # transaction and never has it). While set, the job is not finalised however its items
    # stand; once it runs out, the sweeper cancels the job (the producer died). Still set on a
    # finished (cancelled) job: its submission stopped before all its inputs were written.
    submit_lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Higher first: a queued item of a job of higher priority is claimed before any item of a
    # lower one of the same model (jobs.lifecycle.claims.claim_next).
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The completion window: once it passes, what has not started ends ``expired``.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completion_window_seconds: Mapped[int | None] = mapped_column(Integer)
    # When a worker last took a batch of this job: fair share serves the longest-waiting first,
    # and a job never served (NEVER_SERVED) before any other of its priority. Never NULL, so
    # the claim's order is the same on both databases, which put NULLs at opposite ends.
    turn_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=lambda: NEVER_SERVED)
    # Retention (--retain): once the job has ended, it is deleted at retained_until, which is
    # finished_at + retain_seconds. NULL: kept until someone deletes it.
    retain_seconds: Mapped[int | None] = mapped_column(Integer)
    retained_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A job being deleted (status "deleting") keeps its stored inputs when this is set.
    keep_inputs: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # What the job's end sends (jobs.delivery): a signed webhook to notify_url, its results
    # written to output_uri in output_format. Queued in the transaction that ends the job.
    notify_url: Mapped[str | None] = mapped_column(Text)
    output_uri: Mapped[str | None] = mapped_column(Text)
    output_format: Mapped[str | None] = mapped_column(String(16))


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        # Also the claim's order inside a job: its next queued items by seq.
        Index("ix_items_job_status_seq", "job_id", "status", "seq"),
        # The model's recent rate (jobs.shares): a short range of each open job's items.
        Index("ix_items_job_finished", "job_id", "finished_at"),
        # Queued items with no dispatch stamp (their doorbell never went out, or handed back):
        # few, and found by the sweeper every pass without reading the queued rest.
        Index(
            "ix_items_unstamped",
            "job_id",
            postgresql_where=text("status = 'queued' AND dispatched_at IS NULL"),
            sqlite_where=text("status = 'queued' AND dispatched_at IS NULL"),
        ),
        Index("ix_items_status_lease", "status", "lease_expires_at"),
        # results pages a job by seq, whatever each item's status.
        Index("ix_items_job_seq", "job_id", "seq"),
        # A job's error codes and how many items have each (the review page's chips, counted
        # up to a bound: jobs.review.listing), read without the job's other items.
        Index(
            "ix_items_job_error_code",
            "job_id",
            "error_code",
            postgresql_where=text("error_code IS NOT NULL"),
            sqlite_where=text("error_code IS NOT NULL"),
        ),
        # Whether any item still references a stored input (blob collection).
        Index(
            "ix_items_input_sha256",
            "input_sha256",
            postgresql_where=text("input_sha256 IS NOT NULL"),
            sqlite_where=text("input_sha256 IS NOT NULL"),
        ),
        # The results a later job may reuse (jobs.lifecycle.reuse): only ones a model produced.
        # A row enters it when it succeeds, so neither a submit's queued rows nor the copies
        # reuse writes cost an index entry. Queries must repeat the predicate word for word.
        Index(
            "ix_items_reuse_key",
            "reuse_key",
            postgresql_where=text(REUSABLE_PREDICATE),
            sqlite_where=text(REUSABLE_PREDICATE),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    custom_id: Mapped[str | None] = mapped_column(String(MAX_CUSTOM_ID_CHARS))
    source: Mapped[str] = mapped_column(Text)
    input_uri: Mapped[str] = mapped_column(Text)
    input_sha256: Mapped[str | None] = mapped_column(String(64))
    prompt: Mapped[str | None] = mapped_column(Text)
    # What this item asks beyond its job's parameters, as its kind reads it (e.g. questions).
    request: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_token: Mapped[str | None] = mapped_column(String(36))
    worker: Mapped[str | None] = mapped_column(String(200))
    # What the claiming worker serves, stamped with its lease: the model that produced the result.
    model: Mapped[str | None] = mapped_column(String(500))
    model_revision: Mapped[str | None] = mapped_column(String(200))
    quantization: Mapped[str | None] = mapped_column(String(16))
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # After a transient storage error the item waits until then; the blip costs no attempt.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    transient_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result_text: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[Any | None] = mapped_column(JsonType)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    tokens_out: Mapped[int | None] = mapped_column(Integer)  # = completion_tokens (older name)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(16))  # "stop" | "length"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # What decides the item's result apart from the model (jobs.reuse.reuse_key): its input
    # bytes, kind, prompt or request, and generation settings, hashed at submit. NULL: never
    # reused nor a source (an input read in place, sampling without a seed, an older row).
    reuse_key: Mapped[str | None] = mapped_column(String(64))
    # Set on a result copied from an earlier item (--reuse) instead of running the model: that
    # item's id, always one the model ran for. Its tokens were not spent again, so it has none.
    reused_from: Mapped[str | None] = mapped_column(String(36))


class WorkerRow(Base):
    """A live worker and the model it serves, beaten every few seconds while it runs; submit and
    status read it to tell a job that waits for a worker nobody runs."""

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_model_seen", "model", "seen_at"),)

    node: Mapped[str] = mapped_column(String(200), primary_key=True)
    model: Mapped[str] = mapped_column(String(500))
    model_revision: Mapped[str | None] = mapped_column(String(200))
    quantization: Mapped[str] = mapped_column(String(16))
    # How many images one request may show its model (1: its chat template shows one); NULL:
    # any number. A submit fails a request of more on its own item.
    max_images: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ItemPage(Base):
    """Page-level results of a document item (PDF); the item holds the merged result."""

    __tablename__ = "item_pages"
    __table_args__ = (UniqueConstraint("item_id", "page_number", name="uq_item_pages_page"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    item_id: Mapped[str] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"), index=True)
    page_number: Mapped[int] = mapped_column(Integer)
    result_text: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[Any | None] = mapped_column(JsonType)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ItemInput(Base):
    """An item's inputs after its first (``items.input_uri``): the other images of an OpenAI
    request that carries several, in order (``position`` 1 is the second image). Their
    ``sha256`` keeps a stored blob from collection as ``items.input_sha256`` does."""

    __tablename__ = "item_inputs"
    __table_args__ = (
        Index(
            "ix_item_inputs_sha256",
            "sha256",
            postgresql_where=text("sha256 IS NOT NULL"),
            sqlite_where=text("sha256 IS NOT NULL"),
        ),
    )

    item_id: Mapped[str] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))


class Review(Base):
    """A person's decision on an item's result (``jobs.review``), kept apart from the item:
    the model's own result stays as it was, and an edit is stored beside it. An item has no
    row until someone reviews it (unreviewed); the row goes with its item (cascade)."""

    __tablename__ = "reviews"
    __table_args__ = (
        # A job's reviews (filters, bulk decisions, whether an export needs the join at all).
        Index("ix_reviews_job_decision", "job_id", "decision"),
    )

    # The primary key is the index the cascade from ``items`` needs: a ranged DELETE of items
    # finds each item's review by it.
    item_id: Mapped[str] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    job_id: Mapped[str] = mapped_column(String(36))
    decision: Mapped[str | None] = mapped_column(String(16))  # approved | rejected
    edited_text: Mapped[str | None] = mapped_column(Text)
    edited_json: Mapped[Any | None] = mapped_column(JsonType)
    reviewer: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Schedule(Base):
    """A recurring extraction over an S3 prefix; survives restarts because it lives here."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(Text)
    every_seconds: Mapped[int | None] = mapped_column(Integer)
    cron: Mapped[str | None] = mapped_column(String(200))
    prompt: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JsonType, default=dict)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    next_due_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Given to every job the schedule fires (--retain).
    retain_seconds: Mapped[int | None] = mapped_column(Integer)
    # Where the pruning of the schedule's history goes on from (the last key it looked at).
    history_cursor: Mapped[str | None] = mapped_column(Text)
    # Given to every job the schedule fires (--notify, --output); output_uri may name
    # {schedule}, {job} and {date}.
    notify_url: Mapped[str | None] = mapped_column(Text)
    output_uri: Mapped[str | None] = mapped_column(Text)
    output_format: Mapped[str | None] = mapped_column(String(16))


class ScheduleObject(Base):
    """An object a schedule has already turned into an item: new key or new ETag means new."""

    __tablename__ = "schedule_objects"
    __table_args__ = (
        UniqueConstraint("schedule_id", "key", "etag", name="uq_schedule_objects_version"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(Text)
    etag: Mapped[str] = mapped_column(String(200))
    job_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class BlobCandidate(Base):
    """A stored input whose last referencing item may have been deleted: blob collection
    (jobs.retention) deletes it once no item references it and no submit is in flight."""

    __tablename__ = "blob_candidates"

    # An append-only queue, read in id order from where the collector's last batch stopped: a
    # serial key, and no unique index on the URI, whose random keys cost a million deletions an
    # index page each; the same input queued twice is two rows, each looked at.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Delivery(Base):
    """Something a job's end sends (jobs.delivery): written in the transaction that ends the
    job, so it is never lost, then sent by a sweeper at least once, retried with backoff."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index(
            "ix_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    what: Mapped[str] = mapped_column(String(16))  # "webhook" | "output"
    target: Mapped[str] = mapped_column(Text)  # the URL, or where the results go
    job_status: Mapped[str] = mapped_column(String(16))  # how the job ended
    status: Mapped[str] = mapped_column(String(16))  # pending | delivered | abandoned
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any | None] = mapped_column(JsonType)  # what was written, or answered


class DeliveryAttempt(Base):
    """One try of a delivery: what ``llava-batch notifications JOB`` shows."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class SubmitInFlight(Base):
    """A producer between storing its first input and committing its last item row. While
    one is live, no stored input is collected: it may be about to reference any of them."""

    __tablename__ = "submits_in_flight"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


def make_engine(
    url: str,
    *,
    lock_timeout_seconds: float = 10,
    idle_in_transaction_seconds: float = 60,
    sqlite_busy_seconds: float = 30,
) -> Engine:
    """An engine whose waits are bounded.

    PostgreSQL: a statement waits at most ``lock_timeout_seconds`` for a row lock (the error is
    retryable), and a session left idle inside a transaction (a paused or dead client) is ended
    after ``idle_in_transaction_seconds``, so it cannot hold locks that freeze other workers.
    SQLite: writers wait for the database lock up to ``sqlite_busy_seconds`` (its one writer at
    a time makes every wait a wait for the whole database, so it is longer by default).
    """
    if url.startswith("sqlite"):
        busy = sqlite_busy_seconds
        engine = create_engine(url, connect_args={"timeout": busy})
        event.listen(
            engine, "connect", lambda conn, _record: _sqlite_pragmas(conn, busy_seconds=busy)
        )
    else:
        options = (
            f"-c lock_timeout={int(lock_timeout_seconds * 1000)} "
            f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_seconds * 1000)}"
        )
        engine = create_engine(url, pool_pre_ping=True, connect_args={"options": options})
    _engines.add(engine)
    return engine


# The engines this process made that are still in use, for ``dispose_engines``.
_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def dispose_engines() -> None:
    """Closes the pooled connections of every engine this process made, for a process about
    to end (the CLI). An engine's pool lives in reference cycles, so without this only the
    interpreter's last collection closes them; closing SQLite's last connection is what moves
    its write-ahead log into the database file and removes the ``-wal`` file beside it."""
    for engine in list(_engines):
        try:
            engine.dispose()
        except Exception as exc:  # the process is ending: its connections end with it
            log.debug("could not close the connections of %s: %s", engine.url, exc)


def _sqlite_pragmas(dbapi_connection: Any, *, busy_seconds: float) -> None:
    # WAL lets the CLI read while a worker writes; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_seconds * 1000)}")
    cursor.close()


# SQLSTATE classes that say "try again", not "this row is wrong": connection exceptions (08),
# rollbacks for serialization or deadlock (40), lock not available (55P03), operator
# intervention such as an admin shutdown (57), and a session ended for idling in a transaction.
_RETRYABLE_SQLSTATES = ("08", "40", "55P03", "57", "25P03")


def is_retryable(exc: BaseException) -> bool:
    """Whether a database error is about the connection or a lock, so the same work may
    succeed if tried again (as opposed to a value the database refuses)."""
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return sqlstate.startswith(_RETRYABLE_SQLSTATES)
    return False


SessionFactory = sessionmaker[Session]


def open_database(settings: Settings) -> Engine:
    """The engine for the configured database, with its lock and idle limits."""
    return make_engine(
        settings.resolved_database_url,
        lock_timeout_seconds=settings.db_lock_timeout_seconds,
        idle_in_transaction_seconds=settings.db_idle_in_transaction_seconds,
    )


def make_session_factory(engine: Engine) -> SessionFactory:
    return sessionmaker(engine, expire_on_commit=False)


def among(
    session: Session, column: InstrumentedAttribute[Any], values: Sequence[Any]
) -> ColumnElement[bool]:
    """``column IN values``. On PostgreSQL as ``= ANY(array)``, one parameter: psycopg parses
    a statement of 500 or 1,000 placeholders again at every call (too long for its cache),
    which cost more than the index lookups it asks for."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def commit_without_flush(session: Session) -> None:
    """Lets this transaction's COMMIT return before its WAL reaches the disk (PostgreSQL's
    ``synchronous_commit = off``, for this transaction only; SQLite's WAL mode already commits
    so). Its effects are visible to everyone at once, and no crash corrupts anything: a crash
    of the database server (not of a client) can only take back the last fraction of a
    second of such commits (at most three ``wal_writer_delay``s, 0.6 s by default), never one
    that a later ordinary commit depends on, since that commit flushes all the log before it.

    Only for transactions whose loss the design repairs anyway: a recorded result (the item is
    still ``running`` under its lease, so the sweeper runs it again), a schedule's claim, a
    submit's registration. Never for a job's rows, which a user is told exist."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_NO_FLUSH)


_NO_FLUSH = text("SET LOCAL synchronous_commit = off")
