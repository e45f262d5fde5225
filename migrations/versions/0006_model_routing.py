"""items: the model, revision and quantisation that produced them; workers: who serves what

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("model", sa.String(500)))
        batch.add_column(sa.Column("model_revision", sa.String(200)))
        batch.add_column(sa.Column("quantization", sa.String(16)))
    op.create_table(
        "workers",
        sa.Column("node", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(500), nullable=False),
        sa.Column("model_revision", sa.String(200)),
        sa.Column("quantization", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_workers_model_seen", "workers", ["model", "seen_at"])


def downgrade() -> None:
    op.drop_index("ix_workers_model_seen", table_name="workers")
    op.drop_table("workers")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("quantization")
        batch.drop_column("model_revision")
        batch.drop_column("model")
