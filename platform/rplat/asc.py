"""The ASC curve (TDG B4): SC and ASC accuracy against the number of samples k, from stored votes.

The votes' inputs are what an `aggregate` job read: its sample job's samples (answers normalised, each answer
as correct as the first sample that gave it) and its score-samples job's ranker scores; the runner reads them from the
store, the report and the dashboard from the `samples` and `sample_scores` views. `accuracy_curves` subsamples k
of each problem's n samples `repeats` times with one seed, the same subsets for every method, so the curves
are paired; each point carries the 95% Wilson interval of its accuracy over the problems.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import duckdb
import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from rplat.boundary import MAX_REPEATS
from rplat.errors import UserError
from rplat.kinds import current_names
from rplat.methods.answers import normalize
from rplat.methods.votes import VOTE_FUNCTIONS, accuracy_curves, answer_codes
from rplat.models import Problem, RankerScore, Sample
from rplat.reports import known_experiment, open_views, records
from rplat.runners.tdg.kinds import AggregateParams
from rplat.stats import wilson


@dataclass(frozen=True)
class Ballots:
    """A sample job's votes as arrays, a row per problem (sample_idx order, padded with no answer): answer codes
    into `vocabulary` (normalised answers), each sample's correctness and, with a score job, its ranker score."""

    problem_ids: list[int]
    subjects: list[str | None]
    codes: np.ndarray
    vocabulary: list[str]
    correct: np.ndarray
    scores: np.ndarray | None


def sample_answers(groups: Mapping[int, Sequence[Any]]) -> tuple[list[list[str | None]], list[list[bool]]]:
    """Each problem's samples (rows with `extracted_answer` and `correct`) as every vote over them reads them:
    the normalised answers and the stored labels (a sample without a label is wrong)."""
    rows = list(groups.values())
    return [[normalize(r.extracted_answer) for r in g] for g in rows], [[bool(r.correct) for r in g] for g in rows]


def ballots(groups: Mapping[int, Sequence[Any]], scores: Mapping[int, float] | None) -> Ballots:
    """Ballots from each problem's samples (rows with `id`, `extracted_answer`, `correct`, `subject`, in
    sample_idx order) and the ranker score of every sample id (None: no scores)."""
    rows = list(groups.values())
    answers, labels = sample_answers(groups)
    codes, vocabulary = answer_codes(answers)
    correct = np.zeros(codes.shape, dtype=bool)
    weights = None if scores is None else np.zeros(codes.shape)
    for i, g in enumerate(rows):
        correct[i, :len(g)] = labels[i]
        if weights is not None and scores is not None:
            weights[i, :len(g)] = [scores[r.id] for r in g]
    return Ballots(list(groups), [g[0].subject for g in rows], codes, vocabulary, correct, weights)


def samples_by_problem(session: Session, sample_job: int) -> dict[int, list[Any]]:
    """A sample job's samples per problem (id, problem_id, extracted_answer, correct, subject), sample_idx order."""
    by_problem: dict[int, list[Any]] = {}
    for r in session.execute(select(Sample.id, Sample.problem_id, Sample.extracted_answer, Sample.correct,
                                    Problem.subject)
                             .join(Problem, Problem.id == Sample.problem_id)
                             .where(Sample.job_id == sample_job)
                             .order_by(Sample.problem_id, Sample.sample_idx)).all():
        by_problem.setdefault(r.problem_id, []).append(r)
    return by_problem


def ranker_scores(session: Session, score_job: int) -> dict[int, float]:
    """A score-samples job's score of each sample id."""
    return dict(session.execute(select(RankerScore.sample_id, RankerScore.score)
                                .where(RankerScore.job_id == score_job)).all())


class _Sample(NamedTuple):
    id: int
    problem_id: int
    extracted_answer: str | None
    correct: bool
    subject: str | None


def sample_ballots(con: duckdb.DuckDBPyConnection, sample_job: int, score_samples_job: int | None
                   ) -> Ballots | None:
    """A sample job's ballots from the `samples` and `sample_scores` views, with the score-samples job's ranker
    scores when it scored every sample (one still running leaves them out); None when the job has no samples."""
    rows = con.execute("""
        SELECT s.sample_id, s.problem_id, s.extracted_answer, coalesce(s.correct, false), s.subject, r.score
        FROM samples s
        LEFT JOIN sample_scores r ON r.sample_id = s.sample_id AND r.score_samples_job_id = $score_samples_job
        WHERE s.sample_job_id = $sample_job
        ORDER BY s.problem_id, s.sample_idx""",
                       {"sample_job": sample_job, "score_samples_job": score_samples_job}).fetchall()
    if not rows:
        return None
    groups: dict[int, list[_Sample]] = {}
    for *sample, _ in rows:
        groups.setdefault(sample[1], []).append(_Sample(*sample))
    scored = score_samples_job is not None and all(score is not None for *_, score in rows)
    return ballots(groups, {row[0]: row[-1] for row in rows} if scored else None)


