"""References in job params: fields naming a dataset, model, job or chain set, checked when a job is enqueued.

A kind's Params mark such fields with `Ref` (`Annotated[str, Ref("dataset", kind="problems")]`), the field naming
the model a job registers with `Makes` and the field naming the chain set a job stores with `MakesChains`.
`check` runs inside the enqueue transaction (`rplat enqueue`, `--params-file`, `--params-jsonl` and pipelines
alike): every name must resolve now, or (a model, a chain set) be one a parent job will make, or (a model) be
bundled (registered on first use); a model must be of the format (and role) the field takes; a named job must be
of the right kind, have succeeded or be a parent, and belong with the other jobs and values this job names. It
also gives the job its lineage: the model it runs (`jobs.model_id`) and its main prompt template
(`jobs.prompt_template_id`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rplat import kinds
from rplat.boundary import check_id, check_name
from rplat.bundled import SMOLLM2
from rplat.errors import UserError
from rplat.lookup import chain_count, teachers_on
from rplat.models import Dataset, Job, JobDependency, Model
from rplat.prompts import TEMPLATES, ensure_template
from rplat.registry import BUNDLED_EMBEDDER

# Registered by the first job that uses them (converting SmolLM2 takes a while), so never at enqueue: their
# (format, role) is known without the row.
BUNDLED_MODELS: dict[str, tuple[str, str]] = {SMOLLM2: ("base", "agent"), BUNDLED_EMBEDDER: ("embedding", "prefilter")}

# A causal language model: a base model, or an adapter (LoRA, NAT layer) on one; what generates and scores text.
CAUSAL_LM = ("base", "lora", "nat")
FORMAT_NAMES = {"base": "a causal LM", "lora": "a LoRA adapter", "nat": "a NAT model",
                "embedding": "an embedding model", "ranker": "a ranker"}


def _or(items: Sequence[str]) -> str:
    """"a", "a or b", "a, b or c"."""
    return ", ".join(items[:-1]) + " or " + items[-1] if len(items) > 1 else items[0]


def _format_name(fmt: str) -> str:
    return FORMAT_NAMES.get(fmt, f"a {fmt} model")


@dataclass(frozen=True)
class Need:
    """A condition on a named job's params (`Need("n_samples", ">", 1)`): the job must have that value."""

    field: str
    op: Literal["==", ">"]
    value: Any

    def holds(self, params: Mapping[str, Any]) -> bool:
        have = params.get(self.field)
        return have is not None and {"==": operator.eq, ">": operator.gt}[self.op](have, self.value)

    def __str__(self) -> str:
        return f"{self.field} {self.op} {self.value!r}"


@dataclass(frozen=True)
class Ref:
    """Marks a Params field (a name or id, a list of them, or None) as naming a stored dataset, model, job or
    chain set.

    kind: the dataset's kind (documents, problems) or the job's kind; None accepts any.
    primary: the job runs this model (`jobs.model_id`); on a job reference, the model that job ran.
    formats / roles (a model): the formats (`models.format`, e.g. `CAUSAL_LM`) it must have, and the roles
    (`models.role`) it must have when it has one (roles are free text, so a model registered without one passes);
    empty: any.
    of (a job): this job's field whose value the named job's params hold under the same name: the named job
    belongs to it (`Ref("job", kind="score-samples", of="sample_job")`: a score of THIS job's sample job).
    like, alike (a job): the named job's params equal, in the fields `alike`, those of the job this job's field
    `like` names (a greedy sample job of the same model as the sampled one).
    needs (a job): conditions on the named job's params (`Need("n_samples", ">", 1)`).
    dataset (a chain set): the field naming the problem dataset the chains are on; the field itself names the
    teacher (`teacher_chains.teacher`).
    """

    target: Literal["dataset", "model", "job", "chains"]
    kind: str | None = None
    primary: bool = False
    formats: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    of: str | None = None
    like: str | None = None
    alike: tuple[str, ...] = ()
    needs: tuple[Need, ...] = ()
    dataset: str | None = None

    def what(self) -> str:
        """What a model this field names must be, in words ("a LoRA adapter (format lora, role neg)")."""
        if set(self.formats) == set(CAUSAL_LM):
            said = "a causal LM or an adapter on one"
        else:
            said = _or([_format_name(f) for f in self.formats])
        return f"{said} (format {_or(self.formats)}" + (f", role {_or(self.roles)}" if self.roles else "") + ")"


@dataclass(frozen=True)
class Makes:
    """Marks the Params field that names the model a job registers; `default` ({job_id}) when it is None.

    format, role: what the model will be (`models.format`, `models.role`), so a job that runs --after this one
    can be checked against it; `format` may depend on the params (a function of the stored params)."""

    default: str
    format: str | Callable[[Mapping[str, Any]], str]
    role: str | None = None

    def name(self, value: str | None, job_id: int) -> str:
        return value or self.default.format(job_id=job_id)

    def format_of(self, params: Mapping[str, Any]) -> str:
        return self.format(params) if callable(self.format) else self.format


