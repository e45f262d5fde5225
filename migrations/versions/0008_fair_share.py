"""Sharing the fleet: job priority, completion window, fair-share turn; the claim's index

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing jobs: priority 0, no window, never served (served first among their priority).
    # Plain ADD COLUMNs, never a batch rebuild of jobs: on SQLite that drops the table, and
    # with foreign keys on, the drop deletes every item through ON DELETE CASCADE.
    op.add_column("jobs", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("jobs", sa.Column("expires_at", UTCDateTime()))
    op.add_column("jobs", sa.Column("completion_window_seconds", sa.Integer()))
    # NOT NULL from the start, so the default is the database's: NEVER_SERVED as each stores it.
    never = (
        "'1970-01-01 00:00:00+00'"
        if op.get_bind().dialect.name == "postgresql"
        else "'1970-01-01 00:00:00.000000'"
    )
    op.add_column(
        "jobs",
        sa.Column("turn_at", UTCDateTime(), nullable=False, server_default=sa.text(never)),
    )
    # The open jobs of a model in claim order, read backwards (jobs.db says why).
    open_jobs = sa.text("status IN ('queued', 'in_progress')")
    op.create_index(
        "ix_jobs_open_turn",
        "jobs",
        ["model", "priority", sa.desc("turn_at"), sa.desc("created_at"), sa.desc("id")],
        postgresql_where=open_jobs,
        sqlite_where=open_jobs,
    )
    # The claim takes a job's next queued items by seq: (job_id, status, seq) serves that and
    # everything the (job_id, status) index served.
    op.create_index("ix_items_job_status_seq", "items", ["job_id", "status", "seq"])
    op.drop_index("ix_items_job_status", table_name="items")
    # What the model's fleet finished lately, for an ETA that accounts for the shares.
    op.create_index("ix_items_job_finished", "items", ["job_id", "finished_at"])
    # Queued items with no dispatch stamp, for the sweeper's pass (jobs.lifecycle.stamp_rung).
    unstamped = sa.text("status = 'queued' AND dispatched_at IS NULL")
    op.create_index(
        "ix_items_unstamped",
        "items",
        ["job_id"],
        postgresql_where=unstamped,
        sqlite_where=unstamped,
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_open_turn", table_name="jobs")
    op.drop_index("ix_items_unstamped", table_name="items")
    op.drop_index("ix_items_job_finished", table_name="items")
    op.create_index("ix_items_job_status", "items", ["job_id", "status"])
    op.drop_index("ix_items_job_status_seq", table_name="items")
    # DROP COLUMN, not a batch rebuild (see upgrade); SQLite has it since 3.35.
    for column in ("turn_at", "completion_window_seconds", "expires_at", "priority"):
        op.drop_column("jobs", column)
