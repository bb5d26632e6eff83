"""`aggregate` (TDG B4/B6): greedy, self-consistency and the four ASC votes per problem, stored.

Greedy and sc are judged as `evaluate` judges a sample job (`rplat.runners.evaluation.evaluate`); the ASC votes
are `rplat.methods.votes.asc_votes` over every problem at once, on the same normalised answers, each sample
weighted by its ranker score from the score-samples job, ties kept (credit = the tied answers' share of right
ones). All methods are written in one transaction, insert-ignore, so a re-run writes nothing new.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from rplat.asc import ballots, ranker_scores, samples_by_problem
from rplat.errors import UserError
from rplat.lookup import stored_params
from rplat.methods.votes import Unanswered, asc_votes, tied_answers
from rplat.registry import get_model
from rplat.runners.evaluation.evaluate import Judged, judge_samples, record_evaluations
from rplat.runners.framework.context import JobContext
from rplat.runners.tdg.kinds import AggregateParams, SampleParams, ScoreSamplesParams


def _samples(s: Session, job_id: int) -> dict[int, list[Any]]:
    by_problem = samples_by_problem(s, job_id)
    if not by_problem:
        raise UserError(f"sample job {job_id} has no samples; run it to the end before aggregating it "
                        "(`rplat jobs show` tells its state).")
    return by_problem


def _check_score_samples_job(s: Session, p: AggregateParams) -> None:
    """A score-samples job of another sample job is refused."""
    assert p.score_samples_job is not None
    scored = stored_params(s, p.score_samples_job, "score-samples", ScoreSamplesParams, "score_samples_job",
                           "aggregate with")
    if scored.sample_job != p.sample_job:
        raise UserError(f"score_samples_job {p.score_samples_job} scored sample job {scored.sample_job}, not "
                        f"sample_job {p.sample_job}; give the score-samples job of sample job {p.sample_job}.")


def _scores(s: Session, p: AggregateParams, sample_ids: Sequence[int]) -> dict[int, float]:
    """The score-samples job's ranker score of every sample; one that did not score every sample is refused."""
    assert p.score_samples_job is not None
    scores = ranker_scores(s, p.score_samples_job)
    missing = sum(1 for i in sample_ids if i not in scores)
    if missing:
        raise UserError(f"score_samples_job {p.score_samples_job} has no ranker score for {missing} of the "
                        f"{len(sample_ids)} samples of sample job {p.sample_job}; let it finish (`rplat jobs show "
                        f"{p.score_samples_job}`) and "
                        "aggregate again.")
    return scores


def votes(by_problem: dict[int, list[Any]], scores: dict[int, float] | None, methods: Sequence[str],
          unanswered: Unanswered = "vote") -> dict[str, list[Judged]]:
    """Per method ("sc", "asc-f0".."asc-f3"), every problem's vote over its samples' normalised answers: sc as
    `evaluate` votes, the ASC votes weighing each sample by its ranker score; samples without an answer vote
    as one bucket or are dropped, as `unanswered` says."""
    fs = sorted({method.removeprefix("asc-") for method in methods if method != "sc"})
    asc: dict[str, list[Judged]] = {}
    if fs:
        b = ballots(by_problem, scores)
        for f, result in asc_votes(b.codes, b.scores, fs, b.correct, unanswered).items():
            assert result.credit is not None
            asc[f"asc-{f}"] = [Judged(problem_id, subject, b.vocabulary[w] if w >= 0 else None, float(mass),
                                      max(int(tie), 1), float(credit), float(margin),
                                      tied_answers(codes, tied, b.vocabulary) if tie > 1 else ())
                               for problem_id, subject, w, mass, tie, credit, margin, codes, tied in zip(
                                   b.problem_ids, b.subjects, result.winner.tolist(), result.mass, result.tie_size,
                                   result.credit, result.margin, b.codes, result.tied, strict=True)]
    return {method: judge_samples("sc", by_problem, unanswered) if method == "sc" else asc[method]
            for method in methods}


def run(ctx: JobContext, p: AggregateParams) -> dict[str, Any]:
    """Predictions and evaluations of greedy (with greedy_sample_job), sc and asc-<f> for each of `votes` (with
    score_samples_job) over the sample job's problems."""
    with ctx.read() as s:
        sampled = stored_params(s, p.sample_job, "sample", SampleParams, "sample_job", "aggregate")
        if sampled.n_samples < 2:
            raise UserError(f"sample_job {p.sample_job} drew n_samples={sampled.n_samples} sample per problem, "
                            "nothing to vote over; aggregate a sample job with n_samples > 1 (e.g. --param "
                            "n_samples=16 --param temperature=0.7).")
        model_id = get_model(s, sampled.model).id
        if p.score_samples_job is not None:
            _check_score_samples_job(s, p)
        by_problem = _samples(s, p.sample_job)
        scores = (None if p.score_samples_job is None
                  else _scores(s, p, [r.id for g in by_problem.values() for r in g]))
        greedy_rows = None
        if p.greedy_sample_job is not None:
            greedy = stored_params(s, p.greedy_sample_job, "sample", SampleParams, "greedy_sample_job",
                                   "aggregate with")
            if greedy.n_samples != 1 or greedy.temperature > 0 or greedy.model != sampled.model:
                raise UserError(f"greedy_sample_job {p.greedy_sample_job} is not a greedy sample job of model "
                                f"{sampled.model!r} (it has n_samples={greedy.n_samples}, temperature="
                                f"{greedy.temperature}, model {greedy.model!r}); give a sample job of that model "
                                "with n_samples=1, temperature 0.")
            greedy_rows = _samples(s, p.greedy_sample_job)
    methods = ["sc"] + ([f"asc-{f}" for f in p.votes] if scores is not None else [])
    judged: dict[str, list[Judged]] = {} if greedy_rows is None else {"greedy": judge_samples("greedy", greedy_rows)}
    judged |= votes(by_problem, scores, methods, p.unanswered)
    ctx.progress(len(by_problem), len(by_problem))
    overall = record_evaluations(ctx, model_id, judged)
    return {"sample_job": p.sample_job, "problems": len(by_problem),
            "vote": f"asc-{p.vote}" if scores is not None else "sc", "unanswered": p.unanswered,
            "accuracy": {method: a.accuracy for method, a in overall.items()}}
