"""Reviews: a person's decision on an item's result, and an edit kept beside the model's

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import JsonType, UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A new table only: items is not touched, so the upgrade is instant whatever its size.
    op.create_table(
        "reviews",
        sa.Column(
            "item_id",
            sa.String(36),
            sa.ForeignKey("items.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("decision", sa.String(16)),
        sa.Column("edited_text", sa.Text()),
        sa.Column("edited_json", JsonType),
        sa.Column("reviewer", sa.String(200)),
        sa.Column("decided_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_reviews_job_decision", "reviews", ["job_id", "decision"])


def downgrade() -> None:
    op.drop_index("ix_reviews_job_decision", table_name="reviews")
    op.drop_table("reviews")
