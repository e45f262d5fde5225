"""items.request: what an item asks beyond its job's parameters (e.g. its own questions)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import JsonType

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("request", JsonType))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("request")
