"""`rplat explain`: where a stored row came from, through its job, model, prompt template, inputs.

A row leads to the job that wrote it (kind, params, experiment, status, and its parent jobs, recursively), to
the rows it was derived from (its foreign keys: a score's rationale, a rationale's extraction, a problem...),
to the models it names (each with its format, role, base, fingerprint, sha256 and the job that made it) and to
prompt templates (name, version, content hash, text). A job also leads to what its params reference (the
`Ref` fields of its kind: datasets, models, jobs). Each job and model is expanded once, where the walk meets it
first (depth first: the row's own job before its inputs); later mentions say `"repeated": true`.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from rplat import kinds, reviews
from rplat.errors import UserError
from rplat.models import Base, Dataset, Experiment, Job, JobDependency, Model, ModelParent, PromptTemplate
from rplat.references import references

# Foreign keys a lineage walk does not follow: the experiment is shown on the job; a runner is not an input.
_SKIP_TARGETS = {"experiments", "runners"}


def explainable() -> list[str]:
    """The tables whose rows have lineage: `jobs` and every table with a job_id."""
    return sorted(["jobs", *(t.name for t in Base.metadata.sorted_tables if "job_id" in t.c and "id" in t.c)])


def _table(name: str) -> Table:
    if name not in explainable():
        raise UserError(f"there is no table {name!r} with lineage to explain; the tables are: "
                        f"{', '.join(explainable())}.")
    return Base.metadata.tables[name]


class _Walk:
    """One explanation: each job and model is expanded once (a DAG of jobs can reach one parent many ways)."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.jobs: set[int] = set()
        self.models: set[int] = set()

    def row(self, table: Table, row_id: int) -> dict[str, Any]:
        values = self.s.execute(select(table).where(table.c.id == row_id)).mappings().one_or_none()
        if values is None:
            raise UserError(f"{table.name} has no row with id {row_id}; look one up with "
                            f"`rplat sql \"SELECT id FROM store.{table.name} LIMIT 10\"`.")
        node: dict[str, Any] = {"table": table.name, "id": row_id, "row": dict(values)}
        fks = sorted(table.foreign_keys, key=lambda fk: (fk.parent.name != "job_id", fk.parent.name))
        for fk in fks:
            column, target, value = fk.parent.name, fk.column.table.name, values[fk.parent.name]
            if value is None or target in _SKIP_TARGETS:
                continue
            if column == "job_id":
                node["job"] = self.job(value)
            elif target == "jobs":
                node.setdefault("jobs", {})[column] = self.job(value)
            elif target == "models":
                node.setdefault("models", {})[column] = self.model(value)
            elif target == "prompt_templates":
                node.setdefault("prompt_templates", {})[column] = self.template(value)
            else:
                node.setdefault("inputs", {})[column] = self.row(fk.column.table, value)  # type: ignore[arg-type]
        found = reviews.of_row(self.s, table.name, row_id)
        if found:
            node["reviews"] = [r.as_dict() for r in found]
        return node

    def job(self, job_id: int) -> dict[str, Any]:
        job = self.s.get(Job, job_id)
        if job is None:
            raise UserError(f"jobs has no row with id {job_id}; see `rplat jobs ls`.")
        head = {"id": job.id, "kind": job.kind, "status": job.status}
        if job.id in self.jobs:
            return {**head, "repeated": True}
        self.jobs.add(job.id)
        experiment = self.s.get(Experiment, job.experiment_id) if job.experiment_id else None
        node: dict[str, Any] = {
            **head, "experiment": experiment.name if experiment else None, "params": job.params,
            "attempts": job.attempts, "created_at": job.created_at, "started_at": job.started_at,
            "finished_at": job.finished_at, "error": job.error, "reviews_seen": job.reviews_seen,
            "model": self.model(job.model_id) if job.model_id else None,
            "prompt_template": self.template(job.prompt_template_id) if job.prompt_template_id else None,
        }
        parents = self.s.scalars(select(JobDependency.depends_on_id).where(JobDependency.job_id == job.id)
                                 .order_by(JobDependency.depends_on_id)).all()
        node["parents"] = [self.job(p) for p in parents]
        node["references"] = self._references(job)
        return node

    def _references(self, job: Job) -> dict[str, Any]:
        """What the job's params name: {field: {"dataset" | "model" | "job": node, or a list of them}}."""
        try:
            params_type = kinds.get(job.kind).params
        except UserError:  # import-* jobs, or a plugin kind this process does not know: params as stored
            return {}
        params = kinds.current_names(params_type, job.params or {})  # a job stored before a rename: its old names
        found: dict[str, Any] = {}
        for field, ref in references(params_type):
            value = params.get(field)
            if value is None:
                continue
            nodes = [self._reference(ref.target, item) for item in (value if isinstance(value, list) else [value])]
            found[field] = {ref.target: nodes if isinstance(value, list) else nodes[0]}
        return found

    def _reference(self, target: str, value: Any) -> dict[str, Any]:
        if target == "job":
            return self.job(value)
        if target == "model":
            model_id = self.s.scalar(select(Model.id).where(Model.name == value))
            return self.model(model_id) if model_id is not None else {"name": value, "registered": False}
        dataset = self.s.scalar(select(Dataset).where(Dataset.name == value))
        if dataset is None:
            return {"name": value, "exists": False}
        return {"id": dataset.id, "name": dataset.name, "kind": dataset.kind, "source": dataset.source,
                "made_by": self.job(dataset.job_id) if dataset.job_id else None}

    def model(self, model_id: int) -> dict[str, Any]:
        model = self.s.get(Model, model_id)
        if model is None:
            raise UserError(f"models has no row with id {model_id}; see `rplat models ls`.")
        head = {"id": model.id, "name": model.name}
        if model.id in self.models:
            return {**head, "repeated": True}
        self.models.add(model.id)
        relations = self.s.execute(select(ModelParent.relation, ModelParent.parent_id)
                                   .where(ModelParent.model_id == model.id).order_by(ModelParent.relation)).all()
        parents = [{"relation": relation, "model": self.model(parent)} for relation, parent in relations]
        return {**head, "format": model.format, "role": model.role, "path": model.path,
                "fingerprint": model.fingerprint, "sha256": model.sha256,
                "base": next((p["model"]["name"] for p in parents if p["relation"] == "base"), None),
                "made_by": self.job(model.job_id) if model.job_id else None, "parents": parents}

    def template(self, template_id: int) -> dict[str, Any]:
        template = self.s.get(PromptTemplate, template_id)
        if template is None:
            raise UserError(f"prompt_templates has no row with id {template_id}.")
        body = template.body or {}
        return {"id": template.id, "name": template.name, "version": template.version,
                "content_hash": template.content_hash, "text": body.get("system"), "fewshot": body.get("fewshot")}


