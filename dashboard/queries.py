"""The dashboard's queries: SQL over the rplat.analytics views only, each returning a DataFrame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from rplat import analytics
from rplat.methods.votes import OVERALL
from rplat.stats import wilson

ROW_LIMIT = 1000
"""Tables show at most this many rows; the filters narrow them down."""


def open_store(database_url: str) -> duckdb.DuckDBPyConnection:
    """The dashboard's one door into the data: the read-only DuckDB connection with the analytics views."""
    return analytics.connect(database_url)


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    # A DuckDB connection must not be shared between threads, and Streamlit runs each session in its own:
    # a cursor is a connection of its own to the same database (same views, same read-only attachment).
    cursor = con.cursor()
    try:
        return cursor.execute(sql, list(params)).df()
    finally:
        cursor.close()


def values(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return frame(con, sql, params).iloc[:, 0].tolist()


# --- rationales -----------------------------------------------------------------------------------


def rationale_sources(con: duckdb.DuckDBPyConnection) -> list[str]:
    return values(con, "SELECT DISTINCT coalesce(source, '(none)') FROM rationales ORDER BY 1")


def rationales(con: duckdb.DuckDBPyConnection, sources: Sequence[str], kept: bool | None,
               highest_first: bool, leak: bool | None = None) -> pd.DataFrame:
    """Scored and unscored rationales of the chosen sources, by loss delta (unscored last); `leak` True keeps only
    the rationales marked as leaks (copies of the text they precede), False only the others."""
    return frame(con, f"""
        SELECT rationale_id, extract_rationales_job_id, score_rationales_job_id, experiment, source, loss_delta,
               s_with, s_without,
               tau, kept, kept_source, machine_kept, overlap, leak, rationale, preceding, following, dataset,
               coalesce(document, problem) AS item, extractor, scorer
        FROM rationales
        WHERE list_contains(?, coalesce(source, '(none)')) AND (? IS NULL OR kept = ?)
          AND (? IS NULL OR leak IS NOT DISTINCT FROM ?)
        ORDER BY loss_delta {'DESC' if highest_first else 'ASC'} NULLS LAST, rationale_id
        LIMIT {ROW_LIMIT}""", [list(sources), kept, kept, leak, leak])


def loss_delta_groups(rows: pd.DataFrame) -> pd.DataFrame:
    """The scored rationales' loss deltas, each in its group for the histogram: leak, kept or dropped."""
    scored = rows[rows["loss_delta"].notna()]
    group = ["leak" if pd.notna(leak) and leak else "kept" if pd.notna(kept) and kept else "dropped"
             for leak, kept in zip(scored["leak"], scored["kept"], strict=True)]
    return pd.DataFrame({"loss_delta": scored["loss_delta"].astype(float), "group": group})


# --- reviews --------------------------------------------------------------------------------------


def reviews_of(con: duckdb.DuckDBPyConnection, target: str, target_id: int) -> pd.DataFrame:
    """One target's reviews (a chain's, a rationale's), oldest first, the one in effect marked."""
    return frame(con, """
        SELECT review_id, created_at, reviewer, machine_value, new_value, reason, undoes, in_effect
        FROM reviews WHERE target = ? AND target_id = ?
        ORDER BY review_id""", [target, target_id])


# --- predictions, failures, intersections ---------------------------------------------------------


def runs(con: duckdb.DuckDBPyConnection, *, with_failures: bool = False) -> list[str]:
    """Evaluated runs ("method / model / job N"), newest first."""
    where = "WHERE correct IS NOT TRUE" if with_failures else ""
    return values(con, f"SELECT run FROM predictions {where} GROUP BY run ORDER BY max(job_id) DESC, run")


def failures(con: duckdb.DuckDBPyConnection, run: str) -> pd.DataFrame:
    # Every column of the view, so that what it gains (say the question) shows up here too.
    return frame(con, """
        SELECT job_id, solve_job_id, problem_id, problem, answer AS prediction, gold,
               * EXCLUDE (job_id, solve_job_id, problem_id, problem, answer, gold, run, correct)
        FROM predictions WHERE run = ? AND correct IS NOT TRUE
        ORDER BY problem_id""", [run])


def step_candidates(con: duckdb.DuckDBPyConnection, solve_job_id: int, problem_id: int) -> pd.DataFrame:
    """Every candidate of every step of the problem's trajectories in that solve job, in order."""
    return frame(con, """
        SELECT job_id, trajectory_id, sample_idx, step_idx, rationale, rationale_mean_logprob, candidate_idx,
               candidate, score, chosen
        FROM step_candidates WHERE job_id = ? AND problem_id = ?
        ORDER BY sample_idx, step_idx, candidate_idx""", [solve_job_id, problem_id])


def accuracies(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every run's accuracy over all its problems with the 95% Wilson interval, as runs are named elsewhere."""
    rows = frame(con, f"""
        SELECT method || ' / ' || coalesce(model, '?') || ' / job ' || job_id AS run, experiment, method, model,
               job_id, n, n_correct, accuracy
        FROM evaluations WHERE subject = '{OVERALL}'
        ORDER BY job_id DESC, method""")
    bounds = [wilson(float(c), int(n)) for c, n in zip(rows["n_correct"], rows["n"], strict=True)]
    return rows.assign(ci_low=[b[0] for b in bounds], ci_high=[b[1] for b in bounds])


def solved_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
    return analytics.solved_runs(con)


def combination_name(runs: Sequence[str], mask: int) -> str:
    members = [run for k, run in enumerate(runs) if mask >> k & 1]
    return "solved by none" if not members else "solved by all" if len(members) == len(runs) > 1 else (
        "solved only by " + ", ".join(members))


def signatures(con: duckdb.DuckDBPyConnection, runs: Sequence[str]) -> pd.DataFrame:
    """One row per combination of `runs` that solves some common problem (exactly those runs), largest first:
    its mask, name, problem count and, per run, whether it is a member."""
    rows = analytics.solved_signatures(con, runs)
    out = pd.DataFrame(rows, columns=["mask", "problems"])
    out.insert(1, "combination", [combination_name(runs, int(m)) for m in out["mask"]])
    for k, run in enumerate(runs):
        out[run] = [bool(int(m) >> k & 1) for m in out["mask"]]
    return out


def signature_problems(con: duckdb.DuckDBPyConnection, runs: Sequence[str], mask: int) -> pd.DataFrame:
    """The common problems of `runs` solved by exactly the runs in `mask`: each with its gold answer and every
    run's answer (a column per run)."""
    keys = ["problem_id", "problem", "dataset", "subject", "gold"]
    long = pd.DataFrame(analytics.signature_answers(con, runs, mask, ROW_LIMIT), columns=[*keys, "run", "answer"])
    if long.empty:
        return pd.DataFrame(columns=[*keys, *runs])
    wide = long.pivot(index=keys, columns="run", values="answer")
    return wide[list(runs)].reset_index().sort_values("problem_id", ignore_index=True)


# --- SQL ------------------------------------------------------------------------------------------


SQL_TIMEOUT = 15.0
"""Seconds a query on the SQL page may run: a page waits for it, and `rplat sql --timeout` runs longer ones."""


def run_sql(con: duckdb.DuckDBPyConnection, sql: str) -> pd.DataFrame:
    """A user's one read-only query, refused exactly as `rplat sql` refuses it (UserError), stopped after
    SQL_TIMEOUT seconds."""
    cursor = con.cursor()  # interrupting it stops this query only, not other sessions' on the same connection
    try:
        columns, rows = analytics.run_query(cursor, sql, timeout=SQL_TIMEOUT,
                                            remedy="narrow it, or run it with `rplat sql --timeout SECONDS`")
    finally:
        cursor.close()
    return pd.DataFrame.from_records(rows, columns=columns)


def view_columns(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    cursor = con.cursor()
    try:
        columns = analytics.view_columns(cursor)
    finally:
        cursor.close()
    return pd.DataFrame([(view, ", ".join(f"{c} {t}" for c, t in cols)) for view, cols in columns.items()],
                        columns=["view", "columns"])


# --- jobs -----------------------------------------------------------------------------------------


def job_status_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return frame(con, "SELECT status, count(*) AS jobs FROM job_timeline GROUP BY status ORDER BY status")


def job_timeline(con: duckdb.DuckDBPyConnection, statuses: Sequence[str], kinds: Sequence[str]) -> pd.DataFrame:
    return frame(con, f"""
        SELECT job_id, kind, status, experiment, model, created_at, started_at, finished_at, queued_seconds,
               duration_seconds, attempts, max_attempts, runner, host, progress_done, progress_total, error
        FROM job_timeline
        WHERE (len(?) = 0 OR list_contains(?, status)) AND (len(?) = 0 OR list_contains(?, kind))
        ORDER BY job_id DESC
        LIMIT {ROW_LIMIT}""", [list(statuses), list(statuses), list(kinds), list(kinds)])


def job_kinds(con: duckdb.DuckDBPyConnection) -> list[str]:
    return values(con, "SELECT DISTINCT kind FROM job_timeline ORDER BY kind")
