"""The `aggregate` job (sc, asc-f0..f3, greedy from stored samples and scores); `rplat report asc`."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sqlalchemy import func, select, update
from test_analytics import run_cli

from rplat.errors import UserError
from rplat.kinds import validate_params
from rplat.models import Evaluation, Job, Prediction, RankerScore
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.stats import wilson
from rplat.store import transaction

import factories as make
from stores import Store

# (gold, subject, greedy (answer, correct), samples (answer, correct, ranker score)). Problem 0: "7.0" votes with
# "7", and f3's scores overturn the count (7: 0.25 + 0.25 against 8: 0.75). Problem 1: sc ties 3 against 4, the
# scores break the tie for the wrong 4. Problem 2: no sample gave an answer.
PROBLEMS = [
    ("7", "algebra", ("7", True), [("7", True, 0.25), ("7.0", True, 0.25), ("8", False, 0.75), (None, False, 0.5)]),
    ("3", "algebra", ("4", False), [("4", False, 0.75), ("3", True, 0.25), (None, False, 1.0), (None, False, 0.0)]),
    ("5", "geometry", (None, False), [(None, False, 0.5)] * 4),
]
# method -> per problem (answer, vote_mass, tie_size, margin, credit), by hand with f0 = 1, f1 = 1 + 2s,
# f2 = 1 + s, f3 = s, unanswered samples dropped; a tie names the first tied answer in sorted order.
EXPECTED: dict[str, list[tuple[str | None, float, int, float, float]]] = {
    "greedy": [("7", 1.0, 1, 1.0, 1.0), ("4", 1.0, 1, 1.0, 0.0), (None, 1.0, 1, 0.0, 0.0)],
    "sc": [("7", 2.0, 1, 1.0, 1.0), ("3", 1.0, 2, 0.0, 0.5), (None, 0.0, 1, 0.0, 0.0)],
    "asc-f0": [("7", 2.0, 1, 1.0, 1.0), ("3", 1.0, 2, 0.0, 0.5), (None, 0.0, 1, 0.0, 0.0)],
    "asc-f1": [("7", 3.0, 1, 0.5, 1.0), ("4", 2.5, 1, 1.0, 0.0), (None, 0.0, 1, 0.0, 0.0)],
    "asc-f2": [("7", 2.5, 1, 0.75, 1.0), ("4", 1.75, 1, 0.5, 0.0), (None, 0.0, 1, 0.0, 0.0)],
    "asc-f3": [("8", 0.75, 1, 0.25, 0.0), ("4", 0.75, 1, 0.5, 0.0), (None, 0.0, 1, 0.0, 0.0)],
}

# The same with unanswered="vote" (the authors' protocol, the default): the unanswered samples are one bucket.
# Problem 0: it stays behind 7 (f0 1 against 2, f1 2 against 3, f2 1.5 against 2.5, f3 0.5 against 8's 0.75).
# Problem 1: its two samples win every vote (f0 2, f1 3 + 1, f2 2 + 1, f3 1.0 + 0.0). Problem 2: it wins alone.
EXPECTED_VOTE: dict[str, list[tuple[str | None, float, int, float, float]]] = {
    "greedy": EXPECTED["greedy"],
    "sc": [("7", 2.0, 1, 1.0, 1.0), (None, 2.0, 1, 1.0, 0.0), (None, 4.0, 1, 4.0, 0.0)],
    "asc-f0": [("7", 2.0, 1, 1.0, 1.0), (None, 2.0, 1, 1.0, 0.0), (None, 4.0, 1, 4.0, 0.0)],
    "asc-f1": [("7", 3.0, 1, 0.5, 1.0), (None, 4.0, 1, 1.5, 0.0), (None, 8.0, 1, 8.0, 0.0)],
    "asc-f2": [("7", 2.5, 1, 0.75, 1.0), (None, 3.0, 1, 1.25, 0.0), (None, 6.0, 1, 6.0, 0.0)],
    "asc-f3": [("8", 0.75, 1, 0.25, 0.0), (None, 1.0, 1, 0.25, 0.0), (None, 2.0, 1, 2.0, 0.0)],
}


def _seed(db: Store, *, n: int = 4, scored: int | None = None) -> dict[str, int]:
    """PROBLEMS as a greedy sample job, an n-sample job and a score job on it holding the first `scored` scores
    (default: all); returns the ids."""
    with transaction(db.engine()) as s:
        importer = make.job(s, "import-problems")
        model = make.model(s, "student")
        make.experiment(s, "asc")
        dataset = make.dataset(s, "math", importer)
        greedy = make.job(s, "sample", {"problems": "math", "model": "student", "n": 1})
        sampled = make.job(s, "sample", {"problems": "math", "model": "student", "n": n, "temperature": 0.7})
        score = make.job(s, "score-samples", {"sample_job": sampled.id, "ranker": "r"})
        problems = make.problems(s, dataset, [{"external_id": f"p{k}", "subject": subject, "question": f"q{k}",
                                               "answer": gold} for k, (gold, subject, _, _) in enumerate(PROBLEMS)])
        scores = []
        for problem, (_, _, (g_answer, g_correct), samples) in zip(problems, PROBLEMS, strict=True):
            make.sample(s, greedy, problem, model, "...", sample_idx=0, decoding="greedy", extracted_answer=g_answer,
                        correct=g_correct)
            for i, (answer, correct, score_value) in enumerate(samples[:n]):
                sample = make.sample(s, sampled, problem, model, "...", sample_idx=i, extracted_answer=answer,
                                     correct=correct)
                scores.append(RankerScore(job_id=score.id, sample_id=sample.id, ranker_model_id=model.id,
                                          score=score_value))
        s.add_all(scores[:scored])
        return {"greedy": greedy.id, "sample": sampled.id, "score": score.id, "model": model.id}


def _run(db: Store, params: dict[str, Any]) -> Job:
    job_id = Queue(db.engine()).enqueue("aggregate", params, experiment="asc", max_attempts=1)[0]
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    return db.job(job_id)


def _predictions(db: Store, job_id: int) -> dict[str, list[tuple[Any, ...]]]:
    got: dict[str, list[tuple[Any, ...]]] = {}
    with transaction(db.engine()) as s:
        for p in s.scalars(select(Prediction).where(Prediction.job_id == job_id)
                           .order_by(Prediction.method, Prediction.problem_id)):
            got.setdefault(p.method, []).append((p.answer, p.vote_mass, p.tie_size, p.margin, p.credit))
            assert p.correct == (p.credit == 1.0)
    return got


def test_aggregate_writes_every_methods_hand_computed_votes_and_a_rerun_adds_nothing(db: Store) -> None:
    ids = _seed(db)
    job = _run(db, {"sample_job": ids["sample"], "score_job": ids["score"], "greedy_job": ids["greedy"],
                    "unanswered": "drop"})
    assert job.status == "succeeded", job.error
    assert job.result == {"sample_job": ids["sample"], "problems": 3, "vote": "asc-f3", "unanswered": "drop",
                          "accuracy": {
        "greedy": 1 / 3, "sc": 0.5, "asc-f0": 0.5, "asc-f1": 1 / 3, "asc-f2": 1 / 3, "asc-f3": 0.0}}
    assert _predictions(db, job.id) == EXPECTED
    with transaction(db.engine()) as s:
        evaluations = {(e.method, e.subject): (e.n, e.n_correct, e.model_id) for e in s.scalars(
            select(Evaluation).where(Evaluation.job_id == job.id))}
    assert evaluations[("sc", "all")] == (3, 1.5, ids["model"])
    assert evaluations[("sc", "algebra")] == (2, 1.5, ids["model"])
    assert evaluations[("sc", "geometry")] == (1, 0.0, ids["model"])
    assert evaluations[("asc-f2", "algebra")] == (2, 1.0, ids["model"])
    assert len(evaluations) == 6 * 3

    # As if the runner died after its commit: the job runs again and finds every row in place.
    with transaction(db.engine()) as s:
        s.execute(update(Job).where(Job.id == job.id).values(status="failed"))
    Queue(db.engine()).retry(job.id)
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    assert _predictions(db, job.id) == EXPECTED
    with transaction(db.engine()) as s:
        assert s.scalar(select(func.count()).select_from(Prediction).where(Prediction.job_id == job.id)) == 6 * 3


def test_aggregate_counts_unanswered_samples_as_a_bucket_by_default(db: Store) -> None:
    ids = _seed(db)
    job = _run(db, {"sample_job": ids["sample"], "score_job": ids["score"], "greedy_job": ids["greedy"]})
    assert job.status == "succeeded", job.error
    assert job.params["unanswered"] == "vote"
    assert job.result == {"sample_job": ids["sample"], "problems": 3, "vote": "asc-f3", "unanswered": "vote",
                          "accuracy": {"greedy": 1 / 3, "sc": 1 / 3, "asc-f0": 1 / 3, "asc-f1": 1 / 3,
                                       "asc-f2": 1 / 3, "asc-f3": 0.0}}
    assert _predictions(db, job.id) == EXPECTED_VOTE


def test_aggregate_without_scores_stores_self_consistency_only(db: Store) -> None:
    ids = _seed(db)
    job = _run(db, {"sample_job": ids["sample"]})
    assert job.status == "succeeded", job.error
    assert job.result == {"sample_job": ids["sample"], "problems": 3, "vote": "sc", "unanswered": "vote",
                          "accuracy": {"sc": 1 / 3}}
    assert _predictions(db, job.id) == {"sc": EXPECTED_VOTE["sc"]}


@pytest.mark.parametrize(("case", "refused", "message"), [
    ("other sample job", "whose sample_job is {sample}, not this job's sample_job {other}",
     "score_samples_job {score} scored sample job {sample}, not sample_job {other}"),
    ("one sample", "names sample job {other}, whose n_samples is 1, not > 1",
     "sample_job {other} drew n_samples=1 sample per problem, nothing to vote over"),
    ("missing scores", None,
     "score_samples_job {score} has no ranker score for 2 of the 12 samples of sample job {sample}"),
])
def test_aggregate_refuses_bad_inputs_in_one_sentence_and_writes_nothing(
        db: Store, case: str, refused: str | None, message: str) -> None:
    ids = _seed(db, scored=10 if case == "missing scores" else None)
    if case == "missing scores":
        params = {"sample_job": ids["sample"], "score_job": ids["score"]}
        ids["other"] = ids["sample"]
    else:
        with transaction(db.engine()) as s:
            n = 1 if case == "one sample" else 4
            ids["other"] = make.job(s, "sample", {"problems": "math", "model": "student", "n": n,
                                                  "temperature": 0.7}).id
        params = {"sample_job": ids["other"], "score_job": ids["score"]}
    if refused is None:
        job = _run(db, params)
    else:  # enqueue refuses it; so does the handler, for a job written past enqueue's checks
        with pytest.raises(UserError, match=re.escape(refused.format(**ids))):
            Queue(db.engine()).enqueue("aggregate", params)
        with transaction(db.engine()) as s:
            job_id = make.job(s, "aggregate", validate_params("aggregate", params), status="queued",
                              max_attempts=1).id
        Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()
        job = db.job(job_id)
    assert job.status == "failed"
    assert message.format(**ids) in job.error
    assert "Traceback" not in job.error
    with transaction(db.engine()) as s:
        assert s.scalar(select(func.count()).select_from(Prediction)) == 0


def test_the_headline_vote_must_be_among_the_stored_votes() -> None:
    with pytest.raises(UserError, match="headline vote f3 is not among votes"):
        validate_params("aggregate", {"sample_job": 1, "votes": ["f0", "f1"]})


# --- rplat report asc ---------------------------------------------------------------------------------------


def test_report_asc_gives_each_methods_accuracy_for_every_k_with_wilson_intervals(
        db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    ids = _seed(db)
    job = _run(db, {"sample_job": ids["sample"], "score_job": ids["score"], "votes": ["f1", "f3"],
                    "unanswered": "drop"})
    code, out, err = run_cli(capsys, "report", "asc", "--experiment", "asc", "--json", "--repeats", "5")
    assert code == 0, err
    rows = json.loads(out)
    curve = {(r["method"], r["k"]): r for r in rows}
    assert sorted(curve) == [(m, k) for m in ("asc-f1", "asc-f3", "sc") for k in range(1, 5)]
    assert {(r["model"], r["aggregate_job"], r["sample_job"], r["n"], r["unanswered"]) for r in rows} == {
        ("student", job.id, ids["sample"], 3, "drop")}
    # every sample in every subset: the stored votes' accuracies
    assert {m: curve[(m, 4)]["accuracy"] for m in ("sc", "asc-f1", "asc-f3")} == pytest.approx(
        {"sc": 0.5, "asc-f1": 1 / 3, "asc-f3": 0.0})
    assert (curve[("sc", 4)]["ci_low"], curve[("sc", 4)]["ci_high"]) == pytest.approx(wilson(1.5, 3))
    # one sample decides alone, whatever its weight, and every method saw the same subsets
    assert curve[("sc", 1)]["accuracy"] == curve[("asc-f1", 1)]["accuracy"] == curve[("asc-f3", 1)]["accuracy"]
    code, table, err = run_cli(capsys, "report", "asc", "--experiment", "asc", "--repeats", "5")
    assert code == 0, err
    assert "against the number of samples k, experiment asc, 5 subsets per k (seed 0)" in table
    assert f"student  sc      4  3  50.00 [{100 * wilson(1.5, 3)[0]:.1f}, {100 * wilson(1.5, 3)[1]:.1f}]" in table
    assert re.search(rf"student  sc      4  3  50\.00 \[.*\]  +{job.id}  +drop\n", table)


def test_report_asc_votes_unanswered_samples_as_the_aggregate_job_did(
        db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    ids = _seed(db)
    _run(db, {"sample_job": ids["sample"], "score_job": ids["score"], "votes": ["f1", "f3"]})
    code, out, err = run_cli(capsys, "report", "asc", "--experiment", "asc", "--json", "--repeats", "5")
    assert code == 0, err
    curve = {(r["method"], r["k"]): r for r in json.loads(out)}
    assert {r["unanswered"] for r in curve.values()} == {"vote"}
    # every sample in every subset: the stored votes' accuracies, the no-answer bucket winning problems 1 and 2
    assert {m: curve[(m, 4)]["accuracy"] for m in ("sc", "asc-f1", "asc-f3")} == pytest.approx(
        {"sc": 1 / 3, "asc-f1": 1 / 3, "asc-f3": 0.0})


def test_report_asc_on_an_experiment_without_aggregate_jobs_is_one_sentence(
        db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    with transaction(db.engine()) as s:
        make.experiment(s, "empty")
    code, _, err = run_cli(capsys, "report", "asc", "--experiment", "empty")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: experiment 'empty' has no succeeded aggregate job; enqueue one with `rplat enqueue aggregate "
        "--experiment empty --param sample_job=ID --param score_samples_job=ID` and run it."]
