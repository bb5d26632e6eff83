"""References in job params: fields naming a dataset, model or job, checked when a job is enqueued.

A kind's Params mark such fields with `Ref` (`Annotated[str, Ref("dataset", kind="problems")]`) and the field
naming the model a job registers with `Makes`. `check` runs inside the enqueue transaction: every name must
resolve now, or (a model) be one a parent job will register, or be bundled (registered on first use); a named
job must be of the right kind and have succeeded or be a parent. It also gives the job its lineage: the model
it runs (`jobs.model_id`) and its main prompt template (`jobs.prompt_template_id`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rplat import kinds
from rplat.bundled import SMOLLM2
from rplat.errors import UserError
from rplat.models import Dataset, Job, JobDependency, Model
from rplat.prompts import TEMPLATES, ensure_template
from rplat.registry import BUNDLED_EMBEDDER

# Registered by the first job that uses them (converting SmolLM2 takes a while), so never at enqueue.
BUNDLED_MODELS = frozenset({SMOLLM2, BUNDLED_EMBEDDER})


@dataclass(frozen=True)
class Ref:
    """Marks a Params field (a name or id, a list of them, or None) as naming a stored dataset, model or job.

    kind: the dataset's kind (documents, problems) or the job's kind; None accepts any.
    primary: the job runs this model (`jobs.model_id`); on a job reference, the model that job ran.
    """

    target: Literal["dataset", "model", "job"]
    kind: str | None = None
    primary: bool = False


@dataclass(frozen=True)
class Makes:
    """Marks the Params field that names the model a job registers; `default` ({job_id}) when it is None."""

    default: str

    def name(self, value: str | None, job_id: int) -> str:
        return value or self.default.format(job_id=job_id)


@dataclass(frozen=True)
class Lineage:
    model_id: int | None
    prompt_template_id: int | None


@dataclass(frozen=True)
class _Ancestor:
    id: int
    kind: str
    params: dict[str, Any]


@functools.cache
def references(params_type: type[kinds.Params]) -> tuple[tuple[str, Ref], ...]:
    """The (field, Ref) pairs of a Params class, in field order."""
    return tuple((name, meta) for name, field in params_type.model_fields.items()
                 for meta in field.metadata if isinstance(meta, Ref))


def _primary(params_type: type[kinds.Params]) -> tuple[str, Ref] | None:
    return next(((name, ref) for name, ref in references(params_type) if ref.primary), None)


def has_primary(kind_name: str) -> bool:
    """Whether jobs of this kind run a model (a field marked `Ref(..., primary=True)`)."""
    return _primary(kinds.get(kind_name).params) is not None


def made_model(kind_name: str, params: dict[str, Any], job_id: int) -> str | None:
    """The registry name of the model a job of this kind registers when it succeeds, or None."""
    try:
        params_type = kinds.get(kind_name).params
    except UserError:  # import-* jobs and kinds of plugins this process lacks register no model
        return None
    for name, field in params_type.model_fields.items():
        for meta in field.metadata:
            if isinstance(meta, Makes):
                return meta.name(params.get(name), job_id)
    return None


def model_of(session: Session, kind_name: str, params: dict[str, Any]) -> int | None:
    """The id of the model a job runs, if it is registered (or the job it names has one) yet: the first primary
    field that is set (evaluate names a solve job or a sample job)."""
    for field, ref in references(kinds.get(kind_name).params):
        if not ref.primary or params.get(field) is None:
            continue
        value = params[field]
        if ref.target == "job":
            return session.scalar(select(Job.model_id).where(Job.id == value))
        return session.scalar(select(Model.id).where(Model.name == value))
    return None


def _ancestors(session: Session, after: list[int]) -> list[_Ancestor]:
    """Every job this one waits for: its parents, their parents, and so on."""
    seen: set[int] = set()
    frontier = list(set(after))
    while frontier:
        seen.update(frontier)
        above = session.scalars(select(JobDependency.depends_on_id).where(JobDependency.job_id.in_(frontier))).all()
        frontier = [a for a in set(above) if a not in seen]
    rows = session.execute(select(Job.id, Job.kind, Job.params).where(Job.id.in_(seen))).all() if seen else []
    return [_Ancestor(r.id, r.kind, r.params or {}) for r in rows]


def _where(kind_name: str, field: str) -> str:
    return f"parameter {field!r} of {kind_name}"


def _check_dataset(session: Session, kind_name: str, field: str, ref: Ref, name: Any) -> None:
    found = session.scalar(select(Dataset.kind).where(Dataset.name == name))
    want = ref.kind or "documents or problems"
    if found is None:
        command = f"rplat import {ref.kind or 'problems'} FILE --dataset {name}"
        raise UserError(f"{_where(kind_name, field)} names dataset {name!r}, which does not exist; import it with "
                        f"`{command}`.")
    if ref.kind is not None and found != ref.kind:
        raise UserError(f"{_where(kind_name, field)} names dataset {name!r}, which holds {found}, not {want}; "
                        f"name a {want} dataset.")


def _check_model(session: Session, kind_name: str, field: str, name: Any, ancestors: list[_Ancestor]) -> None:
    if name in BUNDLED_MODELS or session.scalar(select(Model.id).where(Model.name == name)) is not None:
        return
    if any(made_model(a.kind, a.params, a.id) == name for a in ancestors):
        return  # registered by a job this one waits for: resolved when it runs
    raise UserError(f"{_where(kind_name, field)} names model {name!r}, which is not registered (nor registered by a "
                    "job it runs --after); register it with `rplat models add` (see `rplat models ls`).")


def _check_job(session: Session, kind_name: str, field: str, ref: Ref, job_id: Any,
               ancestors: list[_Ancestor]) -> None:
    row = session.execute(select(Job.kind, Job.status).where(Job.id == job_id)).one_or_none()
    where = _where(kind_name, field)
    if row is None:
        raise UserError(f"{where} names job {job_id}, which does not exist; see `rplat jobs ls`.")
    if ref.kind is not None and row.kind != ref.kind:
        raise UserError(f"{where} names job {job_id} of kind {row.kind!r}, not a {ref.kind} job; see "
                        f"`rplat jobs ls --kind {ref.kind}`.")
    if row.status == "succeeded" or any(a.id == job_id for a in ancestors):
        return
    if row.status in ("queued", "running"):
        raise UserError(f"{where} names job {job_id}, which is still {row.status}; add --after {job_id} so this "
                        "job waits for its output.")
    raise UserError(f"{where} names job {job_id}, which {row.status}; retry it with `rplat jobs retry {job_id}` "
                    "or name another job.")


def _ensure_template(session: Session, name: str) -> int:
    try:
        with session.begin_nested():
            return ensure_template(session, TEMPLATES[name])
    except IntegrityError:  # another enqueue stored the same template between our look-up and our insert
        return ensure_template(session, TEMPLATES[name])


def check(session: Session, kind_name: str, params: dict[str, Any], after: list[int]) -> Lineage:
    """Check every reference in a job's validated params (one UserError sentence for the first bad one) and
    return the job's lineage, storing its prompt templates on first use; runs in the enqueue transaction."""
    kind = kinds.get(kind_name)
    ancestors = _ancestors(session, after)
    for field, ref in references(kind.params):
        value = params.get(field)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if ref.target == "dataset":
                _check_dataset(session, kind_name, field, ref, item)
            elif ref.target == "model":
                _check_model(session, kind_name, field, item, ancestors)
            else:
                _check_job(session, kind_name, field, ref, item, ancestors)
    template_ids = [_ensure_template(session, name) for name in kinds.parse(kind_name, params).prompt_templates()]
    return Lineage(model_of(session, kind_name, params), template_ids[0] if template_ids else None)
