"""The dashboard's queries: SQL over the rplat.analytics views only, each returning a DataFrame."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import pandas as pd

from rplat import analytics
from rplat.methods.votes import OVERALL
from rplat.stats import compare_credits, wilson

ROW_LIMIT = 1000
"""Tables that do not page show at most this many rows; the filters narrow them down."""

PAGE_SIZES = [100, 250, 1000]
"""Rows per page of the tables that page through their rows (Chains, Votes, Failures); the first is the default."""

SHORT_ID = 12
"""A problem id longer than this (a 64-character content hash on a MATH store) is shown by its first 8 characters."""
QUESTION_START = 60
"""How much of a question a table shows beside the problem's id."""


def short_problem(column: str = "problem") -> str:
    """SQL of a problem's id as tables show it: itself, or the start of a long hash ("3f9a1c2e…")."""
    return f"CASE WHEN length({column}) > {SHORT_ID} THEN left({column}, 8) || '…' ELSE {column} END"


def question_start(column: str = "question") -> str:
    """SQL of the start of a question, on one line, cut with "…" when longer."""
    flat = f"regexp_replace(trim({column}), '\\s+', ' ', 'g')"
    return (f"CASE WHEN length({flat}) > {QUESTION_START} THEN left({flat}, {QUESTION_START - 1}) || '…' "
            f"ELSE {flat} END")


def search_terms(search: str | None) -> list[str]:
    """The words of a search box: each must match (a problem id, the start of its external id or hash, or a word
    of its question)."""
    return (search or "").split()


def problem_search(terms: Sequence[str], problem_id: str = "problem_id", problem: str = "problem",
                   question: str = "question") -> tuple[str, list[Any]]:
    """SQL condition (and its parameters) that a problem matches every term: its id equal to it, its external id
    (a hash) starting with it, or its question containing it, case-insensitively (ILIKE, the term's own % and _
    taken literally)."""
    conditions, params = [], []
    for term in terms:
        literal = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(f"(CAST({problem_id} AS VARCHAR) = ? OR {problem} ILIKE ? ESCAPE '\\' "
                          f"OR {question} ILIKE ? ESCAPE '\\')")
        params += [term, f"{literal}%", f"%{literal}%"]
    return " AND ".join(conditions) or "TRUE", params


def exact_problem(terms: Sequence[str], problem_id: str = "problem_id", problem: str = "problem"
                  ) -> tuple[str, list[Any]]:
    """SQL of whether a problem is exactly the one searched (its id or external id is the whole search): such a
    problem comes first."""
    if len(terms) != 1:
        return "FALSE", []
    return f"(CAST({problem_id} AS VARCHAR) = ? OR {problem} = ?)", [terms[0], terms[0]]


def rows_caption(offset: int, shown: int, total: int, what: str) -> str:
    """"rows 1,001-2,000 of 120,000 chains"."""
    if shown == 0:
        return f"no {what}"
    return f"rows {offset + 1:,}-{offset + shown:,} of {total:,} {what}"

CREDIT = "coalesce(credit, CAST(correct AS DOUBLE), 0.0)"
"""A prediction's credit: 1, 0 or a tie's share; a row stored without one earns what its correctness says (as in
`rplat report compare`)."""

FAILURES = {"short of full credit": f"{CREDIT} < 1", "answered wrongly (credit 0)": f"{CREDIT} = 0",
            "ties earning part of the credit": f"{CREDIT} > 0 AND {CREDIT} < 1"}
"""The Failures page's choices: which problems of a run it lists, by the credit they earned."""


def open_store(database_url: str) -> duckdb.DuckDBPyConnection:
    """The dashboard's one door into the data: the read-only DuckDB connection with the analytics views."""
    return analytics.connect(database_url)


_stores: dict[str, duckdb.DuckDBPyConnection] = {}
_opening = threading.Lock()


def shared_store(database_url: str) -> duckdb.DuckDBPyConnection:
    """The process's one connection to the store at `database_url` (`open_store`), opened on first use: every
    Streamlit session reads through it (each query on a cursor of its own), and `rplat dashboard` opens it, and
    fills its caches, before the server takes its first request (`rplat.dashboard.serve`)."""
    with _opening:
        if database_url not in _stores:
            _stores[database_url] = open_store(database_url)
        return _stores[database_url]


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
               coalesce(document, problem) AS item, problem_id, extractor, scorer
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
    """Evaluated runs ("method / model / job N"), newest first; with_failures: only those short of full credit on
    some problem (a tie that earned half the credit is such a problem)."""
    where = f"WHERE {CREDIT} < 1" if with_failures else ""
    return values(con, f"SELECT run FROM predictions {where} GROUP BY run ORDER BY max(job_id) DESC, run")


