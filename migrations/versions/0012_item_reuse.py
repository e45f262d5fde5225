"""Results reused across jobs: each item's reuse key, and the item a reused result came from

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# Only results a model produced: a row enters the index when it succeeds, so a submit's
# queued rows and the copies reuse writes never cost an index entry.
REUSABLE = "reuse_key IS NOT NULL AND status = 'succeeded' AND reused_from IS NULL"


def upgrade() -> None:
    # Nullable columns with no default: on PostgreSQL (11 and later) and SQLite adding them
    # touches only the catalogue, not the items table's rows, however many there are. Items
    # written before this have no key: they are never reused, nor a source.
    op.add_column("items", sa.Column("reuse_key", sa.String(64)))
    op.add_column("items", sa.Column("reused_from", sa.String(36)))
    # Partial: its predicate holds for no existing row (no key yet), so building it reads the
    # table once and writes an empty index.
    op.create_index(
        "ix_items_reuse_key",
        "items",
        ["reuse_key"],
        postgresql_where=sa.text(REUSABLE),
        sqlite_where=sa.text(REUSABLE),
    )


def downgrade() -> None:
    op.drop_index("ix_items_reuse_key", table_name="items")
    with op.batch_alter_table("items") as batch:
        batch.drop_column("reused_from")
        batch.drop_column("reuse_key")
