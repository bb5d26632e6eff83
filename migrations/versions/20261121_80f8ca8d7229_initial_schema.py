"""initial schema

Revision ID: 80f8ca8d7229
Revises:
Create Date: 2026-11-21 21:13:13.035785
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "80f8ca8d7229"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("name", name=op.f("uq_experiments_name")),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("adapter_kind", sa.String(length=32), nullable=True),
        sa.Column("lora_r", sa.Integer(), nullable=True),
        sa.Column("lora_alpha", sa.Double(), nullable=True),
        sa.Column("target_modules", sa.JSON(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", name=op.f("uq_models_name")),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_fingerprint"), ["fingerprint"], unique=False)
        batch_op.create_index(batch_op.f("ix_models_job_id"), ["job_id"], unique=False)

    op.create_table(
        "prompt_templates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompt_templates")),
        sa.UniqueConstraint("content_hash", name=op.f("uq_prompt_templates_content_hash")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_prompt_templates_name_version")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("prompt_template_id", sa.Integer(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(), nullable=False),
        sa.Column("target_host", sa.String(length=200), nullable=True),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_token", sa.BigInteger(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f("ck_jobs_status")
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id"], ["experiments.id"], name=op.f("fk_jobs_experiment_id_experiments")
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_jobs_model_id_models")),
        sa.ForeignKeyConstraint(
            ["prompt_template_id"],
            ["prompt_templates.id"],
            name=op.f("fk_jobs_prompt_template_id_prompt_templates"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_jobs_dedupe_key")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_claim", ["status", "priority", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_experiment_id"), ["experiment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_kind"), ["kind"], unique=False)
        batch_op.create_index("ix_jobs_lease", ["status", "lease_expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_model_id"), ["model_id"], unique=False)

    # models.job_id -> jobs.id closes a cycle (jobs.model_id -> models.id), so it is added once both exist.
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_foreign_key(batch_op.f("fk_models_job_id_jobs"), "jobs", ["job_id"], ["id"])

    op.create_table(
        "model_parents",
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("relation", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_parents_model_id_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["parent_id"], ["models.id"], name=op.f("fk_model_parents_parent_id_models")),
        sa.PrimaryKeyConstraint("model_id", "parent_id", name=op.f("pk_model_parents")),
    )
    with op.batch_alter_table("model_parents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_parents_parent_id"), ["parent_id"], unique=False)

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_checkpoints_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_checkpoints")),
        sa.UniqueConstraint("job_id", "step", name=op.f("uq_checkpoints_job_id_step")),
    )
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_checkpoints_job_id"), ["job_id"], unique=False)

    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_datasets_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_datasets_job_id"), ["job_id"], unique=False)

    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("n_correct", sa.Float(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_evaluations_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_evaluations_model_id_models")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("job_id", "method", "subject", name=op.f("uq_evaluations_job_id_method_subject")),
    )
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluations_job_id"), ["job_id"], unique=False)

    op.create_table(
        "generation_cache",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("prompt_hash", sa.String(length=64), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("call", sa.String(length=16), nullable=False),
        sa.Column("output_text", sa.Text(), nullable=True),
        sa.Column("token_logprobs", sa.JSON(), nullable=True),
        sa.Column("token_ids", sa.JSON(), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_generation_cache_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generation_cache")),
        sa.UniqueConstraint(
            "model_fingerprint",
            "prompt_hash",
            "params_hash",
            "sample_index",
            name=op.f("uq_generation_cache_model_fingerprint_prompt_hash_params_hash_sample_index"),
        ),
    )
    with op.batch_alter_table("generation_cache", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_generation_cache_job_id"), ["job_id"], unique=False)

    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("depends_on_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["depends_on_id"],
            ["jobs.id"],
            name=op.f("fk_job_dependencies_depends_on_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_dependencies_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "depends_on_id", name=op.f("pk_job_dependencies")),
    )
    with op.batch_alter_table("job_dependencies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_job_dependencies_depends_on_id"), ["depends_on_id"], unique=False
        )

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("event", sa.String(length=32), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("runner", sa.String(length=200), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_events_job_id"), ["job_id"], unique=False)

    op.create_table(
        "nat_alpha_logs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("proj", sa.String(length=32), nullable=False),
        sa.Column("mean_w_neg", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_nat_alpha_logs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nat_alpha_logs")),
        sa.UniqueConstraint(
            "job_id", "step", "layer", "proj", name=op.f("uq_nat_alpha_logs_job_id_step_layer_proj")
        ),
    )
    with op.batch_alter_table("nat_alpha_logs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nat_alpha_logs_job_id"), ["job_id"], unique=False)

    op.create_table(
        "runners",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("current_job_id", sa.Integer(), nullable=True),
        sa.Column("jobs_done", sa.Integer(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["current_job_id"], ["jobs.id"], name=op.f("fk_runners_current_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runners")),
        sa.UniqueConstraint("name", name=op.f("uq_runners_name")),
    )
    op.create_table(
        "training_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_training_metrics_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_metrics")),
        sa.UniqueConstraint("job_id", "step", name=op.f("uq_training_metrics_job_id_step")),
    )
    with op.batch_alter_table("training_metrics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_metrics_job_id"), ["job_id"], unique=False)

    op.create_table(
        "documents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("subset", sa.String(length=128), nullable=True),
        sa.Column("split", sa.String(length=32), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("n_chars", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_documents_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_documents_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_documents")),
        sa.UniqueConstraint("dataset_id", "external_id", name=op.f("uq_documents_dataset_id_external_id")),
    )
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_documents_content_hash"), ["content_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_documents_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_documents_job_id"), ["job_id"], unique=False)

    op.create_table(
        "problems",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("benchmark", sa.String(length=64), nullable=True),
        sa.Column("split", sa.String(length=32), nullable=True),
        sa.Column("subject", sa.String(length=64), nullable=True),
        sa.Column("level", sa.String(length=32), nullable=True),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("choices", sa.JSON(), nullable=True),
        sa.Column("solution", sa.Text(), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name=op.f("fk_problems_dataset_id_datasets"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_problems_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_problems")),
        sa.UniqueConstraint("dataset_id", "external_id", name=op.f("uq_problems_dataset_id_external_id")),
    )
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_problems_content_hash"), ["content_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_problems_dataset_id"), ["dataset_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_problems_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_problems_subject"), ["subject"], unique=False)

    op.create_table(
        "extractions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=True),
        sa.Column("problem_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("prompt_template_id", sa.Integer(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=True),
        sa.Column("input_text", sa.Text(), nullable=False),
        sa.Column("raw_output", sa.Text(), nullable=False),
        sa.Column("fidelity", sa.Float(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_extractions_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_extractions_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_extractions_model_id_models")),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_extractions_problem_id_problems"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["prompt_template_id"],
            ["prompt_templates.id"],
            name=op.f("fk_extractions_prompt_template_id_prompt_templates"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extractions")),
        sa.UniqueConstraint("job_id", "document_id", name=op.f("uq_extractions_job_id_document_id")),
        sa.UniqueConstraint("job_id", "problem_id", name=op.f("uq_extractions_job_id_problem_id")),
    )
    with op.batch_alter_table("extractions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_extractions_document_id"), ["document_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_extractions_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_extractions_problem_id"), ["problem_id"], unique=False)

    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("vote_mass", sa.Float(), nullable=True),
        sa.Column("tie_size", sa.Integer(), nullable=False),
        sa.Column("credit", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_predictions_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_predictions_model_id_models")),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_predictions_problem_id_problems"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "job_id", "problem_id", "method", name=op.f("uq_predictions_job_id_problem_id_method")
        ),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_predictions_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_predictions_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_predictions_problem_id"), ["problem_id"], unique=False)

    op.create_table(
        "prefilter_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Integer(), nullable=False),
        sa.Column("embed_model_id", sa.Integer(), nullable=False),
        sa.Column("cosine", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name=op.f("fk_prefilter_scores_document_id_documents"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["embed_model_id"], ["models.id"], name=op.f("fk_prefilter_scores_embed_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_prefilter_scores_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prefilter_scores")),
        sa.UniqueConstraint("job_id", "document_id", name=op.f("uq_prefilter_scores_job_id_document_id")),
    )
    with op.batch_alter_table("prefilter_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_prefilter_scores_document_id"), ["document_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_prefilter_scores_job_id"), ["job_id"], unique=False)

    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("sample_idx", sa.Integer(), nullable=False),
        sa.Column("decoding", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("extracted_answer", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_samples_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_samples_model_id_models")),
        sa.ForeignKeyConstraint(
            ["problem_id"], ["problems.id"], name=op.f("fk_samples_problem_id_problems"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_samples")),
        sa.UniqueConstraint(
            "job_id", "problem_id", "sample_idx", name=op.f("uq_samples_job_id_problem_id_sample_idx")
        ),
    )
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_samples_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_samples_model_id"), ["model_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_samples_problem_id"), ["problem_id"], unique=False)

    op.create_table(
        "solve_trajectories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=False),
        sa.Column("sample_idx", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("final_text", sa.Text(), nullable=False),
        sa.Column("prediction", sa.Text(), nullable=True),
        sa.Column("normalized_pred", sa.Text(), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("n_steps", sa.Integer(), nullable=False),
        sa.Column("stopped_reason", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_solve_trajectories_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_solve_trajectories_problem_id_problems"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_solve_trajectories")),
        sa.UniqueConstraint(
            "job_id",
            "problem_id",
            "sample_idx",
            name=op.f("uq_solve_trajectories_job_id_problem_id_sample_idx"),
        ),
    )
    with op.batch_alter_table("solve_trajectories", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_solve_trajectories_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_solve_trajectories_problem_id"), ["problem_id"], unique=False)

    op.create_table(
        "teacher_chains",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=False),
        sa.Column("teacher", sa.String(length=64), nullable=False),
        sa.Column("sample_idx", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("extracted_answer", sa.Text(), nullable=True),
        sa.Column("label", sa.String(length=3), nullable=False),
        sa.Column("n_chars", sa.Integer(), nullable=False),
        sa.CheckConstraint("label IN ('pos', 'neg')", name=op.f("ck_teacher_chains_label")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_teacher_chains_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_teacher_chains_problem_id_problems"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_teacher_chains")),
        sa.UniqueConstraint(
            "job_id",
            "problem_id",
            "teacher",
            "sample_idx",
            name=op.f("uq_teacher_chains_job_id_problem_id_teacher_sample_idx"),
        ),
    )
    with op.batch_alter_table("teacher_chains", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_teacher_chains_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_teacher_chains_label"), ["label"], unique=False)
        batch_op.create_index(batch_op.f("ix_teacher_chains_problem_id"), ["problem_id"], unique=False)

    op.create_table(
        "nce_weights",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("chain_id", sa.Integer(), nullable=False),
        sa.Column("teacher_adapter_id", sa.Integer(), nullable=False),
        sa.Column("kl_neg_nat", sa.Float(), nullable=False),
        sa.Column("beta", sa.Float(), nullable=False),
        sa.Column("kd_weight", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["chain_id"],
            ["teacher_chains.id"],
            name=op.f("fk_nce_weights_chain_id_teacher_chains"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_nce_weights_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["teacher_adapter_id"], ["models.id"], name=op.f("fk_nce_weights_teacher_adapter_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nce_weights")),
        sa.UniqueConstraint("job_id", "chain_id", name=op.f("uq_nce_weights_job_id_chain_id")),
    )
    with op.batch_alter_table("nce_weights", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nce_weights_chain_id"), ["chain_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_nce_weights_job_id"), ["job_id"], unique=False)

    op.create_table(
        "ranker_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("problem_id", sa.Integer(), nullable=False),
        sa.Column("pos_chain_id", sa.Integer(), nullable=False),
        sa.Column("neg_chain_id", sa.Integer(), nullable=False),
        sa.Column("s_pos", sa.Float(), nullable=False),
        sa.Column("s_neg", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_ranker_pairs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["neg_chain_id"],
            ["teacher_chains.id"],
            name=op.f("fk_ranker_pairs_neg_chain_id_teacher_chains"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["pos_chain_id"],
            ["teacher_chains.id"],
            name=op.f("fk_ranker_pairs_pos_chain_id_teacher_chains"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["problem_id"],
            ["problems.id"],
            name=op.f("fk_ranker_pairs_problem_id_problems"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ranker_pairs")),
        sa.UniqueConstraint(
            "job_id", "epoch", "problem_id", name=op.f("uq_ranker_pairs_job_id_epoch_problem_id")
        ),
    )
    with op.batch_alter_table("ranker_pairs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ranker_pairs_job_id"), ["job_id"], unique=False)

    op.create_table(
        "ranker_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("ranker_model_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_ranker_scores_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["ranker_model_id"], ["models.id"], name=op.f("fk_ranker_scores_ranker_model_id_models")
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["samples.id"], name=op.f("fk_ranker_scores_sample_id_samples"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ranker_scores")),
        sa.UniqueConstraint("job_id", "sample_id", name=op.f("uq_ranker_scores_job_id_sample_id")),
    )
    with op.batch_alter_table("ranker_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ranker_scores_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_ranker_scores_sample_id"), ["sample_id"], unique=False)

    op.create_table(
        "rationales",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("extraction_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("preceding", sa.Text(), nullable=False),
        sa.Column("rationale", sa.Text(), nullable=False),
        sa.Column("following", sa.Text(), nullable=False),
        sa.Column("left_step", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["extraction_id"],
            ["extractions.id"],
            name=op.f("fk_rationales_extraction_id_extractions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_rationales_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rationales")),
        sa.UniqueConstraint(
            "job_id", "extraction_id", "position", name=op.f("uq_rationales_job_id_extraction_id_position")
        ),
    )
    with op.batch_alter_table("rationales", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rationales_extraction_id"), ["extraction_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rationales_job_id"), ["job_id"], unique=False)

    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("trajectory_id", sa.Integer(), nullable=False),
        sa.Column("step_idx", sa.Integer(), nullable=False),
        sa.Column("rationale_text", sa.Text(), nullable=True),
        sa.Column("rationale_mean_logprob", sa.Float(), nullable=True),
        sa.Column("chosen_candidate_idx", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_steps_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["trajectory_id"],
            ["solve_trajectories.id"],
            name=op.f("fk_steps_trajectory_id_solve_trajectories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_steps")),
        sa.UniqueConstraint("trajectory_id", "step_idx", name=op.f("uq_steps_trajectory_id_step_idx")),
    )
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_steps_job_id"), ["job_id"], unique=False)

    op.create_table(
        "rationale_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("rationale_id", sa.Integer(), nullable=False),
        sa.Column("scorer_model_id", sa.Integer(), nullable=False),
        sa.Column("lp_without", sa.JSON(), nullable=False),
        sa.Column("lp_with", sa.JSON(), nullable=False),
        sa.Column("gamma", sa.Float(), nullable=False),
        sa.Column("s_without", sa.Float(), nullable=False),
        sa.Column("s_with", sa.Float(), nullable=False),
        sa.Column("loss_delta", sa.Float(), nullable=False),
        sa.Column("tau", sa.Float(), nullable=False),
        sa.Column("kept", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_rationale_scores_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["rationale_id"],
            ["rationales.id"],
            name=op.f("fk_rationale_scores_rationale_id_rationales"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["scorer_model_id"], ["models.id"], name=op.f("fk_rationale_scores_scorer_model_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rationale_scores")),
        sa.UniqueConstraint("job_id", "rationale_id", name=op.f("uq_rationale_scores_job_id_rationale_id")),
    )
    with op.batch_alter_table("rationale_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rationale_scores_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_rationale_scores_kept"), ["kept"], unique=False)
        batch_op.create_index(batch_op.f("ix_rationale_scores_rationale_id"), ["rationale_id"], unique=False)

    op.create_table(
        "step_candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("candidate_idx", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("token_logprobs", sa.JSON(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("chosen", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_step_candidates_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["step_id"], ["steps.id"], name=op.f("fk_step_candidates_step_id_steps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_candidates")),
        sa.UniqueConstraint(
            "step_id", "candidate_idx", name=op.f("uq_step_candidates_step_id_candidate_idx")
        ),
    )
    with op.batch_alter_table("step_candidates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_step_candidates_job_id"), ["job_id"], unique=False)

    op.create_table(
        "training_examples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("rationale_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_training_examples_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["rationale_id"],
            ["rationales.id"],
            name=op.f("fk_training_examples_rationale_id_rationales"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_examples")),
        sa.UniqueConstraint("job_id", "rationale_id", name=op.f("uq_training_examples_job_id_rationale_id")),
    )
    with op.batch_alter_table("training_examples", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_examples_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_examples_rationale_id"), ["rationale_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_models_job_id_jobs"), type_="foreignkey")
    with op.batch_alter_table("training_examples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_examples_rationale_id"))
        batch_op.drop_index(batch_op.f("ix_training_examples_job_id"))

    op.drop_table("training_examples")
    with op.batch_alter_table("step_candidates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_step_candidates_job_id"))

    op.drop_table("step_candidates")
    with op.batch_alter_table("rationale_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rationale_scores_rationale_id"))
        batch_op.drop_index(batch_op.f("ix_rationale_scores_kept"))
        batch_op.drop_index(batch_op.f("ix_rationale_scores_job_id"))

    op.drop_table("rationale_scores")
    with op.batch_alter_table("steps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_steps_job_id"))

    op.drop_table("steps")
    with op.batch_alter_table("rationales", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rationales_job_id"))
        batch_op.drop_index(batch_op.f("ix_rationales_extraction_id"))

    op.drop_table("rationales")
    with op.batch_alter_table("ranker_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ranker_scores_sample_id"))
        batch_op.drop_index(batch_op.f("ix_ranker_scores_job_id"))

    op.drop_table("ranker_scores")
    with op.batch_alter_table("ranker_pairs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ranker_pairs_job_id"))

    op.drop_table("ranker_pairs")
    with op.batch_alter_table("nce_weights", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nce_weights_job_id"))
        batch_op.drop_index(batch_op.f("ix_nce_weights_chain_id"))

    op.drop_table("nce_weights")
    with op.batch_alter_table("teacher_chains", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_teacher_chains_problem_id"))
        batch_op.drop_index(batch_op.f("ix_teacher_chains_label"))
        batch_op.drop_index(batch_op.f("ix_teacher_chains_job_id"))

    op.drop_table("teacher_chains")
    with op.batch_alter_table("solve_trajectories", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_solve_trajectories_problem_id"))
        batch_op.drop_index(batch_op.f("ix_solve_trajectories_job_id"))

    op.drop_table("solve_trajectories")
    with op.batch_alter_table("samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_samples_problem_id"))
        batch_op.drop_index(batch_op.f("ix_samples_model_id"))
        batch_op.drop_index(batch_op.f("ix_samples_job_id"))

    op.drop_table("samples")
    with op.batch_alter_table("prefilter_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prefilter_scores_job_id"))
        batch_op.drop_index(batch_op.f("ix_prefilter_scores_document_id"))

    op.drop_table("prefilter_scores")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_predictions_problem_id"))
        batch_op.drop_index(batch_op.f("ix_predictions_model_id"))
        batch_op.drop_index(batch_op.f("ix_predictions_job_id"))

    op.drop_table("predictions")
    with op.batch_alter_table("extractions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_extractions_problem_id"))
        batch_op.drop_index(batch_op.f("ix_extractions_job_id"))
        batch_op.drop_index(batch_op.f("ix_extractions_document_id"))

    op.drop_table("extractions")
    with op.batch_alter_table("problems", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_problems_subject"))
        batch_op.drop_index(batch_op.f("ix_problems_job_id"))
        batch_op.drop_index(batch_op.f("ix_problems_dataset_id"))
        batch_op.drop_index(batch_op.f("ix_problems_content_hash"))

    op.drop_table("problems")
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_documents_job_id"))
        batch_op.drop_index(batch_op.f("ix_documents_dataset_id"))
        batch_op.drop_index(batch_op.f("ix_documents_content_hash"))

    op.drop_table("documents")
    with op.batch_alter_table("training_metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_metrics_job_id"))

    op.drop_table("training_metrics")
    op.drop_table("runners")
    with op.batch_alter_table("nat_alpha_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nat_alpha_logs_job_id"))

    op.drop_table("nat_alpha_logs")
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_events_job_id"))

    op.drop_table("job_events")
    with op.batch_alter_table("job_dependencies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_dependencies_depends_on_id"))

    op.drop_table("job_dependencies")
    with op.batch_alter_table("generation_cache", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_generation_cache_job_id"))

    op.drop_table("generation_cache")
    with op.batch_alter_table("evaluations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluations_job_id"))

    op.drop_table("evaluations")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_datasets_job_id"))

    op.drop_table("datasets")
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_checkpoints_job_id"))

    op.drop_table("checkpoints")
    with op.batch_alter_table("model_parents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_parents_parent_id"))

    op.drop_table("model_parents")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_model_id"))
        batch_op.drop_index("ix_jobs_lease")
        batch_op.drop_index(batch_op.f("ix_jobs_kind"))
        batch_op.drop_index(batch_op.f("ix_jobs_experiment_id"))
        batch_op.drop_index("ix_jobs_claim")

    op.drop_table("jobs")
    op.drop_table("prompt_templates")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_job_id"))
        batch_op.drop_index(batch_op.f("ix_models_fingerprint"))

    op.drop_table("models")
    op.drop_table("experiments")
