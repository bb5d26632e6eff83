"""runners.slurm_job: the Slurm job (ARRAYJOB_TASK for an array task) a runner runs in, so `rplat status` leads
from a stuck job to the Slurm job running it

Revision ID: e8b1f3a6c920
Revises: c4d9e2f7a1b3
Create Date: 2026-12-07 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e8b1f3a6c920"
down_revision: str | None = "c4d9e2f7a1b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slurm_job", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.drop_column("slurm_job")
