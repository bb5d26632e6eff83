"""nat_alpha_logs is renamed nat_w_neg, after what it stores: NAT's w_neg per layer and projection per logged step

The table is moved, not altered: a new table with the new name and constraint names, the rows copied (ids kept;
on PostgreSQL its id sequence continues after them), the old table dropped. The same code on both backends, and
SQLite cannot rename a constraint in place.

Revision ID: c4d9e2f7a1b3
Revises: a3c8e5d1f402
Create Date: 2026-12-07 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4d9e2f7a1b3"
down_revision: str | None = "a3c8e5d1f402"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = "id, job_id, step, layer, proj, mean_w_neg"


def _move(old: str, new: str) -> None:
    op.create_table(
        new,
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("proj", sa.String(length=32), nullable=False),
        sa.Column("mean_w_neg", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f(f"fk_{new}_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{new}")),
        sa.UniqueConstraint("job_id", "step", "layer", "proj", name=op.f(f"uq_{new}_job_id_step_layer_proj")),
    )
    op.create_index(op.f(f"ix_{new}_job_id"), new, ["job_id"], unique=False)
    op.execute(f"INSERT INTO {new} ({COLUMNS}) SELECT {COLUMNS} FROM {old}")
    if op.get_bind().dialect.name == "postgresql":
        # The copied rows carry their ids; the new table's sequence must hand out ids after them (no rows: NULL,
        # and setval leaves the sequence at its start).
        op.execute(f"SELECT setval(pg_get_serial_sequence('{new}', 'id'), max(id)) FROM {new}")
    op.drop_index(op.f(f"ix_{old}_job_id"), table_name=old)
    op.drop_table(old)


def upgrade() -> None:
    _move("nat_alpha_logs", "nat_w_neg")


def downgrade() -> None:
    _move("nat_w_neg", "nat_alpha_logs")
