"""What both `evaluate` paths (solve jobs, sample jobs) write: one prediction per problem, micro accuracy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rplat.methods.votes import OVERALL, Accuracy, micro_accuracy
from rplat.models import Evaluation, Prediction
from rplat.runners.framework.context import JobContext
from rplat.store import insert_ignore


@dataclass(frozen=True)
class Judged:
    """One problem's prediction: the answer, its vote mass and tie size, the credit it earns (1, 0, or a
    tie's fraction of right answers) and, from a vote, its margin over the best other answer."""

    problem_id: int
    subject: str | None
    answer: str | None
    vote_mass: float
    tie_size: int
    credit: float
    margin: float | None = None


def record_evaluations(ctx: JobContext, model_id: int | None, judged: Mapping[str, Iterable[Judged]]
                       ) -> dict[str, Accuracy]:
    """Store the predictions and evaluations (micro-averaged overall and per subject) of every method in
    `judged` in one transaction, idempotently; returns each method's overall accuracy."""
    predictions, evaluations, overall = [], [], {}
    for method, rows in judged.items():
        rows = list(rows)
        predictions += [dict(job_id=ctx.job_id, problem_id=j.problem_id, model_id=model_id, method=method,
                             answer=j.answer, correct=j.credit == 1.0, vote_mass=j.vote_mass, tie_size=j.tie_size,
                             credit=j.credit, margin=j.margin) for j in rows]
        accuracy = micro_accuracy([(j.subject, j.credit) for j in rows])
        evaluations += [dict(job_id=ctx.job_id, model_id=model_id, method=method, subject=subject, n=a.n,
                             n_correct=a.n_correct, accuracy=a.accuracy) for subject, a in accuracy.items()]
        overall[method] = accuracy.get(OVERALL, Accuracy(0, 0.0))
    with ctx.transaction() as s:
        insert_ignore(s, Prediction, predictions, ["job_id", "problem_id", "method"])
        insert_ignore(s, Evaluation, evaluations, ["job_id", "method", "subject"])
    return overall


def record_evaluation(ctx: JobContext, model_id: int | None, method: str, judged: Iterable[Judged]) -> Accuracy:
    """`record_evaluations` of one method; returns its overall accuracy."""
    return record_evaluations(ctx, model_id, {method: judged})[method]
