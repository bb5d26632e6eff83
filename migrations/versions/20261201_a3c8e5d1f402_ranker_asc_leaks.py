"""TDG part 2 and leak detection: held-out ranker pairs, vote margins, rationale overlap with the following text

- ranker_pairs.split: `train` pairs are the ones the ranker learns from (one row per epoch and question),
  `heldout` pairs measure its accuracy (s_pos > s_neg) on questions it never saw; unique per split.
- predictions.margin: the winning answer's vote mass minus the best other answer's.
- rationale_scores.overlap, leak: how much of the following text a rationale restates, and whether that made
  it a leak (never kept).

Revision ID: a3c8e5d1f402
Revises: 7b4e1f2a9c55
Create Date: 2026-12-01 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a3c8e5d1f402"
down_revision: str | None = "7b4e1f2a9c55"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ranker_pairs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("split", sa.String(length=8), server_default="train", nullable=False))
        batch_op.drop_constraint("uq_ranker_pairs_job_id_epoch_problem_id", type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_ranker_pairs_job_id_split_epoch_problem_id"),
                                          ["job_id", "split", "epoch", "problem_id"])

    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("margin", sa.Float(), nullable=True))

    with op.batch_alter_table("rationale_scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("overlap", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("leak", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rationale_scores", schema=None) as batch_op:
        batch_op.drop_column("leak")
        batch_op.drop_column("overlap")

    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("margin")

    op.execute("DELETE FROM ranker_pairs WHERE split <> 'train'")
    with op.batch_alter_table("ranker_pairs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_ranker_pairs_job_id_split_epoch_problem_id"), type_="unique")
        batch_op.create_unique_constraint(batch_op.f("uq_ranker_pairs_job_id_epoch_problem_id"),
                                          ["job_id", "epoch", "problem_id"])
        batch_op.drop_column("split")