def asc_curve(engine: Engine, experiment: str, *, repeats: int = 20, seed: int = 0) -> list[dict[str, Any]]:
    """Rows (model, aggregate_job, sample_job, unanswered, method, k, n, accuracy, ci_low, ci_high) for k = 1..n
    of every succeeded aggregate job of the experiment (the latest per sample and score-samples job), for sc and
    each asc vote the job stored, voting unanswered samples as the job did."""
    if not 1 <= repeats <= MAX_REPEATS:
        raise UserError(f"--repeats {repeats} is out of range; give 1 to {MAX_REPEATS:,} subsamples per k.")
    known_experiment(engine, experiment)
    with open_views(engine) as con:
        jobs = records(con, """
            SELECT job_id, params FROM job_timeline
            WHERE experiment = $experiment AND kind = 'aggregate' AND status = 'succeeded' ORDER BY job_id""",
                       {"experiment": experiment})
        if not jobs:
            raise UserError(f"experiment {experiment!r} has no succeeded aggregate job; enqueue one with "
                            f"`rplat enqueue aggregate --experiment {experiment} --param sample_job=ID "
                            "--param score_samples_job=ID` and run it.")
        latest: dict[tuple[int, int | None], tuple[int, dict[str, Any]]] = {}
        for job in jobs:
            p = current_names(AggregateParams, json.loads(job.params))  # a job stored before a rename: its old names
            latest[(p["sample_job"], p.get("score_samples_job"))] = (job.job_id, p)
        models = {r.job_id: json.loads(r.params).get("model") for r in records(
            con, "SELECT job_id, params FROM job_timeline WHERE list_contains($ids, job_id)",
            {"ids": [sample_job for sample_job, _ in latest]})}
        inputs = [(job_id, p, models[p["sample_job"]], sample_ballots(con, p["sample_job"], p.get("score_samples_job")))
                  for job_id, p in latest.values()]
    rows: list[dict[str, Any]] = []
    for job_id, p, model, b in inputs:
        if b is None:
            continue
        n_problems, n_samples = b.codes.shape
        methods = [("sc", "f0")] + ([(f"asc-{f}", f) for f in p.get("votes", list(VOTE_FUNCTIONS))]
                                    if b.scores is not None else [])
        ks = list(range(1, n_samples + 1))
        # a job stored before the setting existed dropped unanswered samples
        unanswered = p.get("unanswered", "drop")
        curves = accuracy_curves(b.codes, b.correct, b.scores, ks, repeats, seed, sorted({f for _, f in methods}),
                                 unanswered)
        for method, f in methods:
            for k, accuracy in zip(ks, curves[f].tolist(), strict=True):
                low, high = wilson(accuracy * n_problems, n_problems)
                rows.append({"model": model, "aggregate_job": job_id, "sample_job": p["sample_job"],
                             "unanswered": unanswered, "method": method, "k": k, "n": n_problems,
                             "accuracy": accuracy, "ci_low": low, "ci_high": high})
    return rows


def ranker_accuracy(engine: Engine, experiment: str) -> list[dict[str, Any]]:
    """Per succeeded train-ranker job of the experiment: its ranker and its accuracy (s_pos > s_neg) on the pairs
    of the questions it held out (the `ranker_pairs` view), with a 95% Wilson interval (no row for a ranker that
    held none out)."""
    known_experiment(engine, experiment)
    with open_views(engine) as con:
        found = records(con, """
            SELECT j.job_id, any_value(j.params) AS params, count(*) AS pairs,
                   count(*) FILTER (WHERE p.ranked_right) AS ranked_right
            FROM job_timeline j JOIN ranker_pairs p ON p.job_id = j.job_id
            WHERE j.experiment = $experiment AND j.kind = 'train-ranker' AND j.status = 'succeeded'
              AND p.split = 'heldout'
            GROUP BY j.job_id ORDER BY j.job_id""", {"experiment": experiment})
    rows = []
    for r in found:
        p = json.loads(r.params)
        low, high = wilson(float(r.ranked_right), r.pairs)
        rows.append({"train_ranker_job": r.job_id, "ranker": p.get("ranker_name") or f"ranker-job{r.job_id}",
                     "encoder": p.get("encoder"), "heldout_pairs": r.pairs, "accuracy": r.ranked_right / r.pairs,
                     "ci_low": low, "ci_high": high})
    return rows
