"""Rows found by the names people type (experiments, datasets, job ids, chain sets); a miss is one sentence."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.models import Dataset, Experiment, Job, Problem, TeacherChain

P = TypeVar("P", bound=BaseModel)


def experiment_id(session: Session, name: str) -> int:
    found = session.scalar(select(Experiment.id).where(Experiment.name == name))
    if found is None:
        raise UserError(f"experiment {name!r} does not exist; create it with `rplat experiments add {name}` "
                        "or see `rplat experiments ls`.")
    return found


def dataset_id(session: Session, name: str, kind: str) -> int:
    """The id of the dataset `name`, which must hold `kind` (documents or problems)."""
    found = session.execute(select(Dataset.id, Dataset.kind).where(Dataset.name == name)).first()
    if found is None or found.kind != kind:
        raise UserError(f"there is no {kind} dataset named {name!r}; import it with "
                        f"`rplat import {kind} FILE --dataset {name}`.")
    return found.id


def job_of_kind(session: Session, job_id: int, kind: str, param: str = "job") -> Job:
    """Job `job_id`, which must be a `kind` job; `param` names where the id came from in the message."""
    job = session.get(Job, job_id)
    if job is None or job.kind != kind:
        raise UserError(f"{param} {job_id} is not a {kind} job; see `rplat jobs ls --kind {kind}`.")
    return job


def stored_params(session: Session, job_id: int, kind: str, schema: type[P], param: str, verb: str) -> P:
    """The stored params of job `job_id` (a `kind` job named by `param`), read as `schema`: a job enqueued by
    an older version whose params no longer validate is one sentence saying what to `verb` instead."""
    try:
        return schema.model_validate(job_of_kind(session, job_id, kind, param).params)
    except ValidationError as exc:
        raise UserError(f"{param} {job_id}'s stored params no longer fit kind {kind!r}: {exc.errors()[0]['msg']}; "
                        f"{verb} a {kind} job enqueued by this version.") from None


def chain_count(session: Session, teacher: str, dataset: str) -> int:
    """How many chains of `teacher` the problem dataset named `dataset` holds (0: no such chain set)."""
    return int(session.scalar(select(func.count()).select_from(TeacherChain)
                              .join(Problem, Problem.id == TeacherChain.problem_id)
                              .join(Dataset, Dataset.id == Problem.dataset_id)
                              .where(TeacherChain.teacher == teacher, Dataset.name == dataset)) or 0)


def teachers_on(session: Session, dataset: str) -> list[str]:
    """The teachers with chains on the problem dataset named `dataset`, in name order."""
    return list(session.scalars(select(TeacherChain.teacher).join(Problem, Problem.id == TeacherChain.problem_id)
                                .join(Dataset, Dataset.id == Problem.dataset_id).where(Dataset.name == dataset)
                                .distinct().order_by(TeacherChain.teacher)).all())