def explain(session: Session, table: str, row_id: int) -> dict[str, Any]:
    """The lineage of one row as a tree of dicts (JSON-ready with `default=str`)."""
    walk = _Walk(session)
    if table == "jobs":
        return {"table": "jobs", "id": row_id, "job": walk.job(row_id)}
    if table == "models":
        if session.get(Model, row_id) is None:
            raise UserError(f"models has no row with id {row_id}; see `rplat models ls`.")
        return {"table": "models", "id": row_id, "model": walk.model(row_id)}
    return walk.row(_table(table), row_id)


# --- the tree for people --------------------------------------------------------------------------

_WIDTH = 60


def _short(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} values]"
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= _WIDTH else text[:_WIDTH - 1] + "…"


def _job_lines(node: dict[str, Any], depth: int, label: str) -> list[str]:
    pad = "  " * depth
    head = f"{pad}{label}job {node['id']}: {node['kind']}, {node['status']}"
    if node.get("repeated"):
        return [f"{head} (shown above)"]
    lines = [head + (f", experiment {node['experiment']}" if node.get("experiment") else "")]
    lines.append(f"{pad}  params: {json.dumps(node['params'], sort_keys=True, default=str)}")
    if node.get("error"):
        lines.append(f"{pad}  error: {_short(node['error'])}")
    if node.get("reviews_seen") is not None:
        seen = node["reviews_seen"]
        lines.append(f"{pad}  read reviewed values as of review #{seen}" if seen
                     else f"{pad}  read machine values only (no review existed yet)")
    if node.get("model"):
        lines += _model_lines(node["model"], depth + 1, "model ")
    if node.get("prompt_template"):
        lines += _template_lines(node["prompt_template"], depth + 1, "prompt ")
    for parent in node["parents"]:
        lines += _job_lines(parent, depth + 1, "after ")
    for field, ref in node["references"].items():
        ((target, found),) = ref.items()
        for item in found if isinstance(found, list) else [found]:
            if target == "job":
                lines += _job_lines(item, depth + 1, f"{field}: ")
            elif target == "model":
                lines += _model_lines(item, depth + 1, f"{field}: ")
            else:
                lines += _dataset_lines(item, depth + 1, f"{field}: ")
    return lines