def answer_shown(answer: object, tie_size: object, credit: object, tied: object = None) -> str:
    """An answer as the pages show it: "-" for none, "5 ✓" when it earns full credit, and a tied answer with its
    tie and credit, "6 (tie of 2, credit 0.5)": a tie's answer is only the first of the tied ones; with the tie's
    answers (`tied_answers`, stored by jobs since they were recorded) "6 (tie of 2: 6, 7; credit 0.5)"."""
    text = "-" if answer is None or pd.isna(answer) else str(answer)
    tie = 1 if tie_size is None or pd.isna(tie_size) else int(tie_size)
    earned = 0.0 if credit is None or pd.isna(credit) else float(credit)
    if tie > 1:
        answers = tie_set(tied)
        if answers:
            return f"{text} (tie of {tie}: {tie_listed(answers)}; credit {earned:.3g})"
        return f"{text} (tie of {tie}, credit {earned:.3g})"
    return f"{text} ✓" if earned == 1.0 else text


def tie_set(tied: object) -> list[str | None]:
    """The `tied_answers` of a prediction as a list (None for the no-answer bucket); empty when not recorded."""
    if isinstance(tied, str):
        tied = json.loads(tied)
    if not pd.api.types.is_list_like(tied):  # None, NaN or NA: not recorded
        return []
    return [None if a is None else str(a) for a in tied]


def tie_listed(answers: Sequence[str | None], show: Callable[[str], str] = str) -> str:
    """A tie's answers as one line, each through `show` ("4, 6, no answer")."""
    return ", ".join("no answer" if a is None else show(a) for a in answers)


def run_credit(con: duckdb.DuckDBPyConnection, run: str) -> dict[str, float]:
    """A run's problems, total credit (its accuracy's numerator, as `evaluations` stores it), the problems it
    answered wrongly (credit 0) and the ties that earned part of the credit."""
    row = frame(con, f"""
        SELECT count(*) AS problems, coalesce(sum({CREDIT}), 0) AS credit,
               count(*) FILTER (WHERE {CREDIT} = 0) AS wrong,
               count(*) FILTER (WHERE {CREDIT} > 0 AND {CREDIT} < 1) AS partial
        FROM predictions WHERE run = ?""", [run]).iloc[0]
    return {"problems": int(row["problems"]), "credit": float(row["credit"]), "wrong": int(row["wrong"]),
            "partial": int(row["partial"])}


def _failures_filter(run: str, which: str, search: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause failures and their count share."""
    match, params = problem_search(search_terms(search))
    return f"run = ? AND {FAILURES[which]} AND {match}", [run, *params]


def failures(con: duckdb.DuckDBPyConnection, run: str, which: str = "short of full credit", search: str = "",
             offset: int = 0, limit: int | None = None) -> pd.DataFrame:
    """The run's problems short of full credit (or, by `which` of FAILURES, only those answered wrongly or only
    the ties that earned part of it), those the search matches, `limit` of them from `offset` (all without a
    limit): the problem by its short id and the start of its question, the prediction as shown (a tie marked),
    its credit and tie size, the gold answer, then every other column of the view, so that what it gains (say
    the whole question) shows up here too."""
    where, params = _failures_filter(run, which, search)
    exact, exact_params = exact_problem(search_terms(search))
    page = "" if limit is None else "LIMIT ? OFFSET ?"
    rows = frame(con, f"""
        SELECT job_id, solve_job_id, problem_id, {short_problem()} AS problem, {question_start()} AS question_start,
               answer AS prediction, {CREDIT} AS credit, tie_size, gold,
               * EXCLUDE (job_id, solve_job_id, problem_id, problem, answer, gold, run, correct, credit, tie_size)
        FROM predictions WHERE {where}
        ORDER BY {exact} DESC, problem_id {page}""",
                 [*params, *exact_params, *([] if limit is None else [int(limit), int(offset)])])
    return rows.assign(prediction=[answer_shown(a, t, c, tied) for a, t, c, tied in zip(
        rows["prediction"], rows["tie_size"], rows["credit"], rows["tied_answers"], strict=True)])


def failures_count(con: duckdb.DuckDBPyConnection, run: str, which: str = "short of full credit",
                   search: str = "") -> int:
    """How many problems `failures` lists under these filters (on every page)."""
    where, params = _failures_filter(run, which, search)
    return int(values(con, f"SELECT count(*) FROM predictions WHERE {where}", params)[0])


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


# --- against a baseline --------------------------------------------------------------------------


def job_runs(con: duckdb.DuckDBPyConnection, job_id: int) -> dict[str, str]:
    """An evaluate or aggregate job's runs by method: {method: "method / model / job N"}."""
    rows = frame(con, "SELECT DISTINCT method, run FROM predictions WHERE job_id = ? ORDER BY method", [job_id])
    return dict(zip(rows["method"], rows["run"], strict=True))


