"""reviews: people's corrections of machine values (chain labels, rationale keep decisions, gold answers),
append-only; jobs.reviews_seen: the last review a job read, so its inputs stay reproducible and explainable

Revision ID: b7d2e4a9f613
Revises: e8b1f3a6c920
Create Date: 2026-12-07 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7d2e4a9f613"
down_revision: str | None = "e8b1f3a6c920"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target_table", sa.String(length=32), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(length=32), nullable=False),
        sa.Column("machine_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("reviewer", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("undoes", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("target_table IN ('teacher_chains', 'rationales', 'problems')",
                           name=op.f("ck_reviews_target_table")),
        sa.ForeignKeyConstraint(["undoes"], ["reviews.id"], name=op.f("fk_reviews_undoes_reviews")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reviews")),
    )
    op.create_index("ix_reviews_target", "reviews", ["target_table", "target_id", "field", "id"], unique=False)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("reviews_seen", sa.Integer(), nullable=True))
    # Append-only in the database too: a review is never changed or deleted, whoever holds a connection.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE FUNCTION reviews_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                   "RAISE EXCEPTION 'reviews are append-only: add a review (an undo is one) instead'; END $$")
        op.execute("CREATE TRIGGER reviews_append_only BEFORE UPDATE OR DELETE ON reviews "
                   "FOR EACH ROW EXECUTE FUNCTION reviews_append_only()")
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER reviews_no_{event.lower()} BEFORE {event} ON reviews BEGIN "
                       "SELECT RAISE(ABORT, 'reviews are append-only: add a review (an undo is one) instead'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER reviews_append_only ON reviews")
        op.execute("DROP FUNCTION reviews_append_only()")
    else:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER reviews_no_{event}")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reviews_seen")
    op.drop_index("ix_reviews_target", table_name="reviews")
    op.drop_table("reviews")
