"""A job as ``status`` and ``jobs`` show it: counts per item state, rate, ETA, token usage, its
place among the jobs sharing its model's fleet, where its results went, and whether a worker
serves it. Plain SQL on a ``jobs.sqlread.Reader``, so these commands start without SQLAlchemy;
``jobs.queries`` and ``jobs.shares`` give the same reads to callers holding a session.

The claim order and the claimable test are the claim's (``jobs.lifecycle.claims``: its
``claim_next``, ``within_window``, ``has_claimable``), written again here as SQL; a test runs
both on the same rows (tests/integration/jobs/test_progress_reads.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jobs.errors import JobNotFoundError
from jobs.sqlread import Reader, json_value, when
from jobs.states import TERMINAL_ITEM_STATES, ItemStatus, JobStatus

# The model's fleet rate is measured over this much of the recent past.
RATE_WINDOW = timedelta(seconds=60)
# A worker is live while it beat within this many heartbeats (jobs.fleet).
LIVE_PERIODS = 3

_OPEN = "('queued', 'in_progress')"  # jobs.lifecycle.common.OPEN_JOB_STATES
_UNFINISHED = "('queued', 'in_progress', 'cancelling')"  # UNFINISHED_JOB_STATES

_JOB_COLUMNS = (
    "id, name, kind, status, model, created_at, started_at, finished_at, metadata, priority, "
    "expires_at, completion_window_seconds, retain_seconds, retained_until, output_uri, "
    "output_format"
)


@dataclass(frozen=True)
class JobRow:
    """The columns of a job these reads use."""

    id: str
    name: str | None
    kind: str
    status: str
    model: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    metadata: dict[str, str] | None
    priority: int
    expires_at: datetime | None
    completion_window_seconds: int | None
    retain_seconds: int | None
    retained_until: datetime | None
    output_uri: str | None
    output_format: str | None


def _job_row(row: tuple[Any, ...]) -> JobRow:
    (id_, name, kind, status, model, created, started, finished, metadata, priority) = row[:10]
    expires, window, retain, retained, output_uri, output_format = row[10:]
    return JobRow(
        id=id_,
        name=name,
        kind=kind,
        status=status,
        model=model,
        created_at=when(created) or datetime.min.replace(tzinfo=UTC),
        started_at=when(started),
        finished_at=when(finished),
        metadata=json_value(metadata),
        priority=int(priority or 0),
        expires_at=when(expires),
        completion_window_seconds=window,
        retain_seconds=retain,
        retained_until=when(retained),
        output_uri=output_uri,
        output_format=output_format,
    )


@dataclass(frozen=True)
class Usage:
    """Tokens the model read (prompt: text, template and image tokens) and wrote."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Items whose result is a copy of an earlier one (--reuse): no tokens of theirs above.
    reused_items: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class Turn:
    """Where a job stands among the open jobs of its model that have work to claim."""

    position: int | None  # 1: its batch is taken next; None: nothing of it waits to be claimed
    active_jobs: int  # jobs of the model with work to claim
    share: float  # of the model's fleet it gets now: 0 behind a higher priority
    ahead: int  # queued items of jobs of higher priority, claimed before any of this one
    fleet_items_per_second: float | None  # the model's items finished per second, lately

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "active_jobs": self.active_jobs,
            "share": self.share,
            "ahead": self.ahead,
            "fleet_items_per_second": self.fleet_items_per_second,
        }


