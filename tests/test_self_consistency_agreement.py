"""Self-consistency is one vote: evaluating a solve job, evaluating a sample job and aggregating the sample job
(sc and asc-f0) give every problem the same winner, vote mass, tie size, credit and tied answers from the same
answers, under either `unanswered` setting; without one, each kind stores its protocol (vote for TDG, drop for a
solve job)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from rplat.methods.answers import normalize
from rplat.models import (
    Evaluation,
    Job,
    Prediction,
    RankerScore,
    SolveTrajectory,
)
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

import factories as make
from stores import Store

# (gold, subject, five samples' answers: None where none was extracted) and, by hand, the vote of each problem:
# (answer, vote mass, tie size, credit, the tied answers stored with a tie: sorted, the answer shown first).
PROBLEMS: list[tuple[str, str, list[str | None]]] = [
    ("7", "algebra", ["7", "7.0", "8", None, "9"]),  # "7.0" votes with "7": a majority of two
    ("3", "algebra", ["4", "3", None, None, "5"]),  # a three-way tie with one right answer: a third of a problem
    ("5", "geometry", [None] * 5),  # nothing answered: no winner, a tie of one, no credit
    ("2", "geometry", ["1", "2", "2", "1", None]),  # two tie at two votes, one right: half a problem
    ("6", "geometry", ["6", None, None, None, None]),  # one answer among unanswered samples wins alone
]
VOTES = [("7", 2.0, 1, 1.0, None), ("3", 1.0, 3, 1 / 3, ["3", "4", "5"]), (None, 0.0, 1, 0.0, None),
         ("1", 2.0, 2, 0.5, ["1", "2"]), ("6", 1.0, 1, 1.0, None)]
# The same with unanswered="vote": the unanswered samples are one bucket, which wins problems 2, 3 and 5 and
# joins the tie of problem 4 (it has one vote there, the tied answers two each, so it stays out).
VOTES_COUNTING_NONE = [("7", 2.0, 1, 1.0, None), (None, 2.0, 1, 0.0, None), (None, 5.0, 1, 0.0, None),
                       ("1", 2.0, 2, 0.5, ["1", "2"]), (None, 4.0, 1, 0.0, None)]
ACCURACY = {"drop": {"algebra": (2, 1 + 1 / 3, (1 + 1 / 3) / 2), "geometry": (3, 1.5, 0.5),
                     "all": (5, 1 + 1 / 3 + 1.5, (1 + 1 / 3 + 1.5) / 5)},
            "vote": {"algebra": (2, 1.0, 0.5), "geometry": (3, 0.5, 0.5 / 3), "all": (5, 1.5, 0.3)}}


def _seed(db: Store) -> dict[str, int]:
    """PROBLEMS as a finished sc solve job (trajectories) and a finished sample job (samples, labelled by the
    gold answer) with a score job; returns their ids."""
    with transaction(db.engine()) as s:
        importer = make.job(s, "import-problems")
        model = make.model(s, "student")
        make.experiment(s, "sc")
        dataset = make.dataset(s, "math", importer)
        solve = make.job(s, "solve", {"problems": "math", "model": "student", "method": "sc", "n_samples": 5})
        sample = make.job(s, "sample", {"problems": "math", "model": "student", "n": 5, "temperature": 0.7})
        score = make.job(s, "score-samples", {"sample_job": sample.id, "ranker": "r"})
        problems = make.problems(s, dataset, [{"external_id": f"p{k}", "subject": subject, "question": f"q{k}",
                                               "answer": gold} for k, (gold, subject, _) in enumerate(PROBLEMS)])
        for problem, (gold, _, answers) in zip(problems, PROBLEMS, strict=True):
            for i, answer in enumerate(answers):
                right = normalize(answer) == gold
                s.add(SolveTrajectory(job_id=solve.id, problem_id=problem.id, sample_idx=i, method="sc",
                                      final_text=str(answer), prediction=answer, normalized_pred=normalize(answer),
                                      correct=right, n_steps=1, stopped_reason="answer"))
                chain = make.sample(s, sample, problem, model, "...", sample_idx=i, extracted_answer=answer,
                                    correct=right)
                s.add(RankerScore(job_id=score.id, sample_id=chain.id, ranker_model_id=model.id, score=0.5))
        return {"solve": solve.id, "sample": sample.id, "score": score.id}


def _votes(s: Any, job_id: int, method: str) -> list[tuple[Any, ...]]:
    return [(*r[:4], None if r[4] is None else json.loads(r[4])) for r in s.execute(
        select(Prediction.answer, Prediction.vote_mass, Prediction.tie_size, Prediction.credit,
               Prediction.tied_answers)
        .where(Prediction.job_id == job_id, Prediction.method == method).order_by(Prediction.problem_id)).all()]


def _accuracy(s: Any, job_id: int, method: str) -> dict[str, tuple[int, float, float]]:
    return {e.subject: (e.n, e.n_correct, e.accuracy) for e in s.scalars(
        select(Evaluation).where(Evaluation.job_id == job_id, Evaluation.method == method))}


@pytest.mark.parametrize("unanswered", ["drop", "vote"])
def test_solve_evaluate_sample_evaluate_and_aggregate_cast_the_same_self_consistency_vote(
        db: Store, unanswered: str) -> None:
    ids = _seed(db)
    queue = Queue(db.engine())
    jobs = {"solve": queue.enqueue("evaluate", {"solve_job": ids["solve"], "unanswered": unanswered},
                                   experiment="sc")[0],
            "sample": queue.enqueue("evaluate", {"sample_job": ids["sample"], "unanswered": unanswered},
                                    experiment="sc")[0],
            "aggregate": queue.enqueue("aggregate", {"sample_job": ids["sample"], "score_job": ids["score"],
                                                     "votes": ["f0"], "vote": "f0", "unanswered": unanswered},
                                       experiment="sc")[0]}
    Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    with transaction(db.engine()) as s:
        assert [s.get(Job, job).status for job in jobs.values()] == ["succeeded"] * 3
        votes = {name: _votes(s, job, "sc") for name, job in jobs.items()}
        votes["asc-f0"] = _votes(s, jobs["aggregate"], "asc-f0")
        accuracy = {name: _accuracy(s, job, "sc") for name, job in jobs.items()}
        accuracy["asc-f0"] = _accuracy(s, jobs["aggregate"], "asc-f0")
    # exactly equal, float credits (a third) included: one vote computed them all
    expected = VOTES if unanswered == "drop" else VOTES_COUNTING_NONE
    assert votes == {name: expected for name in votes}
    assert accuracy == {name: ACCURACY[unanswered] for name in accuracy}


def test_each_kind_stores_its_protocol_when_unanswered_is_not_given(db: Store) -> None:
    """Evaluating a solve job drops unanswered samples (as it always has); evaluating or aggregating a TDG sample
    job counts them as the authors do; the stored params carry the resolved value."""
    ids = _seed(db)
    queue = Queue(db.engine())
    jobs = {"solve": queue.enqueue("evaluate", {"solve_job": ids["solve"]}, experiment="sc")[0],
            "sample": queue.enqueue("evaluate", {"sample_job": ids["sample"]}, experiment="sc")[0],
            "aggregate": queue.enqueue("aggregate", {"sample_job": ids["sample"], "score_job": ids["score"],
                                                     "votes": ["f0"], "vote": "f0"}, experiment="sc")[0]}
    Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    with transaction(db.engine()) as s:
        stored = {name: s.get(Job, job).params for name, job in jobs.items()}
        votes = {name: _votes(s, job, "sc") for name, job in jobs.items()}
    stored = {name: json.loads(p) if isinstance(p, str) else p for name, p in stored.items()}
    assert {name: p["unanswered"] for name, p in stored.items()} == {
        "solve": "drop", "sample": "vote", "aggregate": "vote"}
    assert votes == {"solve": VOTES, "sample": VOTES_COUNTING_NONE, "aggregate": VOTES_COUNTING_NONE}
