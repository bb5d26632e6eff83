"""The dashboard's queries: SQL over the rplat.analytics views only, each returning a DataFrame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from rplat import analytics

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
               highest_first: bool) -> pd.DataFrame:
    """Scored and unscored rationales of the chosen sources, by loss delta (unscored last)."""
    return frame(con, f"""
        SELECT rationale_id, extract_job_id, score_job_id, experiment, source, loss_delta, s_with, s_without,
               tau, kept, rationale, preceding, following, dataset, coalesce(document, problem) AS item,
               extractor, scorer
        FROM rationales
        WHERE list_contains(?, coalesce(source, '(none)')) AND (? IS NULL OR kept = ?)
        ORDER BY loss_delta {'DESC' if highest_first else 'ASC'} NULLS LAST, rationale_id
        LIMIT {ROW_LIMIT}""", [list(sources), kept, kept])


# --- predictions, failures, solved sets -----------------------------------------------------------


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


def evaluations(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return frame(con, """
        SELECT job_id, solve_job_id, experiment, method, model, subject, n, n_correct, accuracy
        FROM evaluations ORDER BY experiment, subject, accuracy DESC, job_id""")


def intersection(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str) -> dict[str, Any] | None:
    """Both/only-A/only-B/neither counts over the problems both runs answered; None if they share none."""
    rows = frame(con, """
        SELECT job_id_a, job_id_b, problems, both_solved, only_a, only_b, neither,
               only_a_problem_ids, only_b_problem_ids
        FROM intersections WHERE run_a = ? AND run_b = ?""", [run_a, run_b])
    return None if rows.empty else rows.iloc[0].to_dict()


def predictions_of(con: duckdb.DuckDBPyConnection, run: str, problem_ids: Sequence[int]) -> pd.DataFrame:
    return frame(con, """
        SELECT job_id, solve_job_id, problem_id, problem, subject, answer, gold
        FROM predictions WHERE run = ? AND list_contains(?, problem_id)
        ORDER BY problem_id""", [run, [int(i) for i in problem_ids]])


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