def _dataset_lines(node: dict[str, Any], depth: int, label: str) -> list[str]:
    pad = "  " * depth
    if node.get("exists") is False:
        return [f"{pad}{label}dataset {node['name']} (no longer exists)"]
    lines = [f"{pad}{label}dataset {node['name']} ({node['kind']}, from {node['source']})"]
    if node.get("made_by"):
        lines += _job_lines(node["made_by"], depth + 1, "made by ")
    return lines


def _model_lines(node: dict[str, Any], depth: int, label: str) -> list[str]:
    pad = "  " * depth
    if node.get("repeated"):
        return [f"{pad}{label}{node['name']} (shown above)"]
    if node.get("registered") is False:
        return [f"{pad}{label}{node['name']} (not registered)"]
    role = f", role {node['role']}" if node.get("role") else ""
    lines = [f"{pad}{label}{node['name']} ({node['format']}{role}) fingerprint {node['fingerprint']}",
             f"{pad}  sha256 {node['sha256']}, at {node['path']}"]
    for parent in node["parents"]:
        lines += _model_lines(parent["model"], depth + 1, f"{parent['relation']}: ")
    if node.get("made_by"):
        lines += _job_lines(node["made_by"], depth + 1, "made by ")
    return lines


def _template_lines(node: dict[str, Any], depth: int, label: str) -> list[str]:
    pad = "  " * depth
    shots = f", {len(node['fewshot'])} few-shot pairs" if node.get("fewshot") else ""
    return [f"{pad}{label}{node['name']} v{node['version']}, content hash {node['content_hash']}{shots}",
            f"{pad}  {node['text']}"]


def render(tree: dict[str, Any]) -> str:
    """The explanation as an indented tree."""
    return "\n".join(_row_lines(tree, 0, ""))


def _row_lines(node: dict[str, Any], depth: int, label: str) -> list[str]:
    pad = "  " * depth
    if "job" in node and "row" not in node:
        return _job_lines(node["job"], depth, "")
    if "model" in node and "row" not in node:
        return _model_lines(node["model"], depth, "model ")
    skip = {"id", *node.get("inputs", {}), *node.get("models", {}), *node.get("prompt_templates", {}),
            *node.get("jobs", {}), "job_id"}
    fields = ", ".join(f"{k}={_short(v)}" for k, v in node["row"].items() if k not in skip and v is not None)
    lines = [f"{pad}{label}{node['table']} {node['id']}: {fields}"]
    for r in node.get("reviews", []):
        new = "the machine value" if r["new_value"] is None else r["new_value"]
        undo = f" (undoes #{r['undoes']})" if r["undoes"] else ""
        lines.append(f"{pad}  review #{r['id']}{undo}: {r['field']} {r['machine_value']} (machine) -> {new}, by "
                     f"{r['reviewer']} at {r['created_at']}: {_short(r['reason'])}")
    if "job" in node:
        lines += _job_lines(node["job"], depth + 1, "written by ")
    for column, model in node.get("models", {}).items():
        lines += _model_lines(model, depth + 1, f"{column}: ")
    for column, template in node.get("prompt_templates", {}).items():
        lines += _template_lines(template, depth + 1, f"{column}: ")
    for column, job in node.get("jobs", {}).items():
        lines += _job_lines(job, depth + 1, f"{column}: ")
    for column, row in node.get("inputs", {}).items():
        lines += _row_lines(row, depth + 1, f"{column}: ")
    return lines
