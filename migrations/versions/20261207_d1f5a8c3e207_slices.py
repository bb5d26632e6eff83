"""slices: named filters over the predictions view with their metric (`rplat slice add`), listed and measured on
any run

Revision ID: d1f5a8c3e207
Revises: b7d2e4a9f613
Create Date: 2026-12-07 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d1f5a8c3e207"
down_revision: str | None = "b7d2e4a9f613"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("predicate", sa.Text(), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.CheckConstraint("metric IN ('accuracy', 'n')", name=op.f("ck_slices_metric")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slices")),
        sa.UniqueConstraint("name", name=op.f("uq_slices_name")),
    )


def downgrade() -> None:
    op.drop_table("slices")
