"""`evaluate`: one prediction per problem of a solve job or a sample job, and micro accuracy, stored.

Both paths judge the same way, and `aggregate` judges its greedy and sc rows with the same functions: a problem
with one chain (greedy, or one sampled chain) predicts that chain's answer; self-consistency votes over the
normalised answers of its chains through `rplat.methods.votes.self_consistency`. A solve job's answers are
checked against the gold answer with math-verify; a sample job's carry the label its job stored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rplat.asc import sample_answers
from rplat.errors import UserError
from rplat.lookup import stored_params
from rplat.methods.answers import is_correct
from rplat.methods.votes import OVERALL, Accuracy, Unanswered, micro_accuracy, self_consistency
from rplat.models import Evaluation, Prediction, Problem, Sample, SolveTrajectory
from rplat.registry import get_model
from rplat.reviews import problem_answer
from rplat.runners.evaluation.kinds import EvaluateParams
from rplat.runners.framework.context import JobContext
from rplat.runners.rationalyst.kinds import SolveParams
from rplat.runners.tdg.kinds import SampleParams
from rplat.store import insert_ignore


@dataclass(frozen=True)
class Judged:
    """One problem's prediction: the answer, its vote mass and tie size, the credit it earns (1, 0, or a
    tie's fraction of right answers), from a vote its margin over the best other answer and the tied answers
    (`rplat.methods.votes.tied_answers`: None for the no-answer bucket; empty when nothing voted)."""

    problem_id: int
    subject: str | None
    answer: str | None
    vote_mass: float
    tie_size: int
    credit: float
    margin: float | None = None
    tied: tuple[str | None, ...] = ()


def judge_chain(problem_id: int, subject: str | None, answer: str | None, correct: bool) -> Judged:
    """A problem's one chain: its answer with the whole (single) vote, right or wrong; its margin is that vote
    when it answered."""
    return Judged(problem_id, subject, answer, 1.0, 1, 1.0 if correct else 0.0, 1.0 if answer is not None else 0.0)


def judge_sc(groups: Mapping[int, Sequence[Any]], answers: Sequence[Sequence[str | None]],
             correct: Sequence[Sequence[bool]], unanswered: Unanswered = "drop") -> list[Judged]:
    """Self-consistency per problem of `groups` (rows with `subject`), over its chains' normalised `answers` and
    their `correct`ness, in the groups' order, the unanswered chains voting or dropped as `unanswered` says. A
    problem no chain answered counts as a tie of one."""
    return [Judged(problem_id, rows[0].subject, c.winner, c.mass, max(len(c.tied), 1), c.credit, c.margin, c.tied)
            for (problem_id, rows), c in zip(groups.items(), self_consistency(answers, correct, unanswered),
                                              strict=True)]


def judge_samples(method: str, groups: Mapping[int, Sequence[Any]], unanswered: Unanswered = "vote") -> list[Judged]:
    """Each problem's prediction from a sample job's samples (rows with `extracted_answer`, `correct` and
    `subject`, in sample_idx order): `sc` votes over their normalised answers, each as right as its stored label
    says (as aggregate's ASC votes read them: `rplat.asc.sample_answers`); greedy and sampled (n=1) take the one
    chain as it is."""
    if method == "sc":
        return judge_sc(groups, *sample_answers(groups), unanswered)
    return [judge_chain(problem_id, rows[0].subject, rows[0].extracted_answer, bool(rows[0].correct))
            for problem_id, rows in groups.items()]


def judge_trajectories(method: str, groups: Mapping[int, Sequence[Any]], unanswered: Unanswered = "drop"
                       ) -> list[Judged]:
    """Each problem's prediction from a solve job's trajectories (rows with `prediction`, `normalized_pred`, the
    gold `answer` and `subject`, in sample_idx order), every answer checked against the gold one: `sc` votes over
    the normalised predictions; the other methods solve once and take that prediction."""
    if method != "sc":
        return [judge_chain(problem_id, rows[0].subject, rows[0].prediction,
                            is_correct(rows[0].prediction, rows[0].answer)) for problem_id, rows in groups.items()]
    answers = [[r.normalized_pred for r in rows] for rows in groups.values()]
    correct = []
    for rows, row_answers in zip(groups.values(), answers, strict=True):
        # math-verify is slow: each distinct answer of a problem is checked once
        verdict = {a: is_correct(a, rows[0].answer) for a in set(row_answers) if a is not None}
        correct.append([verdict.get(a, False) for a in row_answers])
    return judge_sc(groups, answers, correct, unanswered)


def record_evaluations(ctx: JobContext, model_id: int | None, judged: Mapping[str, Iterable[Judged]]
                       ) -> dict[str, Accuracy]:
    """Store the predictions and evaluations (micro-averaged overall and per subject) of every method in
    `judged` in one transaction, idempotently; returns each method's overall accuracy."""
    predictions, evaluations, overall = [], [], {}
    for method, rows in judged.items():
        rows = list(rows)
        predictions += [dict(job_id=ctx.job_id, problem_id=j.problem_id, model_id=model_id, method=method,
                             answer=j.answer, correct=j.credit == 1.0, vote_mass=j.vote_mass, tie_size=j.tie_size,
                             credit=j.credit, margin=j.margin,
                             tied_answers=json.dumps(list(j.tied)) if len(j.tied) > 1 else None) for j in rows]
        accuracy = micro_accuracy([(j.subject, j.credit) for j in rows])
        evaluations += [dict(job_id=ctx.job_id, model_id=model_id, method=method, subject=subject, n=a.n,
                             n_correct=a.n_correct, accuracy=a.accuracy) for subject, a in accuracy.items()]
        overall[method] = accuracy.get(OVERALL, Accuracy(0, 0.0))
    with ctx.transaction() as s:
        insert_ignore(s, Prediction, predictions, ["job_id", "problem_id", "method"])
        insert_ignore(s, Evaluation, evaluations, ["job_id", "method", "subject"])
    return overall


def _by_problem(rows: Iterable[Any]) -> dict[int, list[Any]]:
    groups: dict[int, list[Any]] = {}
    for r in rows:
        groups.setdefault(r.problem_id, []).append(r)
    return groups


def _solve_job(s: Session, job_id: int, unanswered: Unanswered, through: int) -> tuple[int, str, list[Judged]]:
    """A solve job's model id, method and judged problems, each answer checked against the gold answer in effect
    as of review `through` (a corrected gold answer counts)."""
    solved = stored_params(s, job_id, "solve", SolveParams, "solve_job", "evaluate")
    model_id = get_model(s, solved.model).id
    rows = s.execute(select(SolveTrajectory.problem_id, SolveTrajectory.normalized_pred, SolveTrajectory.prediction,
                            problem_answer(through).label("answer"), Problem.subject)
                     .join(Problem, Problem.id == SolveTrajectory.problem_id)
                     .where(SolveTrajectory.job_id == job_id)
                     .order_by(SolveTrajectory.problem_id, SolveTrajectory.sample_idx)).all()
    return model_id, solved.method, judge_trajectories(solved.method, _by_problem(rows), unanswered)


def _sample_job(s: Session, job_id: int, unanswered: Unanswered) -> tuple[int, str, list[Judged]]:
    """A sample job's model id, method (sc for n > 1 samples, else greedy or sampled) and judged problems."""
    sampled = stored_params(s, job_id, "sample", SampleParams, "sample_job", "evaluate")
    model_id = get_model(s, sampled.model).id
    rows = s.execute(select(Sample.problem_id, Sample.extracted_answer, Sample.correct, Problem.subject)
                     .join(Problem, Problem.id == Sample.problem_id)
                     .where(Sample.job_id == job_id)
                     .order_by(Sample.problem_id, Sample.sample_idx)).all()
    if not rows:
        raise UserError(f"sample job {job_id} has no samples; run it to the end before evaluating it "
                        "(`rplat jobs show` tells its state).")
    method = "sc" if sampled.n_samples > 1 else "greedy" if sampled.temperature <= 0 else "sampled"
    return model_id, method, judge_samples(method, _by_problem(rows), unanswered)


def evaluate(ctx: JobContext, p: EvaluateParams) -> dict[str, Any]:
    """Predictions and micro accuracy (overall and per subject) of the solve or sample job `p` names."""
    unanswered = p.unanswered
    assert unanswered is not None  # EvaluateParams resolves it to the kind's protocol
    through = ctx.reviews_seen()
    with ctx.read() as s:
        if p.solve_job is not None:
            source, job_id = "solve_job", p.solve_job
            model_id, method, judged = _solve_job(s, job_id, unanswered, through)
        else:
            assert p.sample_job is not None  # EvaluateParams names exactly one of the two
            source, job_id = "sample_job", p.sample_job
            model_id, method, judged = _sample_job(s, job_id, unanswered)
    # evaluate has always stored predictions without margins (aggregate's carry them); kept so its rows do not change
    judged = [dataclasses.replace(j, margin=None) for j in judged]
    overall = record_evaluations(ctx, model_id, {method: judged})[method]
    return {"method": method, source: job_id, "unanswered": unanswered, "problems": overall.n,
            "accuracy": overall.accuracy}