def run_predictions(con: duckdb.DuckDBPyConnection, runs: Sequence[str]) -> pd.DataFrame:
    """Every prediction of the runs, with the credit it earned and its tie size."""
    return frame(con, f"""
        SELECT run, job_id, method, problem_id, problem, gold, answer, {CREDIT} AS credit, coalesce(tie_size, 1) AS
               tie_size
        FROM predictions WHERE list_contains(?, run) ORDER BY run, problem_id""", [list(runs)])


def run_ref(job_id: int, method: str) -> str:
    """How `rplat report compare` names a run: JOB:METHOD."""
    return f"{int(job_id)}:{method}"


def baseline_comparison(con: duckdb.DuckDBPyConnection, runs: Sequence[str], baseline: str, *,
                        resamples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Each run against the baseline on the problems both predicted, by `rplat.stats.compare_credits` (what
    `rplat report compare RUN BASELINE` computes, with its defaults): accuracies, their difference with the
    seeded paired bootstrap interval, the exact McNemar p, wins / losses / ties of credit, and the command that
    prints the same numbers."""
    rows = run_predictions(con, [*runs, baseline])
    credits = {run: dict(zip(g["problem_id"].astype(int), g["credit"].astype(float), strict=True))
               for run, g in rows.groupby("run")}
    refs = {run: run_ref(g["job_id"].iloc[0], g["method"].iloc[0]) for run, g in rows.groupby("run")}
    out = []
    for run in runs:
        c = compare_credits(credits.get(run, {}), credits.get(baseline, {}), resamples=resamples, seed=seed)
        out.append({"run": run, "common problems": c.n, "accuracy": c.accuracy_a, "baseline accuracy": c.accuracy_b,
                    "difference": c.difference, "ci_low": c.ci_low, "ci_high": c.ci_high,
                    "McNemar p": c.p_mcnemar, "wins": c.wins, "losses": c.losses, "ties": c.ties,
                    "only run solves": c.only_a, "only baseline solves": c.only_b,
                    "same numbers": f"rplat report compare {refs.get(run, '?')} {refs.get(baseline, '?')}"})
    return pd.DataFrame(out, columns=["run", "common problems", "accuracy", "baseline accuracy", "difference",
                                      "ci_low", "ci_high", "McNemar p", "wins", "losses", "ties", "only run solves",
                                      "only baseline solves", "same numbers"])


def flip_kind(before: float, after: float) -> str:
    """What happened to a problem's credit from the baseline to the run (a tie's share is strictly between)."""
    def state(credit: float) -> str:
        return "right" if credit == 1.0 else "wrong" if credit == 0.0 else "tie"
    was, now = state(before), state(after)
    if was == "tie" and now != "tie":
        return f"tie resolved {now}"
    if now == "tie":
        return "into a tie" if was != "tie" else "tie, other share"
    return "solved" if now == "right" else "lost"


def flips(con: duckdb.DuckDBPyConnection, run: str, baseline: str) -> pd.DataFrame:
    """The common problems where the run earns another credit than the baseline, by problem: both answers as
    shown (ties marked), both credits, the change ("0.5 → 1") and its kind (solved, lost, tie resolved right...)."""
    columns = ["problem_id", "problem", "gold", "baseline answer", "baseline credit", "answer", "credit", "change",
               "flip"]
    rows = run_predictions(con, [run, baseline])
    mine, theirs = rows[rows["run"] == run], rows[rows["run"] == baseline]
    both = mine.merge(theirs, on="problem_id", suffixes=("", "_baseline"))
    both = both[both["credit"] != both["credit_baseline"]].sort_values("problem_id")
    return pd.DataFrame({
        "problem_id": both["problem_id"], "problem": both["problem"], "gold": both["gold"],
        "baseline answer": [answer_shown(a, t, c) for a, t, c in zip(
            both["answer_baseline"], both["tie_size_baseline"], both["credit_baseline"], strict=True)],
        "baseline credit": both["credit_baseline"],
        "answer": [answer_shown(a, t, c) for a, t, c in zip(both["answer"], both["tie_size"], both["credit"],
                                                             strict=True)],
        "credit": both["credit"],
        "change": [f"{b:.3g} → {a:.3g}" for b, a in zip(both["credit_baseline"], both["credit"], strict=True)],
        "flip": [flip_kind(b, a) for b, a in zip(both["credit_baseline"], both["credit"], strict=True)]},
        columns=columns).reset_index(drop=True)


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


def view_columns(con: duckdb.DuckDBPyConnection) -> dict[str, pd.DataFrame]:
    """Each view's columns (column, type), in VIEWS order."""
    cursor = con.cursor()
    try:
        columns = analytics.view_columns(cursor)
    finally:
        cursor.close()
    return {view: pd.DataFrame(cols, columns=["column", "type"]) for view, cols in columns.items()}


