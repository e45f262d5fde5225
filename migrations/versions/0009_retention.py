"""Retention and flat costs: a job's retention, deletion in bounded steps, blob collection

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs, never a batch rebuild of jobs (0008 says why). Jobs that exist before
    # the upgrade keep no retention: nothing is deleted that nobody asked to delete.
    op.add_column("jobs", sa.Column("retain_seconds", sa.Integer()))
    op.add_column("jobs", sa.Column("retained_until", UTCDateTime()))
    op.add_column(
        "jobs", sa.Column("keep_inputs", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    retained = sa.text("retained_until IS NOT NULL")
    op.create_index(
        "ix_jobs_retained_until",
        "jobs",
        ["retained_until"],
        postgresql_where=retained,
        sqlite_where=retained,
    )
    op.add_column("schedules", sa.Column("retain_seconds", sa.Integer()))
    op.add_column("schedules", sa.Column("history_cursor", sa.Text()))
    # results pages a job by seq whatever the status; (job_id, status, seq) cannot serve that.
    op.create_index("ix_items_job_seq", "items", ["job_id", "seq"])
    # Whether any item still references a stored input (blob collection asks per candidate).
    stored = sa.text("input_sha256 IS NOT NULL")
    op.create_index(
        "ix_items_input_sha256",
        "items",
        ["input_sha256"],
        postgresql_where=stored,
        sqlite_where=stored,
    )
    # An append-only queue: a serial key, no unique index on the URI (a random key a million
    # deletions would each insert into); the same input queued twice is two rows.
    op.create_table(
        "blob_candidates",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("queued_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "submits_in_flight",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("submits_in_flight")
    op.drop_table("blob_candidates")
    op.drop_index("ix_items_input_sha256", table_name="items")
    op.drop_index("ix_items_job_seq", table_name="items")
    op.drop_column("schedules", "history_cursor")
    op.drop_column("schedules", "retain_seconds")
    op.drop_index("ix_jobs_retained_until", table_name="jobs")
    # DROP COLUMN, not a batch rebuild (see upgrade); SQLite has it since 3.35.
    for column in ("keep_inputs", "retained_until", "retain_seconds"):
        op.drop_column("jobs", column)