@dataclass(frozen=True)
class MakesChains:
    """Marks the Params field naming the chain set (teacher) a job stores chains under: on the problem dataset its
    field `dataset` names, under the value of its field `default` when this one is None."""

    dataset: str
    default: str

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


def _marked(params_type: type[kinds.Params], mark: type[Any]) -> tuple[str, Any] | None:
    """The first (field, marker) of a Params class whose field carries a marker of type `mark`."""
    return next(((name, meta) for name, field in params_type.model_fields.items()
                 for meta in field.metadata if isinstance(meta, mark)), None)


def _params_type(kind_name: str) -> type[kinds.Params] | None:
    try:
        return kinds.get(kind_name).params
    except UserError:  # import-* jobs and kinds of plugins this process lacks make nothing we know of
        return None


def ref_of(kind_name: str, field: str) -> Ref:
    """The `Ref` of a kind's field (a pipeline checks its own options against the field they fill)."""
    return next(ref for name, ref in references(kinds.get(kind_name).params) if name == field)


@dataclass(frozen=True)
class Made:
    """The model a job registers when it succeeds: its registry name, format and role."""

    name: str
    format: str
    role: str | None


def made(kind_name: str, params: Mapping[str, Any], job_id: int) -> Made | None:
    """The model a job of this kind registers when it succeeds (name, format, role), or None."""
    params_type = _params_type(kind_name)
    marked = _marked(params_type, Makes) if params_type is not None else None
    if marked is None:
        return None
    field, makes = marked
    return Made(makes.name(params.get(field), job_id), makes.format_of(params), makes.role)


def made_model(kind_name: str, params: dict[str, Any], job_id: int) -> str | None:
    """The registry name of the model a job of this kind registers when it succeeds, or None."""
    found = made(kind_name, params, job_id)
    return found.name if found is not None else None


def made_chains(kind_name: str, params: Mapping[str, Any]) -> tuple[str, str] | None:
    """(teacher, problem dataset) of the chain set a job of this kind stores, or None."""
    params_type = _params_type(kind_name)
    marked = _marked(params_type, MakesChains) if params_type is not None else None
    if marked is None:
        return None
    field, makes = marked
    return params.get(field) or params.get(makes.default), params.get(makes.dataset)


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


def _makers(ref: Ref) -> list[str]:
    """The kinds whose jobs register a model this field takes (to say how to make one)."""
    found = []
    for kind in kinds.all_kinds().values():
        marked = _marked(kind.params, Makes)
        if marked is None:
            continue
        makes = marked[1]
        fmt = makes.format if isinstance(makes.format, str) else None
        if fmt in ref.formats and (not ref.roles or makes.role in ref.roles):
            found.append(kind.name)
    return found


def check_model(session: Session, where: str, ref: Ref, name: Any, ancestors: Sequence[_Ancestor] = ()) -> None:
    """Check that model `name` exists (or is bundled, or a job in `ancestors` registers it) and is what `ref`
    says it must be; `where` names what named it in the sentence ("parameter 'model' of sample", "--student")."""
    facts: tuple[str, str | None] | None = None
    whose = ""
    row = session.execute(select(Model.format, Model.role).where(Model.name == name)).one_or_none()
    if row is not None:
        facts, whose = (row.format, row.role), "registered"
    elif name in BUNDLED_MODELS:
        facts, whose = BUNDLED_MODELS[name], "bundled"
    else:
        for a in ancestors:
            will = made(a.kind, a.params, a.id)
            if will is not None and will.name == name:
                facts, whose = (will.format, will.role), f"that job {a.id} ({a.kind}) registers"
                break
    if facts is None:
        raise UserError(f"{where} names model {name!r}, which is not registered (nor registered by a job it runs "
                        "--after); register it with `rplat models add` (see `rplat models ls`).")
    fmt, role = facts
    fits = (not ref.formats or fmt in ref.formats) and (not ref.roles or role is None or role in ref.roles)
    if fits:
        return
    makers = _makers(ref)
    fix = (f"name the result of a {_or(makers)} job" if makers and "base" not in ref.formats
           else "name another model")
    raise UserError(f"{where} names model {name!r}, {_format_name(fmt)} ({whose}: format {fmt}"
                    + (f", role {role}" if role is not None else "") + f"), not {ref.what()}; {fix} "
                    "(see `rplat models ls`; `rplat models add` registers one).")


