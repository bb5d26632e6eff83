"""Summaries of finished jobs for people (the CLI's `rplat report ...`).

A report reads the analytics views that hold its numbers (`rplat.analytics`, one DuckDB connection per report),
so it shows what `rplat sql` and the dashboard show; names people type are checked first (`rplat.lookup`).
"""

from __future__ import annotations

import json
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import duckdb
from sqlalchemy import Engine, select

from rplat import analytics
from rplat.boundary import MAX_RESAMPLES, parse_run
from rplat.errors import UserError
from rplat.lookup import experiment_id, job_of_kind
from rplat.methods.votes import OVERALL
from rplat.models import Job
from rplat.stats import wilson
from rplat.store import transaction


@contextmanager
def open_views(engine: Engine) -> Iterator[duckdb.DuckDBPyConnection]:
    """The analytics views over the store of `engine`, on one DuckDB connection closed after use."""
    con = analytics.connect(engine.url.render_as_string(hide_password=False))
    try:
        yield con
    finally:
        con.close()


def records(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    """The rows of a query over the views, each a named tuple of its columns."""
    cursor = con.execute(sql, params)
    row = namedtuple("row", [d[0] for d in cursor.description or []], rename=True)  # type: ignore[misc]
    return [row(*values) for values in cursor.fetchall()]


def known_experiment(engine: Engine, name: str) -> None:
    """Refuse an experiment that does not exist, in the sentence every command uses."""
    with transaction(engine) as session:
        experiment_id(session, name)


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


def prefilter_report(engine: Engine, *, job_id: int | None = None, experiment: str | None = None,
                     examples: int = 3) -> dict[str, Any]:
    """Counts and cosine quantiles over all of a job's scores, computed in the `prefilter_scores` view (a corpus's
    million scores never come into Python); document texts only for the `examples` shown."""
    with transaction(engine) as session:
        job = _latest_job(session, "prefilter", job_id, experiment)
        job_ref, status, params, result = job.id, job.status, job.params, job.result or {}
    with open_views(engine) as con:
        (scored, passed, quantiles), = con.execute(
            "SELECT count(*), count(*) FILTER (WHERE passed), quantile_cont(cosine, [0.0, 0.25, 0.5, 0.75, 1.0]) "
            "FROM prefilter_scores WHERE job_id = $job", {"job": job_ref}).fetchall()

        def ends(order: str) -> list[dict[str, Any]]:
            if not examples:
                return []
            rows = records(con, "SELECT cosine, passed, document AS external_id, text FROM prefilter_scores "
                           f"WHERE job_id = $job ORDER BY cosine {order}, document_id LIMIT $n",
                           {"job": job_ref, "n": examples})
            return [_document_example(r) for r in rows]

        closest, farthest = ends("DESC"), ends("ASC")
    names = ("min", "p25", "median", "p75", "max")
    return {
        "job_id": job_ref,
        "status": status,
        "threshold": params.get("threshold"),
        "max_chars": params.get("max_chars"),
        "scored": scored,
        "passed": passed,
        # Counted by the job when it finishes: documents it did not embed (None before then).
        "over_max_chars": result.get("over_max_chars"),
        "outside_subsets": result.get("outside_subsets"),
        **_interval(passed, scored, "pass_rate"),
        "cosine_quantiles": dict(zip(names, quantiles or [float("nan")] * len(names), strict=True)),
        "closest": closest,
        "farthest": farthest,
    }


def _interval(successes: float, n: int, name: str, scale: float = 1.0, digits: int = 4) -> dict[str, float | None]:
    """`name` = successes / n with its 95% Wilson interval as `ci_low` and `ci_high` (None, None, None at n = 0),
    times `scale` (100 for percentages) and rounded to `digits`."""
    if n <= 0:
        return {name: None, "ci_low": None, "ci_high": None}
    low, high = wilson(successes, n)
    return {name: round(scale * successes / n, digits), "ci_low": round(scale * low, digits),
            "ci_high": round(scale * high, digits)}


def _document_example(r: Any) -> dict[str, Any]:
    snippet = " ".join(r.text.split())
    return {"external_id": r.external_id, "cosine": r.cosine, "passed": r.passed,
            "snippet": snippet[:100] + ("..." if len(snippet) > 100 else "")}


# The RATIONALYST funnel, over the jobs of an experiment (all jobs without one). Extractions have no view of their
# own: their store table.
_FUNNEL = """
WITH mine AS (SELECT job_id FROM job_timeline WHERE $experiment IS NULL OR experiment = $experiment)
SELECT
    (SELECT count(*) FROM store.prefilter_scores
     WHERE CAST(passed AS BOOLEAN) AND job_id IN (SELECT job_id FROM mine)) AS prefilter_passed,
    (SELECT count(*) FROM store.extractions WHERE job_id IN (SELECT job_id FROM mine)) AS extractions,
    (SELECT count(*) FROM store.extractions
     WHERE CAST(passed AS BOOLEAN) AND job_id IN (SELECT job_id FROM mine)) AS passed_fidelity,
    count(DISTINCT rationale_id) FILTER (WHERE extract_rationales_job_id IN (SELECT job_id FROM mine)) AS rationales,
    count(*) FILTER (WHERE score_rationales_job_id IN (SELECT job_id FROM mine)) AS scored,
    -- restate the text they precede (overlap above the score job's threshold): never kept, however large their
    -- loss delta
    count(*) FILTER (WHERE leak AND score_rationales_job_id IN (SELECT job_id FROM mine)) AS leaks,
    count(*) FILTER (WHERE kept AND score_rationales_job_id IN (SELECT job_id FROM mine)) AS kept,
    (SELECT count(*) FROM training_metrics
     WHERE kind = 'train-rationalyst' AND job_id IN (SELECT job_id FROM mine)) AS train_steps
FROM rationales"""


def _has_rationalyst_jobs(con: Any, experiment: str) -> None:
    """Refuse an experiment that holds none of RATIONALYST's jobs (its counts would all be another method's or 0)."""
    from rplat.runners.rationalyst.kinds import KINDS

    names = [kind.name for kind in KINDS]
    listed = ", ".join(f"'{name}'" for name in names)
    (mine,) = records(con, f"SELECT count(*) AS n FROM job_timeline WHERE experiment = $experiment "
                           f"AND kind IN ({listed})", {"experiment": experiment})
    if mine.n == 0:
        raise UserError(f"experiment {experiment!r} holds no RATIONALYST jobs ({', '.join(names)}); for a Turning "
                        f"Dust into Gold experiment run `rplat report tdg --experiment {experiment}`.")


def rationalyst_report(engine: Engine, *, experiment: str | None = None) -> dict[str, Any]:
    """Accuracy of every evaluated solve method (latest evaluation per method and subject) and the mining funnel's
    counts."""
    if experiment is not None:
        known_experiment(engine, experiment)
    with open_views(engine) as con:
        if experiment is not None:
            _has_rationalyst_jobs(con, experiment)
        (funnel,) = records(con, _FUNNEL, {"experiment": experiment})
        # An evaluation of a TDG sample job has no solve job: `rplat report tdg` shows it.
        rows = records(con, """
            SELECT e.method, e.subject, e.n, e.n_correct, e.job_id, e.solve_job_id
            FROM evaluations e JOIN job_timeline j ON j.job_id = e.job_id
            WHERE j.kind = 'evaluate' AND e.solve_job_id IS NOT NULL
              AND ($experiment IS NULL OR e.experiment = $experiment)
            QUALIFY e.job_id = max(e.job_id) OVER (PARTITION BY e.method, e.subject)
            ORDER BY e.subject <> $overall, e.subject, e.method""", {"experiment": experiment, "overall": OVERALL})
    results = [{"method": r.method, "subject": r.subject, "n": r.n, "correct": round(r.n_correct, 2),
                **_interval(r.n_correct, r.n, "accuracy"), "evaluate_job": r.job_id, "solve_job": r.solve_job_id}
               for r in rows]
    return {"experiment": experiment, "funnel": funnel._asdict(), "results": results}


def _percent_interval(ev: Any) -> tuple[float, float]:
    """An evaluation row's 95% Wilson interval in percent."""
    low, high = wilson(ev.n_correct, ev.n)
    return 100.0 * low, 100.0 * high


# Table 1's pairs (docs/tdg.md, B6): positive-only vs negative-only, then negative vs NAT.
TDG_PAIRS = (("kd", "neg"), ("neg", "nat"))


def _tdg_setting(kind: str | None) -> str:
    """A model's TDG setting: the row of the training kind that made it (train-kd -> kd), else base (not trained
    here)."""
    from rplat.runners.tdg.kinds import TRAINING

    return next((row.setting for row in TRAINING if row.name == kind), "base")


def tdg_report(engine: Engine, experiment: str) -> dict[str, Any]:
    """The paper's Table 2 (greedy accuracy % per subject, micro Avg, gain vs sft; the `evaluations` view) and
    Table 1 (solved-set overlaps kd/neg and neg/nat; the `solved_sets` view), from the latest evaluation of each
    model's greedy sample job in the experiment."""
    from rplat.pipelines import TDG_SETTINGS

    known_experiment(engine, experiment)
    with open_views(engine) as con:
        # Table 2 is the greedy main table: one chain per problem at temperature 0. Each model's latest
        # evaluation counts (job ids grow).
        rows = records(con, """
            SELECT e.job_id, e.sample_job_id, e.model, maker.kind AS maker_kind, e.subject, e.n, e.n_correct,
                   e.accuracy
            FROM evaluations e
            JOIN job_timeline j ON j.job_id = e.job_id
            JOIN job_timeline sample ON sample.job_id = e.sample_job_id AND sample.kind = 'sample'
            LEFT JOIN job_timeline maker ON maker.job_id = e.model_job_id
            WHERE e.experiment = $experiment AND j.kind = 'evaluate' AND j.status = 'succeeded'
              AND e.method = 'greedy' AND e.model IS NOT NULL
              AND coalesce(CAST(json_extract(sample.params, '$.temperature') AS DOUBLE), 0.0) = 0.0
              -- a sample job stored before n_samples had that name says n
              AND coalesce(CAST(coalesce(json_extract(sample.params, '$.n_samples'), json_extract(sample.params, '$.n'))
                                AS BIGINT), 1) = 1
            QUALIFY e.job_id = max(e.job_id) OVER (PARTITION BY e.model)
            ORDER BY e.job_id""", {"experiment": experiment})
        latest: dict[str, dict[str, Any]] = {}  # model name -> its latest evaluation, in evaluate job order
        for r in rows:
            latest.setdefault(r.model, {"setting": _tdg_setting(r.maker_kind), "model": r.model,
                                        "evaluate_job": r.job_id, "sample_job": r.sample_job_id,
                                        "rows": {}})["rows"][r.subject] = r
        if not latest:
            raise UserError(f"experiment {experiment!r} has no evaluated greedy sample jobs yet; run `rplat "
                            "pipeline tdg ...` in it and `rplat runner --until-done`.")
        # setting -> its latest evaluated model (Table 1, the sft base)
        by_setting = {entry["setting"]: entry for entry in latest.values()}
        pairs = [(by_setting[a], by_setting[b]) for a, b in TDG_PAIRS if a in by_setting and b in by_setting]
        overlaps = _overlaps(con, [(ea["evaluate_job"], eb["evaluate_job"]) for ea, eb in pairs]) if pairs else {}
    subjects = sorted({s for e in latest.values() for s in e["rows"] if s != OVERALL})
    sft = by_setting.get("sft")
    sft_avg = sft["rows"][OVERALL].accuracy if sft and OVERALL in sft["rows"] else None
    order = {s: i for i, s in enumerate(TDG_SETTINGS)}
    table2 = []
    for e in sorted(latest.values(), key=lambda e: (order[e["setting"]], e["model"])):
        overall = e["rows"].get(OVERALL)
        avg = overall.accuracy if overall is not None else None
        present = [s for s in subjects if s in e["rows"]]
        intervals = {s: _percent_interval(e["rows"][s]) for s in present}
        avg_interval = _percent_interval(overall) if overall is not None else (None, None)
        table2.append({
            "setting": e["setting"], "model": e["model"], "evaluate_job": e["evaluate_job"],
            "sample_job": e["sample_job"], "n": overall.n if overall is not None else 0,
            "accuracy": {s: 100.0 * e["rows"][s].accuracy for s in present},
            "ci_low": {s: low for s, (low, _) in intervals.items()},
            "ci_high": {s: high for s, (_, high) in intervals.items()},
            "avg": None if avg is None else 100.0 * avg,
            "avg_ci_low": avg_interval[0], "avg_ci_high": avg_interval[1],
            "gain": None if avg is None or not sft_avg else (avg - sft_avg) / sft_avg,
        })
    table1 = []
    for ea, eb in pairs:
        cells = []
        for subject in (*subjects, OVERALL):
            both, solved_a, solved_b, union = overlaps.get(
                (ea["evaluate_job"], eb["evaluate_job"], subject == OVERALL, None if subject == OVERALL else subject),
                (0, 0, 0, 0))
            cells.append({"subject": subject, "intersection": both, "solved_a": solved_a, "solved_b": solved_b,
                          "union": union, "iou": both / union if union else 0.0})
        table1.append({"a": ea["setting"], "b": eb["setting"], "model_a": ea["model"], "model_b": eb["model"],
                       "evaluate_job_a": ea["evaluate_job"], "evaluate_job_b": eb["evaluate_job"], "cells": cells})
    missing = [f"{a}/{b}" for a, b in TDG_PAIRS if a not in by_setting or b not in by_setting]
    return {"experiment": experiment, "subjects": subjects, "sft_model": sft["model"] if sft else None,
            "table2": table2, "table1": table1, "missing_pairs": missing}


def _overlaps(con: duckdb.DuckDBPyConnection, pairs: list[tuple[int, int]]
              ) -> dict[tuple[int, int, bool, str | None], tuple[int, int, int, int]]:
    """For each pair of greedy evaluate jobs (a, b), per subject and overall: how many problems both solve, a
    solves, b solves and either solves; keyed (a, b, overall, subject). A problem without a subject counts only
    overall."""
    rows = records(con, """
        WITH pairs AS (SELECT unnest($a) AS job_a, unnest($b) AS job_b),
        solved AS (
            SELECT p.job_a, p.job_b, s.problem_id, any_value(s.subject) AS subject,
                   bool_or(s.job_id = p.job_a) AS by_a, bool_or(s.job_id = p.job_b) AS by_b
            FROM pairs p JOIN solved_sets s ON s.job_id IN (p.job_a, p.job_b) AND s.method = 'greedy'
            GROUP BY p.job_a, p.job_b, s.problem_id)
        SELECT job_a, job_b, grouping(subject) = 1 AS overall, subject,
               count(*) FILTER (WHERE by_a AND by_b) AS both_solved, count(*) FILTER (WHERE by_a) AS solved_a,
               count(*) FILTER (WHERE by_b) AS solved_b, count(*) AS either
        FROM solved GROUP BY job_a, job_b, GROUPING SETS ((subject), ())""",
                   {"a": [a for a, _ in pairs], "b": [b for _, b in pairs]})
    return {(r.job_a, r.job_b, r.overall, r.subject): (r.both_solved, r.solved_a, r.solved_b, r.either)
            for r in rows if r.overall or r.subject is not None}


# Jobs whose predictions rows a comparison reads: `evaluate` (greedy, sc of a solve or sample job) and
# `aggregate` (greedy, sc and the ASC votes of a sample job).
COMPARABLE_KINDS = ("evaluate", "aggregate")


def _run_credits(con: duckdb.DuckDBPyConnection, text: str) -> dict[str, Any]:
    """A run's label (job, kind, method, model) and its credit per problem, from the `predictions` view."""
    job_id, method = parse_run(text)
    jobs = records(con, "SELECT kind, status, params FROM job_timeline WHERE job_id = $job", {"job": job_id})
    if not jobs or jobs[0].kind not in COMPARABLE_KINDS:
        what = "does not exist" if not jobs else f"is of kind {jobs[0].kind}"
        raise UserError(f"job {job_id} {what}, not an evaluate or aggregate job; see `rplat jobs ls --kind evaluate` "
                        "or `rplat jobs ls --kind aggregate`.")
    job = jobs[0]
    rows = records(con, "SELECT method, problem_id, credit, correct, model FROM predictions WHERE job_id = $job",
                   {"job": job_id})
    methods = sorted({r.method for r in rows})
    if not methods:
        raise UserError(f"{job.kind} job {job_id} ({job.status}) has no predictions yet; compare it once it has "
                        f"succeeded (`rplat jobs show {job_id}`).")
    if method is None and len(methods) > 1:
        raise UserError(f"{job.kind} job {job_id} stored several methods ({', '.join(methods)}); name one as "
                        f"{job_id}:METHOD, e.g. {job_id}:{methods[-1]}.")
    method = method or methods[0]
    if method not in methods:
        raise UserError(f"{job.kind} job {job_id} has no predictions of method {method!r}; its methods are "
                        f"{', '.join(methods)}.")
    mine = [r for r in rows if r.method == method]
    # credit is nullable in the schema; a row without one earns what its correctness says
    credits = {r.problem_id: float(r.credit) if r.credit is not None else float(bool(r.correct)) for r in mine}
    models = sorted({r.model for r in mine if r.model is not None})
    # a job stored before the `unanswered` setting existed dropped unanswered samples
    unanswered = json.loads(job.params or "{}").get("unanswered") or "drop"
    return {"job_id": job_id, "kind": job.kind, "method": method, "model": ", ".join(models) or None,
            "unanswered": unanswered, "credits": credits}


def compare_report(engine: Engine, run_a: str, run_b: str, *, resamples: int = 10_000,
                   seed: int = 0) -> dict[str, Any]:
    """Run A against run B (`JOB[:METHOD]` each) on the problems both predicted: each accuracy with its Wilson
    interval, the difference with a seeded paired bootstrap interval, the exact McNemar p-value and who solves
    what; problems only one run predicted are left out and counted."""
    from rplat.stats import compare_credits

    if not 1 <= resamples <= MAX_RESAMPLES:
        raise UserError(f"--resamples {resamples} is out of range; give 1 to {MAX_RESAMPLES:,} bootstrap resamples "
                        "(10,000 is plenty for a 95% interval).")
    with open_views(engine) as con:
        a, b = _run_credits(con, run_a), _run_credits(con, run_b)
    c = compare_credits(a["credits"], b["credits"], resamples=resamples, seed=seed)
    if not c.n:
        raise UserError(f"runs {run_a} and {run_b} predicted no problem in common ({len(a['credits'])} and "
                        f"{len(b['credits'])} problems); compare runs over the same problems.")

    def side(run: dict[str, Any], credit: float) -> dict[str, Any]:
        low, high = wilson(credit, c.n)
        return {"job_id": run["job_id"], "kind": run["kind"], "method": run["method"], "model": run["model"],
                "unanswered": run["unanswered"], "accuracy": credit / c.n, "ci_low": low, "ci_high": high,
                "left_out": len(run["credits"]) - c.n}

    return {"a": side(a, c.credit_a), "b": side(b, c.credit_b), "n": c.n, "difference": c.difference,
            "ci_low": c.ci_low, "ci_high": c.ci_high, "p_mcnemar": c.p_mcnemar, "both": c.both, "only_a": c.only_a,
            "only_b": c.only_b, "neither": c.neither, "resamples": c.resamples, "seed": c.seed}
