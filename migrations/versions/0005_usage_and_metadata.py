"""items: prompt/completion token counts and finish reason; jobs: metadata

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import JsonType

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("prompt_tokens", sa.Integer()))
        batch.add_column(sa.Column("completion_tokens", sa.Integer()))
        batch.add_column(sa.Column("finish_reason", sa.String(16)))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("metadata", JsonType))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("metadata")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("finish_reason")
        batch.drop_column("completion_tokens")
        batch.drop_column("prompt_tokens")
