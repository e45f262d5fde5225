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
    # Existing jobs: priority 0, no window, never served (NULL turn: served first in a tie).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("expires_at", UTCDateTime()))
        batch.add_column(sa.Column("completion_window_seconds", sa.Integer()))
        batch.add_column(sa.Column("turn_at", UTCDateTime()))
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
    op.drop_index("ix_items_unstamped", table_name="items")
    op.drop_index("ix_items_job_finished", table_name="items")
    op.create_index("ix_items_job_status", "items", ["job_id", "status"])
    op.drop_index("ix_items_job_status_seq", table_name="items")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("turn_at")
        batch.drop_column("completion_window_seconds")
        batch.drop_column("expires_at")
        batch.drop_column("priority")