@dataclass(frozen=True)
class JobProgress:
    id: str
    name: str | None
    kind: str
    status: str
    model: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: dict[str, int]
    items_per_second: float | None
    eta_seconds: float | None
    metadata: dict[str, str] | None = None
    usage: Usage | None = None  # None: not summed (``jobs`` lists skip it: it reads every item)
    # Queued work and no live worker serving the job's model (None: not asked; see jobs.fleet).
    waiting_for_worker: bool | None = None
    priority: int = 0
    expires_at: datetime | None = None  # its completion window ends then (None: no window)
    completion_window_seconds: int | None = None
    turn: Turn | None = None  # its place in the claim order (None: not asked, or finished)
    retain_seconds: int | None = None  # kept this long after it ends (None: until deleted)
    retained_until: datetime | None = None  # deleted then (set when it ends)
    # Where its results are written when it ends (--deliver-to): ``read_output``.
    output: dict[str, Any] | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        return sum(n for state, n in self.counts.items() if state in TERMINAL_ITEM_STATES)

    @property
    def request_counts(self) -> dict[str, int]:
        """Like a hosted batch object's: completed = succeeded items."""
        return {
            "total": self.total,
            "completed": self.counts.get(ItemStatus.succeeded, 0),
            "failed": self.counts.get(ItemStatus.failed, 0),
        }

    def as_dict(self) -> dict[str, Any]:
        shown = {
            "job_id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "model": self.model,
            "metadata": self.metadata,
            "counts": self.counts,
            "total": self.total,
            "request_counts": self.request_counts,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "items_per_second": self.items_per_second,
            "eta_seconds": self.eta_seconds,
            "priority": self.priority,
            "completion_window_seconds": self.completion_window_seconds,
            "expires_at": iso(self.expires_at),
            "retain_seconds": self.retain_seconds,
            "retained_until": iso(self.retained_until),
        }
        if self.turn is not None:
            shown["turn"] = self.turn.as_dict()
        if self.usage is not None:
            shown["usage"] = self.usage.as_dict()
            shown["reused"] = self.usage.reused_items
        if self.waiting_for_worker is not None:
            shown["waiting_for_worker"] = self.waiting_for_worker
        if self.output is not None:
            shown["output"] = self.output
        return shown


def find_job_row(reader: Reader, job_ref: str) -> JobRow:
    """Looks a job up by id, or by a unique id prefix (ids are long to type). A job being
    deleted is not found: it is gone for every command from the moment its deletion starts."""
    row = reader.first(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = :id AND status != 'deleting'", id=job_ref
    )
    if row is not None:
        return _job_row(row)
    if len(job_ref) >= 4:
        # Escaped: "%" and "_" in a prefix are characters to match, not LIKE wildcards.
        escaped = job_ref.replace("/", "//").replace("%", "/%").replace("_", "/_")
        matches = reader.rows(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id LIKE :prefix ESCAPE '/' "
            "AND status != 'deleting' LIMIT 2",
            prefix=escaped + "%",
        )
        if len(matches) == 1:
            return _job_row(matches[0])
    raise JobNotFoundError(f"No job matches {job_ref!r}.")


def count_items(reader: Reader, job_id: str) -> dict[str, int]:
    """Items per state (only states that have some)."""
    rows = reader.rows(
        "SELECT status, count(*) FROM items WHERE job_id = :job_id GROUP BY status", job_id=job_id
    )
    return {str(status): int(n) for status, n in rows}


def read_usage(reader: Reader, job_id: str) -> Usage:
    """The job's token totals over all its items (failed ones too: their tokens were spent),
    and how many of its results are reused copies (which spent none), in the same pass."""
    row = reader.first(
        "SELECT sum(prompt_tokens), sum(coalesce(completion_tokens, tokens_out)), "
        "count(reused_from) FROM items WHERE job_id = :job_id",
        job_id=job_id,
    )
    prompt_sum, completion_sum, reused = row or (0, 0, 0)
    return Usage(int(prompt_sum or 0), int(completion_sum or 0), int(reused or 0))


# The open jobs of a model with an item a claim may take now, in the claim's order.
_ACTIVE = f"""
SELECT j.id, j.priority FROM jobs j
WHERE j.model = :model AND j.status IN {_OPEN}
  AND (j.expires_at IS NULL OR j.expires_at > :now)
  AND (SELECT min(i.seq) FROM items i
       WHERE i.job_id = j.id AND i.status = 'queued' AND i.attempts = 0
         AND (i.not_before IS NULL OR i.not_before <= :now)) IS NOT NULL
ORDER BY j.priority DESC, j.turn_at, j.created_at, j.id
"""


def active_jobs(reader: Reader, model: str, *, now: datetime) -> list[tuple[str, int]]:
    """(id, priority) of the open jobs of ``model`` with an item a claim may take at ``now``,
    in the order claims take them."""
    return [
        (job_id, int(priority)) for job_id, priority in reader.rows(_ACTIVE, model=model, now=now)
    ]


