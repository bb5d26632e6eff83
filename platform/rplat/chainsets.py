"""A chain set: the chains of one teacher on one problem dataset, and the one labeler whose verdicts are their labels.

Both labelers' verdicts are stored with every chain (`hendrycks_correct`, `math_verify_correct`), so choosing the
other labeler is an UPDATE from those columns, never a re-import: `rplat chains relabel`, a second `rplat import
chains` with the other `--labeler`, and a `collect-chains` job with the other `labeler` param all relabel the
whole set, each recorded as a job (`relabel-chains`, `import-chains`, `collect-chains`) with the labeler in its
params and the number relabelled in its result.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.methods.labelers import LABELERS
from rplat.models import Dataset, Problem, TeacherChain
from rplat.queue import Queue
from rplat.store import transaction


def chain_set(dataset_id: int, teacher: str) -> Any:
    """The SQL condition selecting the chains of `teacher` on the problems of the dataset."""
    return (TeacherChain.teacher == teacher) & TeacherChain.problem_id.in_(
        select(Problem.id).where(Problem.dataset_id == dataset_id))


def relabel(session: Session, dataset_id: int, teacher: str, labeler: str) -> int:
    """Set the label of every chain of `teacher` on the dataset not labelled by `labeler` yet to that labeler's
    stored verdict (one UPDATE); returns how many changed hands. A chain without that verdict stored cannot be."""
    if labeler not in LABELERS:
        raise ValueError(f"unknown labeler {labeler!r}; choose one of {', '.join(LABELERS)}")
    verdict = TeacherChain.hendrycks_correct if labeler == "hendrycks" else TeacherChain.math_verify_correct
    others = chain_set(dataset_id, teacher) & TeacherChain.labeler.is_distinct_from(labeler)
    missing = session.scalar(select(func.count()).select_from(TeacherChain).where(others, verdict.is_(None)))
    if missing:
        raise UserError(f"{missing} chains of teacher {teacher!r} have no stored {labeler} verdict, so they cannot "
                        f"be relabelled; re-import or re-collect them, or keep their labeler.")
    moved = session.execute(update(TeacherChain).where(others).values(
        label=case((verdict.is_(True), "pos"), else_="neg"), labeler=labeler).execution_options(
        synchronize_session=False))
    return int(moved.rowcount or 0)


def relabel_chains(engine: Engine, *, teacher: str, dataset: str, labeler: str) -> dict[str, Any]:
    """Make `labeler` the label of every chain of `teacher` on `dataset`, from the verdicts stored with them (no
    chain is judged again), in one transaction with a `relabel-chains` job that records it (the lineage of the
    labels a later training job reads). Returns a summary; relabelling to the labeler in use changes nothing but
    is still recorded."""
    if labeler not in LABELERS:
        raise UserError(f"--labeler {labeler!r} is not a labeler; choose one of {', '.join(LABELERS)}.")
    with transaction(engine) as session:
        ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
        if ds is None:
            raise UserError(f"dataset {dataset!r} does not exist; name the problem dataset the chains were imported "
                            "into (--dataset, default math-train).")
        if ds.kind != "problems":
            raise UserError(f"dataset {dataset!r} holds {ds.kind}, not problems; name the chains' problem dataset.")
        chains = chain_set(ds.id, teacher)
        before = dict(session.execute(select(TeacherChain.labeler, func.count()).where(chains)
                                      .group_by(TeacherChain.labeler)).all())
        if not before:
            teachers = session.scalars(select(TeacherChain.teacher).join(Problem, Problem.id == TeacherChain.problem_id)
                                       .where(Problem.dataset_id == ds.id).distinct().order_by(TeacherChain.teacher)
                                       ).all()
            raise UserError(f"dataset {dataset!r} holds no chains of teacher {teacher!r}"
                            + (f" (its teachers: {', '.join(teachers)})" if teachers else " (it holds no chains)")
                            + "; check --teacher and --dataset.")
        relabelled = relabel(session, ds.id, teacher, labeler)
        labels = dict(session.execute(select(TeacherChain.label, func.count()).where(chains)
                                      .group_by(TeacherChain.label)).all())
        result = {"teacher": teacher, "dataset": dataset, "labeler": labeler, "chains": sum(before.values()),
                  "relabelled": relabelled, "labelers_before": dict(sorted(before.items())),
                  "positives": labels.get("pos", 0), "negatives": labels.get("neg", 0)}
        job_id = Queue.record_done(session, "relabel-chains", {"teacher": teacher, "dataset": dataset,
                                                               "labeler": labeler}, result, items=relabelled)
    return {**result, "job_id": job_id}


def relabel_line(summary: dict[str, Any]) -> str:
    """The one line `rplat chains relabel` prints."""
    return (f"relabelled {summary['relabelled']} of {summary['chains']} chains of teacher {summary['teacher']} on "
            f"dataset {summary['dataset']} by {summary['labeler']} ({summary['positives']} positive, "
            f"{summary['negatives']} negative; relabel job {summary['job_id']})")
