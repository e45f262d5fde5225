"""items: backoff after transient storage errors (not_before, transient_failures)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("not_before", UTCDateTime()))
        batch.add_column(
            sa.Column("transient_failures", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("transient_failures")
        batch.drop_column("not_before")
