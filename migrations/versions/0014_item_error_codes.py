"""The error codes of a job's items, indexed: the review page counts them a bounded number at
a time

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

HAS_CODE = "error_code IS NOT NULL"


def upgrade() -> None:
    # Partial: only the failures (and expired or cancelled items) have a code, so the index is
    # a fraction of the table. Building it reads the items table once.
    op.create_index(
        "ix_items_job_error_code",
        "items",
        ["job_id", "error_code"],
        postgresql_where=sa.text(HAS_CODE),
        sqlite_where=sa.text(HAS_CODE),
    )


def downgrade() -> None:
    op.drop_index("ix_items_job_error_code", table_name="items")
