"""The Turning-Dust-into-Gold pages' queries: chains, votes, training curves over the analytics views."""

from __future__ import annotations

import json
from collections.abc import Sequence
from numbers import Real
from typing import Any

import duckdb
import pandas as pd

from rplat.asc import sample_ballots
from rplat.dashboard.queries import CREDIT, ROW_LIMIT, answer_shown, frame, values
from rplat.methods.votes import accuracy_curve
from rplat.stats import wilson

SC = "sc"

# --- chains -----------------------------------------------------------------------------------------


def chain_teachers(con: duckdb.DuckDBPyConnection) -> list[str]:
    return values(con, "SELECT DISTINCT teacher FROM chains ORDER BY 1")


def chain_subjects(con: duckdb.DuckDBPyConnection) -> list[str]:
    return values(con, "SELECT DISTINCT coalesce(subject, '(none)') FROM chains ORDER BY 1")


def chain_levels(con: duckdb.DuckDBPyConnection) -> list[str]:
    return values(con, "SELECT DISTINCT coalesce(level, '(none)') FROM chains ORDER BY 1")


def _chain_filter(teachers: Sequence[str], subjects: Sequence[str], levels: Sequence[str], label: str | None,
                  disagree_only: bool) -> tuple[str, list[Any]]:
    """The WHERE clause the chain table and its counts share; an empty selection means no restriction."""
    where = """(len(?) = 0 OR list_contains(?, teacher))
               AND (len(?) = 0 OR list_contains(?, coalesce(subject, '(none)')))
               AND (len(?) = 0 OR list_contains(?, coalesce(level, '(none)')))
               AND (? IS NULL OR label = ?) AND (NOT ? OR labelers_disagree)"""
    teachers, subjects, levels = list(teachers), list(subjects), list(levels)
    return where, [teachers, teachers, subjects, subjects, levels, levels, label, label, disagree_only]


def chains(con: duckdb.DuckDBPyConnection, teachers: Sequence[str] = (), subjects: Sequence[str] = (),
           levels: Sequence[str] = (), label: str | None = None, disagree_only: bool = False) -> pd.DataFrame:
    """The matching chains, by problem, teacher and sample, with both labelers' verdicts and the label in effect
    (`label_source` says whether a review set it)."""
    where, params = _chain_filter(teachers, subjects, levels, label, disagree_only)
    return frame(con, f"""
        SELECT problem_id, problem, subject, level, teacher, sample_idx, label, label_source, machine_label,
               extracted_answer, gold,
               labeler, hendrycks_correct, math_verify_correct, labelers_disagree, n_chars, chain_id, job_id,
               experiment, text
        FROM chains WHERE {where}
        ORDER BY problem_id, teacher, sample_idx
        LIMIT {ROW_LIMIT}""", params)


def chain_counts(con: duckdb.DuckDBPyConnection, teachers: Sequence[str] = (), subjects: Sequence[str] = (),
                 levels: Sequence[str] = (), label: str | None = None, disagree_only: bool = False
                 ) -> dict[str, int]:
    """Counts over every matching chain (not only the rows shown): pos, neg, problems, problems with a positive."""
    where, params = _chain_filter(teachers, subjects, levels, label, disagree_only)
    row = frame(con, f"""
        SELECT count(*) FILTER (WHERE label = 'pos') AS pos, count(*) FILTER (WHERE label = 'neg') AS neg,
               count(DISTINCT problem_id) AS problems,
               count(DISTINCT problem_id) FILTER (WHERE label = 'pos') AS problems_with_positive
        FROM chains WHERE {where}""", params).iloc[0]
    return {key: int(value) for key, value in row.items()}


def problem_question(con: duckdb.DuckDBPyConnection, problem_id: int) -> str | None:
    """A problem's question, as the chains view carries it."""
    found = values(con, "SELECT any_value(question) FROM chains WHERE problem_id = ?", [problem_id])
    return found[0] if found and isinstance(found[0], str) else None


# --- votes --------------------------------------------------------------------------------------------