def read_turn(reader: Reader, job: JobRow, active: list[tuple[str, int]], *, now: datetime) -> Turn:
    """Its place in the claim order (``active``: ``active_jobs`` of its model), its share of
    the fleet, what higher priorities queued ahead of it and the model's recent rate."""
    ids = [job_id for job_id, _ in active]
    position = ids.index(job.id) + 1 if job.id in ids else None
    higher = [job_id for job_id, priority in active if priority > job.priority]
    peers = [job_id for job_id, priority in active if priority == job.priority]
    share = 0.0 if higher or job.id not in peers else 1 / len(peers)
    ahead = sum(queued_items(reader, job_id) for job_id in higher)
    return Turn(position, len(active), share, ahead, fleet_rate(reader, job.model, now=now))


def eta_seconds(
    reader: Reader, job: JobRow, turn: Turn, active: list[tuple[str, int]], remaining: int
) -> float | None:
    """Seconds until ``job``'s ``remaining`` items are done at the model's recent rate: first
    what higher priorities have queued, then its share beside the jobs of its own priority,
    each of which takes a batch in turn until it runs out (so a peer with fewer items left
    than this job slows it only for as long as it lasts). None without a recent rate."""
    rate = turn.fleet_items_per_second
    if not remaining:
        return 0.0
    if not rate:
        return None
    peers = [i for i, priority in active if priority == job.priority and i != job.id]
    shared = sum(queued_items(reader, peer, cap=remaining) for peer in peers)
    return (turn.ahead + remaining + shared) / rate


def fleet_rate(reader: Reader, model: str, *, now: datetime) -> float | None:
    """Items of ``model`` finished per second over the last ``RATE_WINDOW``; None if none."""
    finished = reader.scalar(
        "SELECT count(*) FROM items i JOIN jobs j ON j.id = i.job_id "
        f"WHERE j.model = :model AND (j.status IN {_UNFINISHED} OR j.finished_at > :since) "
        "AND i.finished_at > :since AND i.status IN ('succeeded', 'failed')",
        model=model,
        since=now - RATE_WINDOW,
    )
    return (finished / RATE_WINDOW.total_seconds()) if finished else None


def queued_items(reader: Reader, job_id: str, *, cap: int | None = None) -> int:
    """Queued items of the job, counted up to ``cap`` (a bounded read of the index)."""
    limit = "" if cap is None else " LIMIT :cap"
    count = reader.scalar(
        "SELECT count(*) FROM (SELECT id FROM items WHERE job_id = :job_id "
        f"AND status = 'queued'{limit}) AS queued",
        job_id=job_id,
        **({} if cap is None else {"cap": cap}),
    )
    return int(count or 0)


def live_workers(
    reader: Reader, model: str, *, heartbeat_seconds: float, now: datetime | None = None
) -> int:
    """How many workers beat for ``model`` within the last ``LIVE_PERIODS`` heartbeats."""
    now = now or datetime.now(UTC)
    since = now - timedelta(seconds=heartbeat_seconds * LIVE_PERIODS)
    count = reader.scalar(
        "SELECT count(*) FROM workers WHERE model = :model AND seen_at >= :since",
        model=model,
        since=since,
    )
    return int(count or 0)


def read_output(reader: Reader, job: JobRow) -> dict[str, Any] | None:
    """``{"uri", "format", "state", ...}`` for a job with a ``--deliver-to`` (None without).
    ``state``: ``waiting`` (the job has not ended), ``pending`` (not written yet; its
    ``attempts``, ``last_error``, ``next_attempt_at``), ``written`` (with the ``manifest``
    and the counts), ``abandoned`` (given up; its ``last_error``)."""
    if job.output_uri is None:
        return None
    shown: dict[str, Any] = {"uri": job.output_uri, "format": job.output_format}
    # A retried job: its last end's delivery.
    row = reader.first(
        "SELECT status, attempts, last_error, next_attempt_at, finished_at, result "
        "FROM deliveries WHERE job_id = :job_id AND what = 'output' "
        "ORDER BY created_at DESC, id DESC LIMIT 1",
        job_id=job.id,
    )
    if row is None or job.finished_at is None:  # not ended, or open again after a retry
        return {**shown, "state": "waiting"}
    status, attempts, last_error, next_at, finished_at, result = row
    state = {"delivered": "written"}.get(status, status)
    shown |= {"state": state, "attempts": attempts}
    if state == "written":
        written = dict(json_value(result) or {})
        shown |= {
            "written_at": iso(when(finished_at)),
            "manifest": written.get("manifest"),
            "results": written.get("results"),
            "errors": written.get("errors"),
        }
    else:
        shown["last_error"] = last_error
        if state == "pending":
            shown["next_attempt_at"] = iso(when(next_at))
    return shown


