"""item pages (document extraction) and schedules

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import JsonType, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item_pages",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "item_id", sa.String(36), sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("page_number", sa.Integer(), nullable=False),
        sa.Column("result_text", sa.Text()),
        sa.Column("result_json", JsonType),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text()),
        sa.Column("tokens_out", sa.Integer()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("item_id", "page_number", name="uq_item_pages_page"),
    )
    op.create_index("ix_item_pages_item_id", "item_pages", ["item_id"])
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("every_seconds", sa.Integer()),
        sa.Column("cron", sa.String(200)),
        sa.Column("prompt", sa.Text()),
        sa.Column("params", JsonType, nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_due_at", UTCDateTime(), nullable=False),
        sa.Column("last_run_at", UTCDateTime()),
        sa.Column("last_job_id", sa.String(36)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_schedules_next_due_at", "schedules", ["next_due_at"])
    op.create_table(
        "schedule_objects",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "schedule_id",
            sa.String(36),
            sa.ForeignKey("schedules.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(200), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("schedule_id", "key", "etag", name="uq_schedule_objects_version"),
    )


def downgrade() -> None:
    op.drop_table("schedule_objects")
    op.drop_table("schedules")
    op.drop_table("item_pages")
