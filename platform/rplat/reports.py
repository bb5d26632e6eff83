"""Summaries of finished jobs for people (the CLI's `rplat report ...`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from rplat.errors import UserError
from rplat.lookup import experiment_id, job_of_kind
from rplat.models import Document, Job, PrefilterScore
from rplat.store import transaction


def _latest_job(session: Any, kind: str, job_id: int | None, experiment: str | None) -> Job:
    if job_id is not None:
        return job_of_kind(session, job_id, kind)
    q = select(Job).where(Job.kind == kind).order_by(Job.id.desc()).limit(1)
    if experiment is not None:
        q = q.where(Job.experiment_id == experiment_id(session, experiment))
    job = session.scalar(q)
    if job is None:
        raise UserError(f"there is no {kind} job yet; enqueue one with `rplat enqueue {kind} ...`.")
    return job


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def prefilter_report(engine: Engine, *, job_id: int | None = None, experiment: str | None = None,
                     examples: int = 3) -> dict[str, Any]:
    """Counts and cosine quantiles over all of a job's scores; document texts only for the `examples` shown."""
    with transaction(engine) as session:
        job = _latest_job(session, "prefilter", job_id, experiment)
        of_job = PrefilterScore.job_id == job.id
        scores = session.execute(
            select(PrefilterScore.cosine, PrefilterScore.passed).where(of_job).order_by(PrefilterScore.cosine)
        ).all()

        def ends(order: Any) -> list[dict[str, Any]]:
            if not examples:
                return []
            rows = session.execute(
                select(PrefilterScore.cosine, PrefilterScore.passed, Document.external_id, Document.text)
                .join(Document, Document.id == PrefilterScore.document_id)
                .where(of_job).order_by(order, PrefilterScore.document_id).limit(examples)
            ).all()
            return [_document_example(r) for r in rows]

        closest, farthest = ends(PrefilterScore.cosine.desc()), ends(PrefilterScore.cosine.asc())
    cosines = [r.cosine for r in scores]
    return {
        "job_id": job.id,
        "status": job.status,
        "threshold": job.params.get("threshold"),
        "max_chars": job.params.get("max_chars"),
        "scored": len(scores),
        "passed": sum(1 for r in scores if r.passed),
        "cosine_quantiles": {name: _quantile(cosines, q) for name, q in
                             (("min", 0.0), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("max", 1.0))},
        "closest": closest,
        "farthest": farthest,
    }


def _document_example(r: Any) -> dict[str, Any]:
    snippet = " ".join(r.text.split())
    return {"external_id": r.external_id, "cosine": r.cosine, "passed": r.passed,
            "snippet": snippet[:100] + ("..." if len(snippet) > 100 else "")}


def rationalyst_report(engine: Engine, *, experiment: str | None = None) -> dict[str, Any]:
    """Accuracy of every evaluated solve method (latest evaluation per method) and the mining funnel's counts."""
    from sqlalchemy import func

    from rplat.models import Evaluation, Extraction, PrefilterScore, Rationale, RationaleScore, TrainingMetric

    with transaction(engine) as session:
        job_filter = []
        if experiment is not None:
            job_filter = [Job.experiment_id == experiment_id(session, experiment)]

        def count(model: Any, *where: Any) -> int:
            return session.scalar(select(func.count()).select_from(model).join(Job, Job.id == model.job_id)
                                  .where(*job_filter, *where)) or 0

        funnel = {
            "prefilter_passed": count(PrefilterScore, PrefilterScore.passed.is_(True)),
            "extractions": count(Extraction),
            "passed_fidelity": count(Extraction, Extraction.passed.is_(True)),
            "rationales": count(Rationale),
            "kept": count(RationaleScore, RationaleScore.kept.is_(True)),
            "train_steps": count(TrainingMetric),
        }
        rows = session.execute(select(Evaluation, Job.params).join(Job, Job.id == Evaluation.job_id)
                               .where(*job_filter, Job.kind == "evaluate").order_by(Evaluation.job_id)).all()
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for ev, params in rows:
        latest[(ev.method, ev.subject)] = {"method": ev.method, "subject": ev.subject, "n": ev.n,
                                           "correct": round(ev.n_correct, 2), "accuracy": round(ev.accuracy, 4),
                                           "evaluate_job": ev.job_id, "solve_job": params.get("solve_job")}
    results = sorted(latest.values(), key=lambda r: (r["subject"] != "all", r["subject"], r["method"]))
    return {"experiment": experiment, "funnel": funnel, "results": results}