def aggregate_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Aggregate jobs with predictions, newest first: their model, experiment and the sample and score-samples jobs
    voted on."""
    return frame(con, """
        SELECT p.job_id, any_value(p.model) AS model, any_value(p.experiment) AS experiment,
               any_value(p.sample_job_id) AS sample_job_id, any_value(p.score_samples_job_id) AS score_samples_job_id,
               count(DISTINCT p.problem_id) AS problems, list_sort(list(DISTINCT p.method)) AS methods
        FROM predictions p JOIN job_timeline j ON j.job_id = p.job_id
        WHERE j.kind = 'aggregate'
        GROUP BY p.job_id ORDER BY p.job_id DESC""")


def votes(con: duckdb.DuckDBPyConnection, aggregate_job: int, disagree_only: bool = False,
          all_failed_only: bool = False) -> pd.DataFrame:
    """Every method's prediction per problem of an aggregate job (long: a row per problem and method).

    disagree_only keeps the problems where some ASC vote names another answer than SC or earns another credit
    (SC's tie of 4 and 6 answers "4" for half the credit; ASC naming 6 alone, or tying them no more, earns all
    of it); all_failed_only those no method earns any credit on (a tie with a right answer in it earns some)."""
    return frame(con, f"""
        WITH run AS (SELECT *, {CREDIT} AS earned FROM predictions WHERE job_id = ?),
        failed AS (SELECT problem_id FROM run GROUP BY problem_id HAVING max(earned) = 0),
        disagree AS (SELECT DISTINCT a.problem_id FROM run a JOIN run s ON s.problem_id = a.problem_id
                     WHERE a.method LIKE 'asc%' AND s.method = '{SC}'
                       AND (a.answer IS DISTINCT FROM s.answer OR a.earned <> s.earned))
        SELECT problem_id, problem, subject, gold, method, answer, correct, credit, vote_mass, tie_size, margin
        FROM run
        WHERE (NOT ? OR problem_id IN (SELECT problem_id FROM disagree))
          AND (NOT ? OR problem_id IN (SELECT problem_id FROM failed))
        ORDER BY problem_id, method = 'greedy' DESC, method = 'sc' DESC, method""",
                 [aggregate_job, disagree_only, all_failed_only])


def votes_wide(long: pd.DataFrame) -> pd.DataFrame:
    """One row per problem, a column per method: `<method>` its answer (a tick when it earns full credit, a tie
    marked with its size and credit), `<method> margin`."""
    if long.empty:
        return pd.DataFrame(columns=["problem_id", "problem", "subject", "gold"])
    credit = long["credit"].fillna(long["correct"].astype(float)).fillna(0.0)
    long = long.assign(shown=[answer_shown(a, t, c) for a, t, c in zip(long["answer"], long["tie_size"], credit,
                                                                        strict=True)])
    methods = list(dict.fromkeys(long["method"]))
    keys = ["problem_id", "problem", "subject", "gold"]
    answers = long.pivot(index=keys, columns="method", values="shown")[methods]
    margins = long.pivot(index=keys, columns="method", values="margin")[methods].add_suffix(" margin")
    columns = [c for m in methods for c in (m, f"{m} margin")]
    return answers.join(margins)[columns].reset_index()


def run_accuracies(con: duckdb.DuckDBPyConnection, aggregate_job: int) -> pd.DataFrame:
    """Each method's accuracy over all problems of an aggregate job, with its 95% Wilson interval."""
    rows = frame(con, """
        SELECT method, n, n_correct, accuracy FROM evaluations WHERE job_id = ? AND subject = 'all'
        ORDER BY method = 'greedy' DESC, method = 'sc' DESC, method""", [aggregate_job])
    return _with_interval(rows, rows["n_correct"], rows["n"])


def samples_of(con: duckdb.DuckDBPyConnection, sample_job: int, score_samples_job: int | None, problem_id: int
               ) -> pd.DataFrame:
    """One problem's samples in a sample job with their answers and (if scored) ranker scores."""
    return frame(con, """
        SELECT s.sample_idx, s.extracted_answer, s.correct, r.score, r.truncated, s.finish_reason, s.text,
               s.sample_id, s.sample_job_id, r.score_samples_job_id
        FROM samples s
        LEFT JOIN sample_scores r ON r.sample_id = s.sample_id AND r.score_samples_job_id = ?
        WHERE s.sample_job_id = ? AND s.problem_id = ?
        ORDER BY s.sample_idx""", [score_samples_job, sample_job, problem_id])


def asc_curve(con: duckdb.DuckDBPyConnection, sample_job: int, score_samples_job: int | None,
              vote_functions: Sequence[str], repeats: int = 20, seed: int = 0) -> pd.DataFrame:
    """Accuracy against the number of samples k (1..n) for SC and each ASC vote function, from the stored
    samples (and scores), by repeated subsampling: method, k, accuracy, n (problems), ci_low, ci_high.

    The ballots are the aggregate job's own (`rplat.asc.sample_ballots`: normalised answers), so the curve at k = n
    is the stored accuracy, and the defaults are `rplat report asc`'s, so both show the same numbers."""
    columns = ["method", "k", "accuracy", "n", "ci_low", "ci_high"]
    b = sample_ballots(con, sample_job, score_samples_job)
    if b is None:
        return pd.DataFrame(columns=columns)
    ks = list(range(1, b.codes.shape[1] + 1))
    # ASC needs a score for every sample; a score-samples job that has not finished leaves SC alone.
    methods = [(SC, "f0"), *((f"asc-{f}", f) for f in vote_functions if b.scores is not None)]
    curve = pd.concat([pd.DataFrame({"method": method, "k": ks,
                                     "accuracy": accuracy_curve(b.codes, b.correct, b.scores, ks, repeats, seed, f)})
                       for method, f in methods], ignore_index=True).assign(n=len(b.problem_ids))
    return _with_interval(curve, curve["accuracy"] * curve["n"], curve["n"])[columns]


