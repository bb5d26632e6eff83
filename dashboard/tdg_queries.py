"""The Turning-Dust-into-Gold pages' queries: chains, votes, training curves over the analytics views."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from numbers import Real
from typing import Any

import duckdb
import pandas as pd

from rplat import analytics
from rplat.asc import sample_ballots
from rplat.dashboard.queries import (
    CREDIT,
    ROW_LIMIT,
    answer_shown,
    exact_problem,
    frame,
    problem_search,
    question_start,
    search_terms,
    short_problem,
    values,
)
from rplat.methods.votes import accuracy_curve
from rplat.stats import wilson

SC = "sc"

# --- chains -----------------------------------------------------------------------------------------


# The Chains page reads a copy of the chains' rows (without their text) and their problems, made once per change:
# the scanners push no filter down to a SQLite store, so every query over the `chains` view reads and joins every
# chain (a second at 10^5 chains). Chains are only added (import-chains, collect-chains) and relabelled
# (relabel-chains), each by a job, so the jobs table (small) says when to copy again; what a review changes (a label,
# a gold answer) is joined live from the reviews.
_CHAIN_JOBS = "('import-chains', 'collect-chains', 'relabel-chains')"
_SIGNATURE = f"""
    SELECT count(*), max(id), coalesce(sum(progress_done) FILTER (WHERE kind IN {_CHAIN_JOBS}), 0),
           coalesce(sum(attempts) FILTER (WHERE kind IN {_CHAIN_JOBS}), 0),
           count(finished_at) FILTER (WHERE kind IN {_CHAIN_JOBS})
    FROM {analytics.STORE}.jobs"""
_COPY = {
    "chain_rows": """
        SELECT c.id AS chain_id, c.job_id, x.name AS experiment, c.problem_id, c.teacher, c.sample_idx,
               c.extracted_answer, c.n_chars, c.labeler, CAST(c.hendrycks_correct AS BOOLEAN) AS hendrycks_correct,
               CAST(c.math_verify_correct AS BOOLEAN) AS math_verify_correct,
               CAST(c.hendrycks_correct AS BOOLEAN) IS DISTINCT FROM CAST(c.math_verify_correct AS BOOLEAN)
                   AS labelers_disagree,
               c.label AS machine_label
        FROM store.teacher_chains c
        JOIN store.jobs j ON j.id = c.job_id
        LEFT JOIN store.experiments x ON x.id = j.experiment_id
        ORDER BY c.problem_id, c.teacher, c.sample_idx""",
    "chain_problems": """
        SELECT p.id AS problem_id, p.external_id AS problem, p.subject, p.level, p.question,
               p.answer AS machine_gold
        FROM store.problems p WHERE p.id IN (SELECT DISTINCT problem_id FROM store.teacher_chains)
        ORDER BY p.id""",
}
_copying = threading.Lock()  # Streamlit's sessions share one connection; one of them copies at a time
_LABEL = analytics.reviewed_join("rl", "teacher_chains", "label", "r.chain_id")
_GOLD = analytics.reviewed_join("rg", "problems", "answer", "p.problem_id")


def refresh_chains(con: duckdb.DuckDBPyConnection) -> None:
    """Copy the chains' rows and problems into the connection's cache if a job may have changed them since."""
    with _copying:
        cursor = con.cursor()
        try:
            now = list(cursor.execute(_SIGNATURE).fetchone() or ())
            copied = cursor.execute(f"SELECT count(*) FROM duckdb_tables() WHERE schema_name = '{analytics.CACHE}' "
                                    "AND table_name = 'chain_signature'").fetchone()
            if copied and copied[0] and list(cursor.execute(
                    f"SELECT * FROM {analytics.CACHE}.chain_signature").fetchone() or ()) == now:
                return
            with analytics.in_transaction(cursor):
                for name, sql in _COPY.items():
                    cursor.execute(f"CREATE OR REPLACE TABLE {analytics.CACHE}.{name} AS {sql}")
                cursor.execute(f"CREATE OR REPLACE TABLE {analytics.CACHE}.chain_signature AS "
                               "SELECT ? AS a, ? AS b, ? AS c, ? AS d, ? AS e", now)
        finally:
            cursor.close()


def copied_chains(con: duckdb.DuckDBPyConnection) -> int:
    """How many chains the connection's copy holds (made by `refresh_chains`)."""
    return int(values(con, f"SELECT count(*) FROM {analytics.CACHE}.chain_rows")[0])


