"""Job and item states; the names are a public contract (users poll them with SQL)."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    queued = "queued"
    in_progress = "in_progress"
    completed = "completed"
    cancelling = "cancelling"
    cancelled = "cancelled"
    failed = "failed"
    # Its completion window passed: what had not started ended ``expired``; results kept.
    expired = "expired"
    # Being deleted in bounded steps (llava-batch delete, retention): gone for every command
    # from the first step; the row itself goes last.
    deleting = "deleting"


class ItemStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    expired = "expired"  # not started before its job's completion window passed


TERMINAL_ITEM_STATES = frozenset(
    {ItemStatus.succeeded, ItemStatus.failed, ItemStatus.cancelled, ItemStatus.expired}
)
TERMINAL_JOB_STATES = frozenset(
    {JobStatus.completed, JobStatus.cancelled, JobStatus.failed, JobStatus.expired}
)


class ReviewState(StrEnum):
    """Where an item stands in review (``results --reviewed``, the page's review filter).
    Here, not in ``jobs.review``, so that building the CLI's options loads no review layer."""

    approved = "approved"
    rejected = "rejected"
    unreviewed = "unreviewed"
