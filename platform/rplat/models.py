"""The relational store: every entity of both papers as SQLAlchemy 2 typed models, one schema.

Lineage: every row a job derives carries `job_id`; the job carries its kind, validated params, model and
prompt template. Idempotency: each derived table has a unique key that a re-claimed job upserts against.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# A job is queued, then running, then ends in one of the terminal statuses (a retry queues it again).
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
JOB_STATUSES = ("queued", "running", *TERMINAL_STATUSES)


def utcnow() -> dt.datetime:
    """Naive UTC: stored the same way by SQLite and PostgreSQL, compared correctly by both."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, dt.datetime: DateTime()}


def job_fk(nullable: bool = False) -> Mapped[int]:
    return mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True, nullable=nullable)


# --- experiments and the queue -------------------------------------------------------------------


class Experiment(Base):
    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in JOB_STATUSES)})", name="status"),
        # The claim's order (priority DESC, id) read straight off the index: no sort of the whole queue.
        Index("ix_jobs_claim", "status", text("priority DESC"), "id"),
        Index("ix_jobs_lease", "status", "lease_expires_at"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), index=True)
    prompt_template_id: Mapped[int | None] = mapped_column(ForeignKey("prompt_templates.id"))
    priority: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    gpus: Mapped[int] = mapped_column(default=0, server_default="0")
    devices: Mapped[list[Any] | None]
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    not_before: Mapped[dt.datetime] = mapped_column(default=utcnow)
    target_host: Mapped[str | None] = mapped_column(String(200))
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_expires_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    progress_done: Mapped[int] = mapped_column(default=0)
    progress_total: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None]
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    # the last review (reviews.id; 0: there was none) whose corrections this job read, pinned when it first read a
    # reviewable value, so a resumed attempt reads the same labels, gold answers and keep decisions (rplat.reviews)
    reviews_seen: Mapped[int | None]


class JobDependency(Base):
    __tablename__ = "job_dependencies"
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    depends_on_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    event: Mapped[str] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    runner: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int | None]


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    step: Mapped[int]
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Runner(Base):
    __tablename__ = "runners"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    kinds: Mapped[list[Any] | None]
    gpus: Mapped[list[Any] | None]
    slots: Mapped[int] = mapped_column(default=1, server_default="1")
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    current_job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    jobs_done: Mapped[int] = mapped_column(default=0)
    stopped_at: Mapped[dt.datetime | None]
    # The Slurm job running this runner, as `scontrol show job` and `scancel` take it: ARRAYJOB_TASK for an array
    # task (`rplat slurm submit`), the job id otherwise; none outside Slurm.
    slurm_job: Mapped[str | None] = mapped_column(String(64))


# --- registries: models, adapters, prompts, datasets ----------------------------------------------


class Model(Base):
    """A registered model: `format` says how its files are loaded, `role` what it is for; `fingerprint` keys the cache.

    format: `base` (a Hugging Face model directory), `lora` (a peft adapter on a base), `nat` (the NAT layer's
    safetensors + JSON on a base), `embedding` (a sentence-transformers directory); the loader's format registry
    (`rplat.llm.formats`) picks the loader from it. role: what the model is in an experiment (agent, teacher,
    rationalyst, neg, nat, nce, kd, mix, nt, ul, sft, ranker, prefilter...); free text, never read by a loader.
    Parents (`model_parents.relation`): `base`, `neg` (NAT's frozen negative LoRA), `teacher` (NCE).
    """

    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    format: Mapped[str] = mapped_column(String(32))
    role: Mapped[str | None] = mapped_column(String(32))
    path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    lora_r: Mapped[int | None]
    lora_alpha: Mapped[float | None]
    target_modules: Mapped[list[Any] | None]
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", use_alter=True), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ModelParent(Base):
    __tablename__ = "model_parents"
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True, index=True)
    relation: Mapped[str] = mapped_column(String(32), default="base")


class Server(Base):
    """A model server `rplat serve` started (vLLM): where it runs, so any machine can find or stop it."""

    __tablename__ = "servers"
    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int]
    url: Mapped[str] = mapped_column(Text)
    served_name: Mapped[str] = mapped_column(String(200))
    log_path: Mapped[str | None] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[dt.datetime | None]