def _cached(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    refresh_chains(con)
    return frame(con, sql, params)


def chain_teachers(con: duckdb.DuckDBPyConnection) -> list[str]:
    return _cached(con, f"SELECT DISTINCT teacher FROM {analytics.CACHE}.chain_rows ORDER BY 1")["teacher"].tolist()


def chain_subjects(con: duckdb.DuckDBPyConnection) -> list[str]:
    return _cached(con, f"SELECT DISTINCT coalesce(subject, '(none)') AS s FROM {analytics.CACHE}.chain_problems "
                        "ORDER BY 1")["s"].tolist()


def chain_levels(con: duckdb.DuckDBPyConnection) -> list[str]:
    return _cached(con, f"SELECT DISTINCT coalesce(level, '(none)') AS s FROM {analytics.CACHE}.chain_problems "
                        "ORDER BY 1")["s"].tolist()


def _chain_filter(teachers: Sequence[str], subjects: Sequence[str], levels: Sequence[str], label: str | None,
                  disagree_only: bool, search: str | None, problem_id: int | None = None) -> tuple[str, list[Any]]:
    """The matching chains (a CTE `matching`, with `exact`: the problem is the one searched) the chain table and
    its counts share; an empty selection means no restriction. Teacher, subject, level and the search choose
    chains; "disagree" chooses the problems on which the labelers disagree about one of those chains, and keeps
    all of them; then the label chooses among them."""
    terms = search_terms(search)
    match, match_params = problem_search(terms)
    exact, exact_params = exact_problem(terms)
    teachers, subjects, levels = list(teachers), list(subjects), list(levels)
    # The problems first (a few thousand rows), then one pass over the chains with windows over their problems (a
    # CTE read twice would be copied, the reviews' scan with it); the page's question texts are joined after.
    sql = f"""
        WITH matching AS (
            SELECT * FROM (
                SELECT r.*, p.exact, coalesce(rl.new_value, r.machine_label) AS label,
                       CASE WHEN rl.new_value IS NULL THEN 'machine' ELSE 'review' END AS label_source,
                       bool_or(r.labelers_disagree) OVER (PARTITION BY r.problem_id) AS problem_disagrees
                FROM {analytics.CACHE}.chain_rows r
                JOIN (SELECT problem_id, {exact} AS exact FROM {analytics.CACHE}.chain_problems
                      WHERE (len(?) = 0 OR list_contains(?, coalesce(subject, '(none)')))
                        AND (len(?) = 0 OR list_contains(?, coalesce(level, '(none)')))
                        AND {match} AND (? IS NULL OR problem_id = ?)) p USING (problem_id)
                {_LABEL}
                WHERE len(?) = 0 OR list_contains(?, r.teacher))
            WHERE (NOT ? OR problem_disagrees) AND (? IS NULL OR label = ?))"""
    return sql, [*exact_params, subjects, subjects, levels, levels, *match_params, problem_id, problem_id,
                 teachers, teachers, disagree_only, label, label]


def chains(con: duckdb.DuckDBPyConnection, teachers: Sequence[str] = (), subjects: Sequence[str] = (),
           levels: Sequence[str] = (), label: str | None = None, disagree_only: bool = False, search: str = "",
           problem_id: int | None = None, offset: int = 0, limit: int = ROW_LIMIT) -> pd.DataFrame:
    """A page of the matching chains (`limit` from `offset`), the searched problem first and then by problem,
    teacher and sample: the problem by its short id and the start of its question, both labelers' verdicts (and
    whether they disagree) and the label in effect (`label_source` says whether a review set it). No text: a
    problem's chains come with it from `chain_texts`; `problem_id` keeps that problem's chains alone."""
    where, params = _chain_filter(teachers, subjects, levels, label, disagree_only, search, problem_id)
    return _cached(con, f"""{where}
        SELECT problem_id, {short_problem("p.problem")} AS problem, {question_start("p.question")} AS question,
               p.subject, p.level, m.teacher, m.sample_idx, m.label, m.label_source, m.machine_label,
               m.labelers_disagree, m.extracted_answer, coalesce(rg.new_value, p.machine_gold) AS gold, m.labeler,
               m.hendrycks_correct, m.math_verify_correct, m.n_chars, m.chain_id, m.job_id, m.experiment
        FROM (SELECT * FROM matching ORDER BY exact DESC, problem_id, teacher, sample_idx LIMIT ? OFFSET ?) m
        JOIN {analytics.CACHE}.chain_problems p USING (problem_id)
        {_GOLD}
        ORDER BY m.exact DESC, problem_id, m.teacher, m.sample_idx""", [*params, int(limit), int(offset)])


def chain_counts(con: duckdb.DuckDBPyConnection, teachers: Sequence[str] = (), subjects: Sequence[str] = (),
                 levels: Sequence[str] = (), label: str | None = None, disagree_only: bool = False,
                 search: str = "") -> dict[str, int]:
    """Counts over every matching chain (not only the page shown): chains, pos, neg, problems, problems with a
    positive."""
    where, params = _chain_filter(teachers, subjects, levels, label, disagree_only, search)
    row = _cached(con, f"""{where}
        SELECT count(*) AS chains, count(*) FILTER (WHERE label = 'pos') AS pos,
               count(*) FILTER (WHERE label = 'neg') AS neg, count(DISTINCT problem_id) AS problems,
               count(DISTINCT problem_id) FILTER (WHERE label = 'pos') AS problems_with_positive
        FROM matching""", params).iloc[0]
    return {key: int(value) for key, value in row.items()}


def chain_texts(con: duckdb.DuckDBPyConnection, chain_ids: Sequence[int]) -> dict[int, str]:
    """The text of each of these chains (read from the store: the copy leaves texts out)."""
    if not chain_ids:
        return {}
    # integers written into the IN list: a PostgreSQL store is asked for these rows alone
    listed = ", ".join(str(int(c)) for c in chain_ids)
    rows = frame(con, f"SELECT id, text FROM store.teacher_chains WHERE id IN ({listed})")
    return dict(zip(rows["id"].astype(int), rows["text"], strict=True))


def problem_question(con: duckdb.DuckDBPyConnection, problem_id: int) -> str | None:
    """A problem's whole question."""
    found = values(con, "SELECT question FROM problems WHERE problem_id = ?", [problem_id])
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


def _votes_filter(aggregate_job: int, disagree_only: bool, all_failed_only: bool, search: str | None
                  ) -> tuple[str, list[Any]]:
    """CTEs `run` (the job's predictions, with the credit each earned) and `shown` (its problems that the filters
    keep, with `exact`: the problem is the one searched) that the votes and their count share."""
    terms = search_terms(search)
    match, match_params = problem_search(terms)
    exact, exact_params = exact_problem(terms)
    sql = f"""
        WITH run AS (SELECT *, {CREDIT} AS earned FROM predictions WHERE job_id = ?),
        failed AS (SELECT problem_id FROM run GROUP BY problem_id HAVING max(earned) = 0),
        disagree AS (SELECT DISTINCT a.problem_id FROM run a JOIN run s ON s.problem_id = a.problem_id
                     WHERE a.method LIKE 'asc%' AND s.method = '{SC}'
                       AND (a.answer IS DISTINCT FROM s.answer OR a.earned <> s.earned)),
        shown AS (SELECT problem_id, bool_or({exact}) AS exact FROM run
                  WHERE (NOT ? OR problem_id IN (SELECT problem_id FROM disagree))
                    AND (NOT ? OR problem_id IN (SELECT problem_id FROM failed))
                    AND {match}
                  GROUP BY problem_id)"""
    return sql, [aggregate_job, *exact_params, disagree_only, all_failed_only, *match_params]


def votes(con: duckdb.DuckDBPyConnection, aggregate_job: int, disagree_only: bool = False,
          all_failed_only: bool = False, search: str = "", offset: int = 0, limit: int | None = None
          ) -> pd.DataFrame:
    """Every method's prediction per problem of an aggregate job (long: a row per problem and method), the problem
    by its short id and the start of its question; `limit` problems from `offset` (the searched one first, then by
    problem id), all of them without a limit.

    disagree_only keeps the problems where some ASC vote names another answer than SC or earns another credit
    (SC's tie of 4 and 6 answers "4" for half the credit; ASC naming 6 alone, or tying them no more, earns all
    of it); all_failed_only those no method earns any credit on (a tie with a right answer in it earns some);
    `search` those whose id, external id's start or question words match (`rplat.dashboard.queries.problem_search`)."""
    where, params = _votes_filter(aggregate_job, disagree_only, all_failed_only, search)
    page = "" if limit is None else "LIMIT ? OFFSET ?"
    return frame(con, f"""{where},
        paged AS (SELECT problem_id, exact FROM shown ORDER BY exact DESC, problem_id {page})
        SELECT problem_id, {short_problem()} AS problem, {question_start()} AS question, subject, gold, method,
               answer, correct, credit, vote_mass, tie_size, tied_answers, margin
        FROM run JOIN paged USING (problem_id)
        ORDER BY exact DESC, problem_id, method = 'greedy' DESC, method = 'sc' DESC, method""",
                 [*params, *([] if limit is None else [int(limit), int(offset)])])


def votes_count(con: duckdb.DuckDBPyConnection, aggregate_job: int, disagree_only: bool = False,
                all_failed_only: bool = False, search: str = "") -> int:
    """How many problems of the aggregate job `votes` shows under these filters (on every page)."""
    where, params = _votes_filter(aggregate_job, disagree_only, all_failed_only, search)
    return int(values(con, f"{where} SELECT count(*) FROM shown", params)[0])


def votes_wide(long: pd.DataFrame) -> pd.DataFrame:
    """One row per problem, a column per method: `<method>` its answer (a tick when it earns full credit, a tie
    marked with its size and credit), `<method> margin`."""
    keys = ["problem_id", "problem", "question", "subject", "gold"]
    if long.empty:
        return pd.DataFrame(columns=keys)
    credit = long["credit"].fillna(long["correct"].astype(float)).fillna(0.0)
    long = long.assign(shown=[answer_shown(a, t, c, tied) for a, t, c, tied in zip(
        long["answer"], long["tie_size"], credit, long["tied_answers"], strict=True)])
    methods = list(dict.fromkeys(long["method"]))
    order = list(dict.fromkeys(long["problem_id"]))  # the searched problem first, as the rows come
    long = long.fillna({"question": "", "subject": "", "gold": ""})  # a NULL key would drop its problem
    answers = long.pivot(index=keys, columns="method", values="shown")[methods]
    margins = long.pivot(index=keys, columns="method", values="margin")[methods].add_suffix(" margin")
    columns = [c for m in methods for c in (m, f"{m} margin")]
    wide = answers.join(margins)[columns].reset_index()
    return wide.set_index("problem_id").loc[order].reset_index()


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