# --- jobs -----------------------------------------------------------------------------------------


def job_status_counts(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    return frame(con, "SELECT status, count(*) AS jobs FROM job_timeline GROUP BY status ORDER BY status")


def job_timeline(con: duckdb.DuckDBPyConnection, statuses: Sequence[str], kinds: Sequence[str]) -> pd.DataFrame:
    return frame(con, f"""
        SELECT job_id, kind, status, experiment, model, created_at, started_at, finished_at, queued_seconds,
               duration_seconds, attempts, max_attempts, runner, host, progress_done, progress_total, heartbeat_at,
               error
        FROM job_timeline
        WHERE (len(?) = 0 OR list_contains(?, status)) AND (len(?) = 0 OR list_contains(?, kind))
        ORDER BY job_id DESC
        LIMIT {ROW_LIMIT}""", [list(statuses), list(statuses), list(kinds), list(kinds)])


def job_kinds(con: duckdb.DuckDBPyConnection) -> list[str]:
    return values(con, "SELECT DISTINCT kind FROM job_timeline ORDER BY kind")


def error_headline(error: object) -> str:
    """A job's error in one line for a table: the last line of a traceback (the exception and its message), the
    sentence itself for a user's mistake; the panel below the table shows the whole of it."""
    if error is None or (isinstance(error, float) and pd.isna(error)):
        return ""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def job_events(con: duckdb.DuckDBPyConnection, job_id: int) -> pd.DataFrame:
    """A job's events, oldest first: enqueued, claims, retries with their errors, releases, how it ended."""
    return frame(con, """
        SELECT "at", event, attempt, runner, message FROM job_events WHERE job_id = ? ORDER BY "at", event_id""",
                 [job_id])


def job_row(con: duckdb.DuckDBPyConnection, job_id: int) -> pd.Series:
    """One job's row of job_timeline, its parameters and heartbeat included."""
    return frame(con, "SELECT * FROM job_timeline WHERE job_id = ?", [job_id]).iloc[0]


def job_why(job: pd.Series, now: pd.Timestamp) -> dict[str, str]:
    """What the Jobs page's panel says of a job at `now` (naive UTC, as the store keeps times): its attempts of
    the most allowed, how long ago its runner's heartbeat came (while it runs), its progress and, from the pace
    so far, when it should finish."""
    out = {"status": str(job["status"]), "attempts": f"{int(job['attempts'])} of {int(job['max_attempts'])}"}
    running = job["status"] == "running"
    if running and pd.notna(job["heartbeat_at"]):
        out["heartbeat"] = f"{_duration((now - job['heartbeat_at']).total_seconds())} ago"
    done, total = int(job["progress_done"] or 0), job["progress_total"]
    if pd.notna(total) and int(total) > 0:
        out["progress"] = f"{done} of {int(total)}"
        if running and pd.notna(job["started_at"]):
            left = eta_seconds((now - job["started_at"]).total_seconds(), done, int(total))
            out["ETA"] = "-" if left is None else f"in {_duration(left)}"
    if job["status"] == "queued":
        out["queued for"] = _duration((now - job["created_at"]).total_seconds())
    return out


def eta_seconds(elapsed: float, done: int, total: int) -> float | None:
    """Seconds left at the pace so far (elapsed seconds for `done` of `total` items); None before the first."""
    if done <= 0:
        return None
    return max(0.0, elapsed / done * (total - done))


def _duration(seconds: float) -> str:
    """Seconds as people read them: 42 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    s = max(0, round(seconds))
    for unit, size, sub, sub_size in [("d", 86400, "h", 3600), ("h", 3600, "min", 60), ("min", 60, "s", 1)]:
        if s >= size:
            return f"{s // size} {unit} {s % size // sub_size} {sub}"
    return f"{s} s"


def timeline_segments(jobs: pd.DataFrame, now: pd.Timestamp, min_share: float = 0.004) -> pd.DataFrame:
    """The timeline's bars: per job a `queued` bar from its creation to its start (or to now while it waits) and
    a `ran` bar from its start to its end (or to now while it runs). A bar is at least `min_share` of the whole
    span wide (and at least a second), so a job that took no time still shows; `seconds` is its true length."""
    columns = ["job_id", "kind", "status", "runner", "phase", "start", "end"]
    rows = []
    for job in jobs.itertuples():
        started = job.started_at if pd.notna(job.started_at) else None
        who = (job.job_id, job.kind, job.status, job.runner)
        if job.status == "queued" or started is not None:
            rows.append((*who, "queued", job.created_at, started if started is not None else now))
        if started is not None:
            rows.append((*who, "ran", started, job.finished_at if pd.notna(job.finished_at) else now))
    out = pd.DataFrame(rows, columns=columns)
    if out.empty:
        return out.assign(seconds=pd.Series(dtype=float))
    out["seconds"] = (out["end"] - out["start"]).dt.total_seconds()
    least = max((out["end"].max() - out["start"].min()) * min_share, pd.Timedelta(seconds=1))
    return out.assign(end=out["end"].where(out["end"] - out["start"] >= least, out["start"] + least))


# --- empty stores ---------------------------------------------------------------------------------


def jobs_by_status(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """How many jobs the store holds per status."""
    rows = job_status_counts(con)
    return {str(status): int(n) for status, n in zip(rows["status"], rows["jobs"], strict=True)}


# --- slices ---------------------------------------------------------------------------------------


def positive_shares(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """The share of positive chains per teacher, subject and level (label in effect), with its 95% Wilson
    interval: teacher, subject, level, chains, positive, share, ci_low, ci_high."""
    rows = frame(con, """
        SELECT teacher, coalesce(subject, '(none)') AS subject, coalesce(level, '(none)') AS level,
               count(*) AS chains, count(*) FILTER (WHERE label = 'pos') AS positive
        FROM chains GROUP BY ALL ORDER BY teacher, subject, level""")
    bounds = [wilson(float(p), int(n)) for p, n in zip(rows["positive"], rows["chains"], strict=True)]
    return rows.assign(share=rows["positive"] / rows["chains"], ci_low=[b[0] for b in bounds],
                       ci_high=[b[1] for b in bounds])


def subject_accuracies(con: duckdb.DuckDBPyConnection, runs: Sequence[str]) -> pd.DataFrame:
    """Each run's accuracy per subject, from the credit its predictions earned (as every page counts it), with
    the 95% Wilson interval: run, subject, n, credit, accuracy, ci_low, ci_high."""
    rows = frame(con, f"""
        SELECT run, coalesce(subject, '(none)') AS subject, count(*) AS n, sum({CREDIT}) AS credit
        FROM predictions WHERE list_contains(?, run) GROUP BY ALL ORDER BY subject, run""", [list(runs)])
    bounds = [wilson(float(c), int(n)) for c, n in zip(rows["credit"], rows["n"], strict=True)]
    return rows.assign(accuracy=rows["credit"] / rows["n"], ci_low=[b[0] for b in bounds],
                       ci_high=[b[1] for b in bounds])
