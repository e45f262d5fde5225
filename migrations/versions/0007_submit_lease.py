"""jobs.submit_lease_expires_at: a big job's rows are committed in chunks under a lease

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no backfill: every existing job was written in one transaction (NULL: all of
    # its rows are written).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("submit_lease_expires_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("submit_lease_expires_at")