def _stored(kind_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A stored job's params as its kind reads them: current names, defaults filled in (an older job's may use old
    names or lack a newer parameter); as stored where they no longer validate."""
    params_type = _params_type(kind_name)
    if params_type is None:
        return dict(params)
    try:
        return params_type.model_validate(dict(params)).model_dump(mode="json")
    except ValidationError:
        try:
            return kinds.current_names(params_type, dict(params))
        except ValueError:
            return dict(params)


def _check_job(session: Session, kind_name: str, field: str, ref: Ref, job_id: Any, params: Mapping[str, Any],
               ancestors: list[_Ancestor]) -> None:
    row = session.execute(select(Job.kind, Job.status, Job.params).where(Job.id == job_id)).one_or_none()
    where = _where(kind_name, field)
    if row is None:
        raise UserError(f"{where} names job {job_id}, which does not exist; see `rplat jobs ls`.")
    if ref.kind is not None and row.kind != ref.kind:
        raise UserError(f"{where} names job {job_id} of kind {row.kind!r}, not a {ref.kind} job; see "
                        f"`rplat jobs ls --kind {ref.kind}`.")
    if row.status != "succeeded" and not any(a.id == job_id for a in ancestors):
        if row.status in ("queued", "running"):
            raise UserError(f"{where} names job {job_id}, which is still {row.status}; add --after {job_id} so "
                            "this job waits for its output.")
        raise UserError(f"{where} names job {job_id}, which {row.status}; retry it with `rplat jobs retry "
                        f"{job_id}` or name another job.")
    _check_belongs(session, where, ref, job_id, row.kind, _stored(row.kind, row.params or {}), params)


def _check_belongs(session: Session, where: str, ref: Ref, job_id: int, job_kind: str, theirs: Mapping[str, Any],
                   ours: Mapping[str, Any]) -> None:
    """The named job (`theirs`: its params) belongs with what this job (`ours`) names: `of`, `like`, `needs`."""
    named = f"{where} names {job_kind} job {job_id}"
    listing = f"see `rplat jobs ls --kind {job_kind}`"
    if ref.of is not None and ours.get(ref.of) is not None and theirs.get(ref.of) != ours[ref.of]:
        raise UserError(f"{named}, whose {ref.of} is {theirs.get(ref.of)!r}, not this job's {ref.of} "
                        f"{ours[ref.of]!r}; name a {job_kind} job of {ref.of} {ours[ref.of]!r} ({listing}).")
    if ref.like is not None and ours.get(ref.like) is not None:
        model_row = session.execute(select(Job.kind, Job.params).where(Job.id == ours[ref.like])).one_or_none()
        like = _stored(model_row.kind, model_row.params or {}) if model_row is not None else {}
        for name in ref.alike:
            if theirs.get(name) != like.get(name):
                raise UserError(f"{named}, whose {name} is {theirs.get(name)!r}, not {like.get(name)!r} like job "
                                f"{ours[ref.like]} (this job's {ref.like}); name a {job_kind} job of {name} "
                                f"{like.get(name)!r} ({listing}).")
    for need in ref.needs:
        if not need.holds(theirs):
            raise UserError(f"{named}, whose {need.field} is {theirs.get(need.field)!r}, not {need.op} "
                            f"{need.value!r}; name a {job_kind} job with {need} ({listing}).")


def unmet(ref: Ref, params: Mapping[str, Any]) -> Need | None:
    """The first of `ref.needs` that a job with `params` would not meet (a pipeline checks the job it is about
    to make against the field that will name it), or None."""
    return next((need for need in ref.needs if not need.holds(params)), None)


def _check_chains(session: Session, kind_name: str, field: str, ref: Ref, teacher: Any, params: Mapping[str, Any],
                  ancestors: list[_Ancestor]) -> None:
    assert ref.dataset is not None, f"{kind_name}.{field}: a chain set reference names its dataset field"
    dataset = params.get(ref.dataset)
    if chain_count(session, teacher, dataset):
        return
    if any(made_chains(a.kind, a.params) == (teacher, dataset) for a in ancestors):
        return  # collected by a job this one waits for
    stored = teachers_on(session, dataset)
    raise UserError(f"{_where(kind_name, field)} names chain set {teacher!r}, which has no chains on dataset "
                    f"{dataset!r} (" + (f"its teachers: {', '.join(stored)}" if stored else "it holds no chains")
                    + "; nor does a job it runs --after collect them); import them with `rplat import chains FILE "
                    f"--teacher {teacher} --dataset {dataset}` or collect them with a collect-chains job.")


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
    for name, field in kind.params.model_fields.items():  # the model it registers becomes a directory
        if isinstance(params.get(name), str) and any(isinstance(meta, Makes) for meta in field.metadata):
            check_name(params[name], f"{_where(kind_name, name)}:")
    ancestors = _ancestors(session, after)
    for field, ref in references(kind.params):
        value = params.get(field)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if ref.target == "job" and isinstance(item, int):
                check_id(item, _where(kind_name, field))
            if ref.target == "dataset":
                _check_dataset(session, kind_name, field, ref, item)
            elif ref.target == "model":
                check_model(session, _where(kind_name, field), ref, item, ancestors)
            elif ref.target == "chains":
                _check_chains(session, kind_name, field, ref, item, params, ancestors)
            else:
                _check_job(session, kind_name, field, ref, item, params, ancestors)
    template_ids = [_ensure_template(session, name) for name in kinds.parse(kind_name, params).prompt_templates()]
    return Lineage(model_of(session, kind_name, params), template_ids[0] if template_ids else None)