def _with_interval(rows: pd.DataFrame, successes: pd.Series, n: pd.Series) -> pd.DataFrame:
    bounds = [wilson(float(c), int(k)) for c, k in zip(successes, n, strict=True)]
    return rows.assign(ci_low=[b[0] for b in bounds], ci_high=[b[1] for b in bounds])


# --- training -------------------------------------------------------------------------------------------


def training_jobs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every job with training metrics, newest first, labelled "kind job N (result name)"."""
    return frame(con, """
        SELECT job_id, any_value(kind) AS kind, any_value(model) AS model, any_value(result_name) AS result_name,
               any_value(experiment) AS experiment, count(*) AS steps, max(step) AS last_step,
               any_value(kind) || ' job ' || job_id || coalesce(' (' || any_value(result_name) || ')', '') AS job
        FROM training_metrics GROUP BY job_id ORDER BY job_id DESC""")


def training_curves(con: duckdb.DuckDBPyConnection, job_ids: Sequence[int]) -> pd.DataFrame:
    """The chosen jobs' metrics against steps, long: job_id, job, step, metric, value. Metrics are loss, lr and
    every numeric key of `extra` (eval_loss among them) at the steps that stored one."""
    rows = frame(con, """
        SELECT job_id, kind || ' job ' || job_id || coalesce(' (' || result_name || ')', '') AS job, step, loss,
               lr, extra
        FROM training_metrics WHERE list_contains(?, job_id) ORDER BY job_id, step""", [[int(j) for j in job_ids]])
    long = [{"job_id": r.job_id, "job": r.job, "step": r.step, "metric": metric, "value": float(value)}
            for r in rows.itertuples()
            for metric, value in [("loss", r.loss), ("lr", r.lr), *_numeric(r.extra)]
            if value is not None and not pd.isna(value)]
    return pd.DataFrame(long, columns=["job_id", "job", "step", "metric", "value"])


STEP, FRACTION = "optimizer step", "fraction of training"
"""The Training page's x axes: a job's steps, or its steps over its last logged step (0 to 1 for every job)."""


def shaped_curves(curves: pd.DataFrame, smoothing: float = 0.0, x: str = STEP) -> pd.DataFrame:
    """training_curves' rows ready to draw: `x` (the step, or the step over the job's last logged step) and
    `smoothed`, the exponential moving average of each job's metric along its steps with weight `smoothing` on the
    past (0: the values themselves; TensorBoard's slider)."""
    if curves.empty:
        return curves.assign(x=pd.Series(dtype=float), smoothed=pd.Series(dtype=float))
    ordered = curves.sort_values(["job_id", "metric", "step"], ignore_index=True)
    last = ordered.groupby("job_id")["step"].transform("max")
    smoothed = ordered.groupby(["job_id", "metric"])["value"].transform(
        lambda v: v.ewm(alpha=1.0 - smoothing, adjust=False).mean())
    return ordered.assign(x=ordered["step"] / last if x == FRACTION else ordered["step"].astype(float),
                          smoothed=smoothed)


def job_params(con: duckdb.DuckDBPyConnection, job_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The jobs' parameters, newest job first."""
    rows = frame(con, "SELECT job_id, CAST(params AS VARCHAR) AS params FROM job_timeline "
                      "WHERE list_contains(?, job_id) ORDER BY job_id DESC", [[int(j) for j in job_ids]])
    return {int(j): json.loads(p) if isinstance(p, str) else {} for j, p in
            zip(rows["job_id"], rows["params"], strict=True)}


def differing_params(params: dict[int, dict[str, Any]], labels: dict[int, str]) -> pd.DataFrame:
    """A row per job and a column per parameter whose value is not the same in every job (absent counts as a
    value: "-"), in the order the jobs are given; a nested parameter is compared key by key ("lora.r")."""
    params = {job: _flat(p) for job, p in params.items()}
    keys = sorted({k for p in params.values() for k in p})
    differ = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in params.values()}) > 1]
    return pd.DataFrame([{"job": labels.get(j, f"job {j}"), **{k: _shown(p.get(k, "-")) for k in differ}}
                         for j, p in params.items()], columns=["job", *differ])


def _flat(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _numeric(extra: str | None) -> list[tuple[str, float]]:
    parsed = json.loads(extra) if isinstance(extra, str) else None
    if not isinstance(parsed, dict):
        return []
    return [(key, float(value)) for key, value in parsed.items()
            if isinstance(value, Real) and not isinstance(value, bool)]


def nat_jobs(con: duckdb.DuckDBPyConnection) -> list[int]:
    return [int(j) for j in values(con, "SELECT DISTINCT job_id FROM nat_w_neg ORDER BY job_id DESC")]


def nat_w_neg(con: duckdb.DuckDBPyConnection, job_id: int) -> pd.DataFrame:
    """A train-nat job's mean w_neg per layer and projection at each logged step."""
    return frame(con, """
        SELECT step, layer, proj, mean_w_neg FROM nat_w_neg WHERE job_id = ? ORDER BY step, layer, proj""",
                 [job_id])