def describe_output(output: dict[str, Any]) -> str:
    """The one line ``status`` shows for it."""
    uri, fmt, state = output["uri"], output["format"], output["state"]
    if state == "written":
        return (
            f"results written to {uri} ({fmt}: {output['results']} result(s), "
            f"{output['errors']} error(s))"
        )
    if state == "waiting":
        return f"results go to {uri} ({fmt}) when the job ends"
    if state == "abandoned":
        return f"results not written to {uri}: gave up after {output['attempts']} tries: " + str(
            output.get("last_error")
        )
    tried = output["attempts"]
    if not tried:
        return f"results to be written to {uri} ({fmt}) by the next sweeper pass"
    return (
        f"results not written to {uri} yet: try {tried} failed ({output.get('last_error')}); "
        f"next at {output.get('next_attempt_at')}"
    )


def read_progress(
    reader: Reader,
    job: JobRow,
    *,
    now: datetime | None = None,
    usage: bool = True,
    turn: bool = True,
) -> JobProgress:
    """Counts per item state, rate and ETA; with ``usage``, the job's token totals too (a sum
    over all its items: ``watch`` polls without it); with ``turn``, its place in the claim order
    and an ETA from the model's recent rate and the job's share of it."""
    now = now or datetime.now(UTC)
    counts = {state.value: 0 for state in ItemStatus}
    counts.update(count_items(reader, job.id))
    done = sum(n for state, n in counts.items() if state in TERMINAL_ITEM_STATES)
    remaining = counts[ItemStatus.queued] + counts[ItemStatus.running]
    rate = eta = None
    if job.started_at is not None and done:
        elapsed = ((job.finished_at or now) - job.started_at).total_seconds()
        if elapsed > 0:
            rate = done / elapsed
            eta = remaining / rate
    place = None
    if turn and job.status in (JobStatus.queued, JobStatus.in_progress):
        active = active_jobs(reader, job.model, now=now)
        place = read_turn(reader, job, active, now=now)
        shared_eta = eta_seconds(reader, job, place, active, remaining)
        eta = shared_eta if shared_eta is not None else eta
    return JobProgress(
        id=job.id,
        name=job.name,
        kind=job.kind,
        status=job.status,
        model=job.model,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        counts=counts,
        items_per_second=rate,
        eta_seconds=eta,
        metadata=job.metadata or None,
        usage=read_usage(reader, job.id) if usage else None,
        priority=job.priority,
        expires_at=job.expires_at,
        completion_window_seconds=job.completion_window_seconds,
        turn=place,
        retain_seconds=job.retain_seconds,
        retained_until=job.retained_until,
        output=read_output(reader, job),
    )


def list_recent_jobs(
    reader: Reader,
    *,
    limit: int = 20,
    name: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[JobProgress]:
    """The latest jobs, newest first; only those named ``name`` and carrying every
    ``metadata`` pair, when given. Keys and values are bound, never spliced into a JSON path."""
    where = ["status != 'deleting'"]
    params: dict[str, Any] = {"limit": limit}
    if name is not None:
        where.append("name = :name")
        params["name"] = name
    for n, (key, value) in enumerate((metadata or {}).items()):
        if reader.dialect == "postgresql":
            where.append(f"metadata ->> :key{n} = :value{n}")
        else:
            where.append(
                f"EXISTS (SELECT 1 FROM json_each(jobs.metadata) AS pairs "
                f"WHERE pairs.key = :key{n} AND pairs.value = :value{n})"
            )
        params |= {f"key{n}": key, f"value{n}": value}
    rows = reader.rows(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {' AND '.join(where)} "
        "ORDER BY created_at DESC, id LIMIT :limit",
        **params,
    )
    return [read_progress(reader, _job_row(row), usage=False, turn=False) for row in rows]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
