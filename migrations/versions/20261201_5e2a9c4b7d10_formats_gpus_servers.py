"""model format apart from role; GPU requirements and device lists; a servers table

- models.kind (base/adapter/embedding/ranker) becomes models.format, the loader it needs (base, lora, nat,
  embedding); adapter_kind, which repeated the role, goes. A former adapter is a peft LoRA: format 'lora'.
- jobs.gpus: how many GPUs a job needs (claimed only by a runner with that many free); jobs.devices: the
  device ids its runner gave it.
- runners.gpus (the device ids a runner advertises) and runners.slots (jobs it runs at once).
- servers: model servers `rplat serve` started, with host, pid and URL, so any machine can find or stop them.

Revision ID: 5e2a9c4b7d10
Revises: 3c1d0e7a9b21
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e2a9c4b7d10"
down_revision: str | None = "3c1d0e7a9b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.alter_column("kind", new_column_name="format", existing_type=sa.String(length=32),
                              existing_nullable=False)
    op.execute("UPDATE models SET format = 'lora' WHERE format = 'adapter'")
    op.execute("UPDATE models SET format = 'base' WHERE format = 'ranker'")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_column("adapter_kind")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpus", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("devices", sa.JSON(), nullable=True))
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gpus", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("slots", sa.Integer(), server_default="1", nullable=False))

    op.create_table(
        "servers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("served_name", sa.String(length=200), nullable=False),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_servers_model_id_models"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_servers")),
    )
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_servers_model_id"), ["model_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_servers_model_id"))
    op.drop_table("servers")
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.drop_column("slots")
        batch_op.drop_column("gpus")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("devices")
        batch_op.drop_column("gpus")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("adapter_kind", sa.String(length=32), nullable=True))
    op.execute("UPDATE models SET adapter_kind = role WHERE format <> 'base' AND format <> 'embedding'")
    op.execute("UPDATE models SET format = 'adapter' WHERE format <> 'base' AND format <> 'embedding'")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.alter_column("format", new_column_name="kind", existing_type=sa.String(length=32),
                              existing_nullable=False)
