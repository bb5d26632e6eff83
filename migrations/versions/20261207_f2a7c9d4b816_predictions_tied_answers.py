"""predictions.tied_answers: a tie's answers (a JSON list), written by aggregate and evaluate when a vote ties, so
the Problem page and `rplat sql` show which answers tied, not only how many

Revision ID: f2a7c9d4b816
Revises: d1f5a8c3e207
Create Date: 2026-12-07 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f2a7c9d4b816"
down_revision: str | None = "d1f5a8c3e207"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("tied_answers", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("tied_answers")
