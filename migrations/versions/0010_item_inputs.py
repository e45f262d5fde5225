"""Several images in one request: an item's inputs after its first

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # What a worker's model takes per request; NULL (any number, or a worker that predates
    # this) leaves the judgement to the worker that claims the item.
    op.add_column("workers", sa.Column("max_images", sa.Integer()))
    # A new table only: items is not touched, so the upgrade is instant whatever its size.
    op.create_table(
        "item_inputs",
        sa.Column(
            "item_id",
            sa.String(36),
            sa.ForeignKey("items.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64)),
    )
    # Whether any item still references a stored input (blob collection asks per candidate).
    stored = sa.text("sha256 IS NOT NULL")
    op.create_index(
        "ix_item_inputs_sha256",
        "item_inputs",
        ["sha256"],
        postgresql_where=stored,
        sqlite_where=stored,
    )


def downgrade() -> None:
    op.drop_index("ix_item_inputs_sha256", table_name="item_inputs")
    op.drop_table("item_inputs")
    op.drop_column("workers", "max_images")
