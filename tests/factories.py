"""Rows for tests to stand on, written in a session the way the platform's jobs write them, without running any.

Every row that a job makes carries that job's id: a problem its dataset's, a chain or sample the job given, a
rationale its extraction's. Each function adds its row(s) and flushes, so ids exist at once and follow the
order of the calls.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from rplat.models import (
    Dataset,
    Document,
    Evaluation,
    Experiment,
    Extraction,
    Job,
    Model,
    Prediction,
    Problem,
    Rationale,
    Sample,
    TeacherChain,
)

Row = TypeVar("Row")


def _added(s: Session, row: Row) -> Row:
    s.add(row)
    s.flush()
    return row


def experiment(s: Session, name: str) -> Experiment:
    return _added(s, Experiment(name=name))


def job(s: Session, kind: str, params: dict[str, Any] | None = None, *, experiment: Experiment | None = None,
        model: Model | None = None, status: str = "succeeded", **columns: Any) -> Job:
    """A job of `kind` that already ran (succeeded, unless `status` says otherwise); `columns` sets any other of its
    columns (attempts, times, lease_owner, error, ...)."""
    return _added(s, Job(kind=kind, params=params or {}, status=status,
                         experiment_id=experiment.id if experiment else None, model_id=model.id if model else None,
                         **columns))


def dataset(s: Session, name: str, job: Job, kind: str = "problems") -> Dataset:
    return _added(s, Dataset(name=name, kind=kind, job_id=job.id))


def problems(s: Session, dataset: Dataset, rows: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """One problem of the dataset (made by its job) per row of Problem columns, which must include `external_id`
    and `question`; the content hash is the external id unless the row gives one."""
    made = [Problem(dataset_id=dataset.id, job_id=dataset.job_id, **{"content_hash": row["external_id"], **row})
            for row in rows]
    s.add_all(made)
    s.flush()
    return made


def documents(s: Session, dataset: Dataset, texts: Mapping[str, str], **columns: Any) -> list[Document]:
    """One document of the dataset (made by its job) per external id -> text, each with `columns`."""
    made = [Document(dataset_id=dataset.id, job_id=dataset.job_id, external_id=external_id, text=text,
                     n_chars=len(text), content_hash=external_id, **columns) for external_id, text in texts.items()]
    s.add_all(made)
    s.flush()
    return made


def model(s: Session, name: str, format: str = "base", *, job: Job | None = None, **columns: Any) -> Model:
    """A registered model without files (nothing loads it); its fingerprint is a digest of its name."""
    return _added(s, Model(name=name, format=format, fingerprint=hashlib.sha256(name.encode()).hexdigest(),
                           job_id=job.id if job else None, **columns))


def chain(s: Session, problem: Problem, teacher: str, text: str, label: str, *, sample_idx: int = 0,
          job: Job | None = None, **columns: Any) -> TeacherChain:
    """A chain of `teacher` for the problem, made by `job` (default: the job that imported the problem)."""
    return _added(s, TeacherChain(job_id=job.id if job else problem.job_id, problem_id=problem.id,
                                  teacher=teacher, sample_idx=sample_idx, text=text, label=label, n_chars=len(text),
                                  **columns))


def sample(s: Session, job: Job, problem: Problem, model: Model, text: str, *, sample_idx: int,
           decoding: str = "sampled", **columns: Any) -> Sample:
    return _added(s, Sample(job_id=job.id, problem_id=problem.id, model_id=model.id, sample_idx=sample_idx,
                            decoding=decoding, text=text, **columns))


def extraction(s: Session, job: Job, model: Model, template_id: int, input_text: str, raw_output: str, *,
               problem: Problem | None = None, document: Document | None = None, fidelity: float | None = 1.0
               ) -> Extraction:
    """A passed extraction at temperature 0 of a problem, a document, or neither."""
    return _added(s, Extraction(job_id=job.id, problem_id=problem.id if problem else None,
                                document_id=document.id if document else None, model_id=model.id,
                                prompt_template_id=template_id, temperature=0.0, input_text=input_text,
                                raw_output=raw_output, fidelity=fidelity, passed=True))


def rationale(s: Session, extraction: Extraction, preceding: str, text: str, following: str, *, position: int = 1,
              left_step: int = 1, source: str | None = None) -> Rationale:
    """A rationale the extraction's job found between `preceding` and `following`."""
    return _added(s, Rationale(job_id=extraction.job_id, extraction_id=extraction.id, position=position,
                               preceding=preceding, rationale=text, following=following, left_step=left_step,
                               source=source))


def prediction(s: Session, job: Job, problem: Problem, model: Model | None, method: str, answer: str | None,
               credit: float, **columns: Any) -> Prediction:
    """A prediction with its credit; right exactly when the credit is whole (a tie shares it out)."""
    return _added(s, Prediction(job_id=job.id, problem_id=problem.id, model_id=model.id if model else None,
                                method=method, answer=answer, correct=credit == 1.0, credit=credit, **columns))


def evaluation(s: Session, job: Job, model: Model | None, method: str, subject: str, credits: Sequence[float]
               ) -> Evaluation:
    """The accuracy over `subject` of problems earning `credits`."""
    return _added(s, Evaluation(job_id=job.id, model_id=model.id if model else None, method=method, subject=subject,
                                n=len(credits), n_correct=sum(credits), accuracy=sum(credits) / len(credits)))


def evaluations(s: Session, job: Job, model: Model | None, method: str, credits: Mapping[Problem, float]
                ) -> list[Evaluation]:
    """The accuracies an evaluation records from per-problem credits: over all problems, then per subject (a
    problem without a subject counts in `all` only)."""
    by_subject: dict[str, list[float]] = {"all": list(credits.values())}
    for problem, credit in credits.items():
        if problem.subject is not None:
            by_subject.setdefault(problem.subject, []).append(credit)
    return [evaluation(s, job, model, method, subject, values) for subject, values in by_subject.items()]
