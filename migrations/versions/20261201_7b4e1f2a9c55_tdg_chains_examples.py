"""TDG part 1: chains stored once per (problem, teacher, sample), both labelers' verdicts; examples point at chains

- teacher_chains: unique on (problem_id, teacher, sample_idx) instead of per job, so a re-import or a resumed
  collect-chains adds nothing; `labeler` (which verdict `label` is), `hendrycks_correct`, `math_verify_correct`;
  teacher names may be as long as model names (200).
- training_examples: a training job's example is a rationale, a teacher chain or a problem's gold solution
  (exactly one); `label` records the side of the loss it was on (pos, neg, gold).
- samples.finish_reason: why a sampled chain ended (stop, length).

Revision ID: 7b4e1f2a9c55
Revises: 5e2a9c4b7d10
Create Date: 2026-12-01 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7b4e1f2a9c55"
down_revision: str | None = "5e2a9c4b7d10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ONE_SOURCE = ("(CASE WHEN rationale_id IS NULL THEN 0 ELSE 1 END) + (CASE WHEN chain_id IS NULL THEN 0 "
              "ELSE 1 END) + (CASE WHEN problem_id IS NULL THEN 0 ELSE 1 END) = 1")


def upgrade() -> None:
    with op.batch_alter_table("teacher_chains", schema=None) as batch_op:
        batch_op.drop_constraint("uq_teacher_chains_job_id_problem_id_teacher_sample_idx", type_="unique")
        batch_op.alter_column("teacher", existing_type=sa.String(length=64), type_=sa.String(length=200),
                              existing_nullable=False)
        batch_op.add_column(sa.Column("labeler", sa.String(length=16), server_default="hendrycks", nullable=False))
        batch_op.add_column(sa.Column("hendrycks_correct", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("math_verify_correct", sa.Boolean(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_teacher_chains_problem_id_teacher_sample_idx"),
                                          ["problem_id", "teacher", "sample_idx"])
        batch_op.create_index(batch_op.f("ix_teacher_chains_teacher"), ["teacher"], unique=False)

    with op.batch_alter_table("training_examples", schema=None) as batch_op:
        batch_op.alter_column("rationale_id", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("chain_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("problem_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("label", sa.String(length=8), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_training_examples_chain_id_teacher_chains"), "teacher_chains",
                                    ["chain_id"], ["id"], ondelete="CASCADE")
        batch_op.create_foreign_key(batch_op.f("fk_training_examples_problem_id_problems"), "problems",
                                    ["problem_id"], ["id"], ondelete="CASCADE")
        batch_op.create_index(batch_op.f("ix_training_examples_chain_id"), ["chain_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_examples_problem_id"), ["problem_id"], unique=False)
        batch_op.create_unique_constraint(batch_op.f("uq_training_examples_job_id_chain_id"), ["job_id", "chain_id"])
        batch_op.create_unique_constraint(batch_op.f("uq_training_examples_job_id_problem_id"),
                                          ["job_id", "problem_id"])
        batch_op.create_check_constraint("one_source", ONE_SOURCE)

    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finish_reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_column("finish_reason")

    op.execute("DELETE FROM training_examples WHERE rationale_id IS NULL")
    with op.batch_alter_table("training_examples", schema=None) as batch_op:
        batch_op.drop_constraint("one_source", type_="check")
        batch_op.drop_constraint(batch_op.f("uq_training_examples_job_id_problem_id"), type_="unique")
        batch_op.drop_constraint(batch_op.f("uq_training_examples_job_id_chain_id"), type_="unique")
        batch_op.drop_index(batch_op.f("ix_training_examples_problem_id"))
        batch_op.drop_index(batch_op.f("ix_training_examples_chain_id"))
        batch_op.drop_constraint(batch_op.f("fk_training_examples_problem_id_problems"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_training_examples_chain_id_teacher_chains"), type_="foreignkey")
        batch_op.drop_column("label")
        batch_op.drop_column("problem_id")
        batch_op.drop_column("chain_id")
        batch_op.alter_column("rationale_id", existing_type=sa.Integer(), nullable=False)

    with op.batch_alter_table("teacher_chains", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teacher_chains_teacher"))
        batch_op.drop_constraint(batch_op.f("uq_teacher_chains_problem_id_teacher_sample_idx"), type_="unique")
        batch_op.drop_column("math_verify_correct")
        batch_op.drop_column("hendrycks_correct")
        batch_op.drop_column("labeler")
        batch_op.alter_column("teacher", existing_type=sa.String(length=200), type_=sa.String(length=64),
                              existing_nullable=False)
        batch_op.create_unique_constraint("uq_teacher_chains_job_id_problem_id_teacher_sample_idx",
                                          ["job_id", "problem_id", "teacher", "sample_idx"])
