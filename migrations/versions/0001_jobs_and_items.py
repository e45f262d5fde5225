"""jobs and items

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import JsonType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200)),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt", sa.Text()),
        sa.Column("params", JsonType, nullable=False),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("idempotency_key", sa.String(200), unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("finished_at", UTCDateTime()),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_table(
        "items",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(500)),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("input_uri", sa.Text(), nullable=False),
        sa.Column("input_sha256", sa.String(64)),
        sa.Column("prompt", sa.Text()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", UTCDateTime()),
        sa.Column("lease_token", sa.String(36)),
        sa.Column("worker", sa.String(200)),
        sa.Column("dispatched_at", UTCDateTime()),
        sa.Column("result_text", sa.Text()),
        sa.Column("result_json", JsonType),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text()),
        sa.Column("tokens_out", sa.Integer()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("finished_at", UTCDateTime()),
    )
    op.create_index("ix_items_job_status", "items", ["job_id", "status"])
    op.create_index("ix_items_status_lease", "items", ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_table("items")
    op.drop_table("jobs")
