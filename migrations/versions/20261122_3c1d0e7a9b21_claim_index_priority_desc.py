"""claim index in the claim's order: (status, priority DESC, id)

The claim takes the queued job with the highest priority, then the oldest: ORDER BY priority DESC, id.
The old index (status, priority, id) could not give that order, so every claim sorted all queued jobs.

Revision ID: 3c1d0e7a9b21
Revises: 80f8ca8d7229
Create Date: 2026-11-22 01:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c1d0e7a9b21"
down_revision: str | None = "80f8ca8d7229"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_claim")
        batch_op.create_index("ix_jobs_claim", ["status", sa.text("priority DESC"), "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_claim")
        batch_op.create_index("ix_jobs_claim", ["status", "priority", "id"], unique=False)