class PromptTemplate(Base):
    __tablename__ = "prompt_templates"
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(32))
    body: Mapped[dict[str, Any]]
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (UniqueConstraint("dataset_id", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int] = job_fk()
    external_id: Mapped[str] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(64))
    subset: Mapped[str | None] = mapped_column(String(128))
    split: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    n_chars: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    meta: Mapped[dict[str, Any] | None]


class Problem(Base):
    __tablename__ = "problems"
    __table_args__ = (UniqueConstraint("dataset_id", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[int] = job_fk()
    external_id: Mapped[str] = mapped_column(String(200))
    benchmark: Mapped[str | None] = mapped_column(String(64))
    split: Mapped[str | None] = mapped_column(String(32))
    subject: Mapped[str | None] = mapped_column(String(64), index=True)
    level: Mapped[str | None] = mapped_column(String(32))
    question: Mapped[str] = mapped_column(Text)
    choices: Mapped[list[Any] | None]
    solution: Mapped[str | None] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    meta: Mapped[dict[str, Any] | None]


# --- RATIONALYST -----------------------------------------------------------------------------------


class PrefilterScore(Base):
    __tablename__ = "prefilter_scores"
    __table_args__ = (UniqueConstraint("job_id", "document_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    embed_model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    cosine: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)


class Extraction(Base):
    __tablename__ = "extractions"
    __table_args__ = (UniqueConstraint("job_id", "document_id"), UniqueConstraint("job_id", "problem_id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    document_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    problem_id: Mapped[int | None] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    prompt_template_id: Mapped[int] = mapped_column(ForeignKey("prompt_templates.id"))
    temperature: Mapped[float] = mapped_column(Float)
    seed: Mapped[int | None]
    input_text: Mapped[str] = mapped_column(Text)
    raw_output: Mapped[str] = mapped_column(Text)
    fidelity: Mapped[float | None] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)


class Rationale(Base):
    __tablename__ = "rationales"
    __table_args__ = (UniqueConstraint("job_id", "extraction_id", "position"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    extraction_id: Mapped[int] = mapped_column(ForeignKey("extractions.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    preceding: Mapped[str] = mapped_column(Text)
    rationale: Mapped[str] = mapped_column(Text)
    following: Mapped[str] = mapped_column(Text)
    left_step: Mapped[int]
    source: Mapped[str | None] = mapped_column(String(64))


class RationaleScore(Base):
    __tablename__ = "rationale_scores"
    __table_args__ = (UniqueConstraint("job_id", "rationale_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    rationale_id: Mapped[int] = mapped_column(ForeignKey("rationales.id", ondelete="CASCADE"), index=True)
    scorer_model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    lp_without: Mapped[list[Any]]
    lp_with: Mapped[list[Any]]
    gamma: Mapped[float] = mapped_column(Float)
    s_without: Mapped[float] = mapped_column(Float)
    s_with: Mapped[float] = mapped_column(Float)
    loss_delta: Mapped[float] = mapped_column(Float)
    tau: Mapped[float] = mapped_column(Float)
    kept: Mapped[bool] = mapped_column(Boolean, index=True)
    # share of the following text the rationale restates (see rplat.methods.leaks); a leak is never kept
    overlap: Mapped[float | None] = mapped_column(Float)
    leak: Mapped[bool | None] = mapped_column(Boolean)


class TrainingExample(Base):
    """What a training job trained on: exactly one of a rationale, a teacher chain, or a problem's gold solution.

    `label` says how the example entered the loss: pos / neg (a chain's label, or the side NT and UL put it on),
    gold (a worked solution: train-sft, NT's gold term), rationale; `split` is train or eval.
    """

    __tablename__ = "training_examples"
    __table_args__ = (
        UniqueConstraint("job_id", "rationale_id"),
        UniqueConstraint("job_id", "chain_id"),
        UniqueConstraint("job_id", "problem_id"),
        CheckConstraint("(CASE WHEN rationale_id IS NULL THEN 0 ELSE 1 END) + (CASE WHEN chain_id IS NULL THEN 0 "
                        "ELSE 1 END) + (CASE WHEN problem_id IS NULL THEN 0 ELSE 1 END) = 1", name="one_source"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    rationale_id: Mapped[int | None] = mapped_column(ForeignKey("rationales.id", ondelete="CASCADE"), index=True)
    chain_id: Mapped[int | None] = mapped_column(ForeignKey("teacher_chains.id", ondelete="CASCADE"), index=True)
    problem_id: Mapped[int | None] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    label: Mapped[str | None] = mapped_column(String(8))
    split: Mapped[str] = mapped_column(String(16))


class TrainingMetric(Base):
    """One row per optimizer step of any training job: the loss curve a resumed run must reproduce."""

    __tablename__ = "training_metrics"
    __table_args__ = (UniqueConstraint("job_id", "step"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    step: Mapped[int]
    loss: Mapped[float] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict[str, Any] | None]


class SolveTrajectory(Base):
    __tablename__ = "solve_trajectories"
    __table_args__ = (UniqueConstraint("job_id", "problem_id", "sample_idx"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    sample_idx: Mapped[int] = mapped_column(default=0)
    method: Mapped[str] = mapped_column(String(32))
    final_text: Mapped[str] = mapped_column(Text)
    prediction: Mapped[str | None] = mapped_column(Text)
    normalized_pred: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    n_steps: Mapped[int]
    stopped_reason: Mapped[str] = mapped_column(String(32))


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("trajectory_id", "step_idx"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    trajectory_id: Mapped[int] = mapped_column(ForeignKey("solve_trajectories.id", ondelete="CASCADE"))
    step_idx: Mapped[int]
    rationale_text: Mapped[str | None] = mapped_column(Text)
    rationale_mean_logprob: Mapped[float | None] = mapped_column(Float)
    chosen_candidate_idx: Mapped[int]
    text: Mapped[str] = mapped_column(Text)


class StepCandidate(Base):
    __tablename__ = "step_candidates"
    __table_args__ = (UniqueConstraint("step_id", "candidate_idx"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"))
    candidate_idx: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    token_logprobs: Mapped[list[Any] | None]
    score: Mapped[float | None] = mapped_column(Float)
    chosen: Mapped[bool] = mapped_column(Boolean)


# --- Turning Dust into Gold ------------------------------------------------------------------------


class TeacherChain(Base):
    """One chain of thought by a teacher for a problem, labelled positive or negative (TDG B1).

    `teacher` names the chain set (an imported teacher such as gpt-3.5, or the model collect-chains sampled);
    a (problem, teacher, sample index) is stored once, so a re-import or a resumed collection adds nothing.
    `extracted_answer` is the chain's last `\\boxed{}`, or without a box the `#### N` / "the answer is N" it states
    (which math-verify judges; the Hendrycks rule counts an unboxed chain negative); `hendrycks_correct` and
    `math_verify_correct` are both labelers' verdicts against the gold answer, `label` the verdict of `labeler`.
    """

    __tablename__ = "teacher_chains"
    __table_args__ = (
        UniqueConstraint("problem_id", "teacher", "sample_idx"),
        CheckConstraint("label IN ('pos', 'neg')", name="label"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    teacher: Mapped[str] = mapped_column(String(200), index=True)
    sample_idx: Mapped[int]
    text: Mapped[str] = mapped_column(Text)
    extracted_answer: Mapped[str | None] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(3), index=True)
    labeler: Mapped[str] = mapped_column(String(16), default="hendrycks", server_default="hendrycks")
    hendrycks_correct: Mapped[bool | None] = mapped_column(Boolean)
    math_verify_correct: Mapped[bool | None] = mapped_column(Boolean)
    n_chars: Mapped[int]


class NceWeight(Base):
    __tablename__ = "nce_weights"
    __table_args__ = (UniqueConstraint("job_id", "chain_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    chain_id: Mapped[int] = mapped_column(ForeignKey("teacher_chains.id", ondelete="CASCADE"), index=True)
    teacher_adapter_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    kl_neg_nat: Mapped[float] = mapped_column(Float)
    beta: Mapped[float] = mapped_column(Float)
    kd_weight: Mapped[float] = mapped_column(Float)


class NatWNeg(Base):
    """NAT's w_neg, the integration unit's weight on the negative LoRA, averaged per layer and projection at a
    logged step of a train-nat job (TDG B2)."""

    __tablename__ = "nat_w_neg"
    __table_args__ = (UniqueConstraint("job_id", "step", "layer", "proj"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    step: Mapped[int]
    layer: Mapped[int]
    proj: Mapped[str] = mapped_column(String(32))
    mean_w_neg: Mapped[float] = mapped_column(Float)


class Sample(Base):
    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("job_id", "problem_id", "sample_idx"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    sample_idx: Mapped[int]
    decoding: Mapped[str] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text)
    extracted_answer: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    finish_reason: Mapped[str | None] = mapped_column(String(32))


class RankerPair(Base):
    __tablename__ = "ranker_pairs"
    __table_args__ = (UniqueConstraint("job_id", "split", "epoch", "problem_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    split: Mapped[str] = mapped_column(String(8), default="train", server_default="train")  # train | heldout
    epoch: Mapped[int]
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"))
    pos_chain_id: Mapped[int] = mapped_column(ForeignKey("teacher_chains.id", ondelete="CASCADE"))
    neg_chain_id: Mapped[int] = mapped_column(ForeignKey("teacher_chains.id", ondelete="CASCADE"))
    s_pos: Mapped[float] = mapped_column(Float)
    s_neg: Mapped[float] = mapped_column(Float)
    loss: Mapped[float] = mapped_column(Float)


class RankerScore(Base):
    __tablename__ = "ranker_scores"
    __table_args__ = (UniqueConstraint("job_id", "sample_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    sample_id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), index=True)
    ranker_model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    score: Mapped[float] = mapped_column(Float)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)


class Prediction(Base):
    """One answer per (job, problem, method): greedy, self-consistency or an ASC vote (f0..f3)."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("job_id", "problem_id", "method"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    problem_id: Mapped[int] = mapped_column(ForeignKey("problems.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), index=True)
    method: Mapped[str] = mapped_column(String(32))
    answer: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    vote_mass: Mapped[float | None] = mapped_column(Float)
    tie_size: Mapped[int] = mapped_column(default=1)
    credit: Mapped[float | None] = mapped_column(Float)
    # the winner's vote mass minus the best other answer's (0 on a tie; the whole mass when one answer got votes)
    margin: Mapped[float | None] = mapped_column(Float)
    # a tie's answers, a JSON list (null for the no-answer bucket), when tie_size > 1; null otherwise
    tied_answers: Mapped[str | None] = mapped_column(Text)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (UniqueConstraint("job_id", "method", "subject"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = job_fk()
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    method: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(64))
    n: Mapped[int]
    n_correct: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float] = mapped_column(Float)


# --- people in the loop ----------------------------------------------------------------------------


REVIEW_TARGETS = ("teacher_chains", "rationales", "problems")


class Review(Base):
    """A person's correction of one machine value (a chain's label, a rationale's keep decision, a problem's gold
    answer): rows are only added, never changed; an undo is a new review. The value in effect for a (target, id,
    field) is the `new_value` of its latest review, or the machine's own value when there is none or the latest
    one's `new_value` is NULL (back to the machine value). `machine_value` is what the machine said when the review
    was made, kept for the audit trail."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint(f"target_table IN ({', '.join(repr(t) for t in REVIEW_TARGETS)})", name="target_table"),
        Index("ix_reviews_target", "target_table", "target_id", "field", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    target_table: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[int]
    field: Mapped[str] = mapped_column(String(32))
    machine_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    undoes: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


SLICE_METRICS = ("accuracy", "n")  # accuracy: the mean credit of the slice's predictions; n: how many there are


class Slice(Base):
    """A filter over the predictions view saved under a name with its metric (`rplat slice add`): listed, and
    measured on any run. `predicate` is one condition over the view's columns, checked as `rplat export --where`
    checks it before it is stored; rows are written only by the CLI (the dashboard is read-only)."""

    __tablename__ = "slices"
    __table_args__ = (CheckConstraint(f"metric IN ({', '.join(repr(m) for m in SLICE_METRICS)})", name="metric"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    predicate: Mapped[str] = mapped_column(Text)
    metric: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class GenerationCache(Base):
    """Every generate/score call, keyed by (model fingerprint, prompt hash, sampling params, sample index)."""

    __tablename__ = "generation_cache"
    __table_args__ = (UniqueConstraint("model_fingerprint", "prompt_hash", "params_hash", "sample_index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    model_fingerprint: Mapped[str] = mapped_column(String(64))
    prompt_hash: Mapped[str] = mapped_column(String(64))
    params_hash: Mapped[str] = mapped_column(String(64))
    sample_index: Mapped[int]
    call: Mapped[str] = mapped_column(String(16))
    output_text: Mapped[str | None] = mapped_column(Text)
    token_logprobs: Mapped[list[Any] | None]
    token_ids: Mapped[list[Any] | None]
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
