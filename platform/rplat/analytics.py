"""Read-only SQL over the store: DuckDB attaches it READ_ONLY and names the useful joins as views."""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import re
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy.engine import make_url

from rplat.errors import UserError

STORE = "store"
"""The catalog the store is attached as: `store.jobs`, `store.rationales`... are its raw tables."""



def reviewed_join(alias: str, table: str, field: str, target_id: str) -> str:
    """A LEFT JOIN of each row's latest review of `field` (rplat.reviews) as `alias`: its `new_value` (NULL: none, or
    an undo back to the machine value) and its `id`."""
    return (f"LEFT JOIN (SELECT target_id, new_value, id FROM store.reviews WHERE target_table = '{table}' AND "
            f"field = '{field}' QUALIFY row_number() OVER (PARTITION BY target_id ORDER BY id DESC) = 1) {alias} "
            f"ON {alias}.target_id = {target_id}")


def _source(alias: str) -> str:
    """Where a value in effect comes from: 'review' (its latest review set it) or 'machine'."""
    return f"CASE WHEN {alias}.new_value IS NULL THEN 'machine' ELSE 'review' END"


GOLD = "coalesce(rg.new_value, p.answer)"  # a problem's gold answer in effect (joined with reviewed_join("rg", ...))
REVIEWED_GOLD = reviewed_join("rg", "problems", "answer", "p.id")


# One view per concept, named as the papers name it. Every row carries the id of the job that wrote it. A column
# showing a table's column has its name; one naming a job is the param naming that job plus `_id`.
VIEWS: dict[str, str] = {
    "job_timeline": """
SELECT j.id AS job_id, j.kind, j.status, x.name AS experiment, m.name AS model, j.priority,
       j.created_at, j.started_at, j.finished_at,
       epoch(j.started_at - j.created_at) AS queued_seconds,
       epoch(j.finished_at - j.started_at) AS duration_seconds,
       j.attempts, j.max_attempts, j.lease_owner AS runner, j.target_host AS host,
       j.progress_done, j.progress_total, j.error, CAST(j.params AS JSON) AS params, j.heartbeat_at
FROM store.jobs j
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models m ON m.id = j.model_id""",
    "job_events": """
SELECT e.id AS event_id, e.job_id, j.kind, e.at, e.event, e.message, e.runner, e.attempt
FROM store.job_events e
JOIN store.jobs j ON j.id = e.job_id""",
    "problems": """
SELECT p.id AS problem_id, p.external_id AS problem, ds.name AS dataset, p.benchmark, p.split, p.subject, p.level,
       p.question, CAST(p.choices AS VARCHAR) AS choices, p.solution, {gold} AS gold, p.answer AS machine_gold,
       {source_rg} AS gold_source, p.content_hash, CAST(p.meta AS VARCHAR) AS meta, p.job_id
FROM store.problems p
JOIN store.datasets ds ON ds.id = p.dataset_id
{reviewed_gold}""",
    "reviews": """
SELECT r.id AS review_id, CASE r.target_table WHEN 'teacher_chains' THEN 'chain' WHEN 'rationales' THEN 'rationale'
       ELSE 'problem' END AS target, r.target_table, r.target_id, r.field, r.machine_value, r.new_value, r.reviewer,
       r.reason, r.undoes, r.created_at,
       r.id = max(r.id) OVER (PARTITION BY r.target_table, r.target_id, r.field) AS in_effect
FROM store.reviews r""",
    "slices": """
SELECT s.id AS slice_id, s.name, s.description, s.predicate, s.metric, s.created_at, s.created_by
FROM store.slices s""",
    "documents": """
SELECT d.id AS document_id, d.external_id AS document, ds.name AS dataset, d.source, d.subset, d.split, d.n_chars,
       d.content_hash, d.text, CAST(d.meta AS VARCHAR) AS meta, d.job_id
FROM store.documents d
JOIN store.datasets ds ON ds.id = d.dataset_id""",
    "prefilter_scores": """
SELECT ps.job_id, x.name AS experiment, ps.document_id, d.external_id AS document, ds.name AS dataset, d.source,
       d.subset, d.n_chars, em.name AS embed_model, ps.cosine, ps.threshold, CAST(ps.passed AS BOOLEAN) AS passed,
       d.text
FROM store.prefilter_scores ps
JOIN store.documents d ON d.id = ps.document_id
JOIN store.datasets ds ON ds.id = d.dataset_id
JOIN store.jobs j ON j.id = ps.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models em ON em.id = ps.embed_model_id""",
    "rationales": """
SELECT r.id AS rationale_id, r.rationale, r.preceding, r.following, r.position, r.left_step, r.source,
       e.document_id, d.external_id AS document, e.problem_id, p.external_id AS problem,
       coalesce(dd.name, pd.name) AS dataset, em.name AS extractor, e.fidelity,
       r.job_id AS extract_rationales_job_id, rs.job_id AS score_rationales_job_id, sm.name AS scorer,
       rs.gamma, rs.s_without, rs.s_with, rs.loss_delta, rs.tau,
       CASE rk.new_value WHEN 'true' THEN TRUE WHEN 'false' THEN FALSE ELSE CAST(rs.kept AS BOOLEAN) END AS kept,
       rs.overlap, CAST(rs.leak AS BOOLEAN) AS leak, x.name AS experiment,
       CAST(rs.kept AS BOOLEAN) AS machine_kept, CASE WHEN rs.id IS NULL THEN NULL ELSE {source_rk} END AS kept_source
FROM store.rationales r
JOIN store.extractions e ON e.id = r.extraction_id
JOIN store.jobs ej ON ej.id = r.job_id
LEFT JOIN store.experiments x ON x.id = ej.experiment_id
LEFT JOIN store.models em ON em.id = e.model_id
LEFT JOIN store.documents d ON d.id = e.document_id
LEFT JOIN store.datasets dd ON dd.id = d.dataset_id
LEFT JOIN store.problems p ON p.id = e.problem_id
LEFT JOIN store.datasets pd ON pd.id = p.dataset_id
LEFT JOIN store.rationale_scores rs ON rs.rationale_id = r.id
LEFT JOIN store.models sm ON sm.id = rs.scorer_model_id
{reviewed_rk}""",
    "predictions": """
SELECT pr.job_id, TRY_CAST(json_extract_string(j.params, '$.solve_job') AS BIGINT) AS solve_job_id,
       TRY_CAST(json_extract_string(j.params, '$.sample_job') AS BIGINT) AS sample_job_id,
       TRY_CAST(coalesce(json_extract_string(j.params, '$.score_samples_job'),
                         json_extract_string(j.params, '$.score_job')) AS BIGINT) AS score_samples_job_id,
       x.name AS experiment, pr.method, m.name AS model,
       pr.method || ' / ' || coalesce(m.name, '?') || ' / job ' || pr.job_id AS run,
       pr.problem_id, p.external_id AS problem, ds.name AS dataset, p.subject, p.level, p.question,
       pr.answer, {gold} AS gold, CAST(pr.correct AS BOOLEAN) AS correct, pr.credit, pr.vote_mass, pr.tie_size,
       pr.margin, CAST(pr.tied_answers AS JSON) AS tied_answers
FROM store.predictions pr
JOIN store.jobs j ON j.id = pr.job_id
JOIN store.problems p ON p.id = pr.problem_id
{reviewed_gold}
JOIN store.datasets ds ON ds.id = p.dataset_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models m ON m.id = pr.model_id""",
    "solved_sets": """
SELECT job_id, solve_job_id, experiment, method, model, run, problem_id, problem, dataset, subject
FROM predictions WHERE correct""",
    "intersections": """
WITH pairs AS (
    SELECT a.run AS run_a, b.run AS run_b, a.problem_id, a.correct IS TRUE AS solved_a, b.correct IS TRUE AS solved_b,
           a.job_id AS job_id_a, a.method AS method_a, a.model AS model_a, a.experiment AS experiment_a,
           b.job_id AS job_id_b, b.method AS method_b, b.model AS model_b, b.experiment AS experiment_b
    FROM predictions a JOIN predictions b ON a.problem_id = b.problem_id AND a.run <> b.run)
SELECT run_a, run_b, job_id_a, method_a, model_a, experiment_a, job_id_b, method_b, model_b, experiment_b,
       count(*) AS n,
       count(*) FILTER (WHERE solved_a AND solved_b) AS both_solved,
       count(*) FILTER (WHERE solved_a AND NOT solved_b) AS only_a,
       count(*) FILTER (WHERE solved_b AND NOT solved_a) AS only_b,
       count(*) FILTER (WHERE NOT solved_a AND NOT solved_b) AS neither,
       coalesce(list_sort(list(problem_id) FILTER (WHERE solved_a AND NOT solved_b)), []) AS only_a_problem_ids,
       coalesce(list_sort(list(problem_id) FILTER (WHERE solved_b AND NOT solved_a)), []) AS only_b_problem_ids
FROM pairs
GROUP BY ALL""",
    "run_solves": """
SELECT pr.job_id, pr.method, pr.method || ' / ' || coalesce(m.name, '?') || ' / job ' || pr.job_id AS run,
       pr.problem_id, CAST(pr.correct AS BOOLEAN) AS correct
FROM store.predictions pr
LEFT JOIN store.models m ON m.id = pr.model_id""",
    "step_candidates": """
SELECT c.job_id, x.name AS experiment, t.method, m.name AS model,
       t.id AS trajectory_id, t.problem_id, p.external_id AS problem, t.sample_idx, s.step_idx,
       s.rationale_text AS rationale, s.rationale_mean_logprob, c.candidate_idx, c.text AS candidate, c.score,
       CAST(c.chosen AS BOOLEAN) AS chosen
FROM store.step_candidates c
JOIN store.steps s ON s.id = c.step_id
JOIN store.solve_trajectories t ON t.id = s.trajectory_id
JOIN store.problems p ON p.id = t.problem_id
JOIN store.jobs j ON j.id = c.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models m ON m.id = j.model_id""",
    "chains": """
SELECT c.job_id, x.name AS experiment, c.id AS chain_id, c.problem_id, p.external_id AS problem, p.subject, p.level,
       p.question, c.teacher, c.sample_idx, c.text, c.extracted_answer, {gold} AS gold,
       coalesce(rl.new_value, c.label) AS label, c.n_chars,
       c.labeler, CAST(c.hendrycks_correct AS BOOLEAN) AS hendrycks_correct,
       CAST(c.math_verify_correct AS BOOLEAN) AS math_verify_correct,
       CAST(c.hendrycks_correct AS BOOLEAN) IS DISTINCT FROM CAST(c.math_verify_correct AS BOOLEAN)
           AS labelers_disagree,
       c.label AS machine_label, {source_rl} AS label_source
FROM store.teacher_chains c
JOIN store.problems p ON p.id = c.problem_id
{reviewed_gold}
{reviewed_rl}
JOIN store.jobs j ON j.id = c.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id""",
    "asc_vs_sc": """
SELECT a.job_id, s.job_id AS sc_job_id, a.experiment, a.model, a.problem_id, a.problem, a.subject, a.gold,
       a.method AS asc_method, a.answer AS asc_answer, a.correct AS asc_correct, a.credit AS asc_credit,
       a.vote_mass AS asc_vote_mass, a.tie_size AS asc_tie_size,
       s.answer AS sc_answer, s.correct AS sc_correct, s.credit AS sc_credit,
       s.vote_mass AS sc_vote_mass, s.tie_size AS sc_tie_size,
       a.answer IS NOT DISTINCT FROM s.answer AS agree
FROM predictions a
JOIN predictions s ON s.problem_id = a.problem_id AND s.model IS NOT DISTINCT FROM a.model
                  AND s.experiment IS NOT DISTINCT FROM a.experiment
WHERE a.method LIKE 'asc%' AND s.method = 'sc'""",
    "samples": """
SELECT sa.job_id AS sample_job_id, x.name AS experiment, m.name AS model, sa.id AS sample_id, sa.problem_id,
       p.external_id AS problem, ds.name AS dataset, p.subject, p.level, sa.sample_idx, sa.decoding,
       sa.text, sa.extracted_answer, {gold} AS gold, CAST(sa.correct AS BOOLEAN) AS correct,
       sa.finish_reason
FROM store.samples sa
JOIN store.problems p ON p.id = sa.problem_id
{reviewed_gold}
JOIN store.datasets ds ON ds.id = p.dataset_id
JOIN store.jobs j ON j.id = sa.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models m ON m.id = sa.model_id""",
    "sample_scores": """
SELECT rs.job_id AS score_samples_job_id, sa.job_id AS sample_job_id, x.name AS experiment, m.name AS model,
       rm.name AS ranker, sa.id AS sample_id, sa.problem_id, p.external_id AS problem, p.subject, sa.sample_idx,
       sa.extracted_answer, CAST(sa.correct AS BOOLEAN) AS correct, rs.score, CAST(rs.truncated AS BOOLEAN) AS truncated
FROM store.ranker_scores rs
JOIN store.samples sa ON sa.id = rs.sample_id
JOIN store.problems p ON p.id = sa.problem_id
JOIN store.jobs j ON j.id = rs.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models m ON m.id = sa.model_id
LEFT JOIN store.models rm ON rm.id = rs.ranker_model_id""",
    "ranker_pairs": """
SELECT rp.job_id, x.name AS experiment, m.name AS encoder, rp.split, rp.epoch, rp.problem_id,
       p.external_id AS problem, p.subject, rp.pos_chain_id, rp.neg_chain_id, rp.s_pos, rp.s_neg, rp.loss,
       rp.s_pos > rp.s_neg AS ranked_right
FROM store.ranker_pairs rp
JOIN store.problems p ON p.id = rp.problem_id
JOIN store.jobs j ON j.id = rp.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models m ON m.id = j.model_id""",
    "training_metrics": """
SELECT t.job_id, j.kind, x.name AS experiment, m.name AS model,
       coalesce(json_extract_string(j.params, '$.adapter_name'), json_extract_string(j.params, '$.ranker_name'))
           AS result_name,
       t.step, t.loss, t.lr, TRY_CAST(json_extract(t.extra, '$.eval_loss') AS DOUBLE) AS eval_loss,
       CAST(t.extra AS VARCHAR) AS extra
FROM store.training_metrics t
JOIN store.jobs j ON j.id = t.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models m ON m.id = j.model_id""",
    "nat_w_neg": """
SELECT w.job_id, x.name AS experiment, w.step, w.layer, w.proj, w.mean_w_neg
FROM store.nat_w_neg w
JOIN store.jobs j ON j.id = w.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id""",
    "evaluations": """
SELECT e.job_id, TRY_CAST(json_extract_string(j.params, '$.solve_job') AS BIGINT) AS solve_job_id,
       x.name AS experiment, e.method, m.name AS model, e.subject, e.n, e.n_correct, e.accuracy,
       TRY_CAST(json_extract_string(j.params, '$.sample_job') AS BIGINT) AS sample_job_id,
       m.job_id AS model_job_id
FROM store.evaluations e
JOIN store.jobs j ON j.id = e.job_id
LEFT JOIN store.experiments x ON x.id = j.experiment_id
LEFT JOIN store.models m ON m.id = e.model_id""",
}
_PARTS = {"gold": GOLD, "reviewed_gold": REVIEWED_GOLD, "source_rg": _source("rg"),
          "reviewed_rl": reviewed_join("rl", "teacher_chains", "label", "c.id"), "source_rl": _source("rl"),
          "reviewed_rk": reviewed_join("rk", "rationales", "kept", "r.id"), "source_rk": _source("rk")}
VIEWS = {name: sql.format(**_PARTS) if "{" in sql else sql for name, sql in VIEWS.items()}

# Names from before a rename, kept so that queries written with them still run; deprecated (docs/glossary.md). A
# view's old column names come last, each the same values as the column that replaced it: {view: {old: current}}.
DEPRECATED_COLUMNS: dict[str, dict[str, str]] = {
    "rationales": {"extract_job_id": "extract_rationales_job_id", "score_job_id": "score_rationales_job_id"},
    "predictions": {"score_job_id": "score_samples_job_id"},
    "sample_scores": {"score_job_id": "score_samples_job_id"},
    "chains": {"chain": "text"},
    "samples": {"chain": "text"},
    "intersections": {"problems": "n"},  # a count: `problems` names a problem dataset
}
DEPRECATED_VIEWS: dict[str, str] = {"nat_alpha": "nat_w_neg"}  # old view -> the view that replaced it

# Functions a read-only query must not call: the scanners' own (they open any SQLite file or PostgreSQL
# server by name, outside the READ_ONLY attachment) and those that run SQL handed to them as a string.
_FORBIDDEN_FUNCTION = re.compile(
    r"^(sqlite_|postgres_|pg_|read_postgres)|^(query|query_table|json_execute_serialized_sql)$", re.IGNORECASE)
# The table functions a query may use (FROM f(...)): they make rows from their arguments or describe the views.
# Every other one reads files (read_text, read_csv, glob, parquet_metadata...), reaches past the attachment,
# shows the connection's settings and secrets, or changes its state (checkpoint, enable_logging).
TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "repeat_row", "json_each", "json_tree", "summary",
    "duckdb_columns", "duckdb_constraints", "duckdb_functions", "duckdb_indexes", "duckdb_keywords",
    "duckdb_schemas", "duckdb_tables", "duckdb_types", "duckdb_views", "pragma_table_info"})
_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALY[SZ]E)?\b", re.IGNORECASE)
_FILE_NAME = re.compile(r"[./\\*~]")  # `FROM 'x.csv'` is a table reference DuckDB resolves by reading the file

MAX_TIMEOUT = 86_400.0
"""The longest time limit a query can be given (`rplat sql --timeout`, `rplat export --timeout`), in seconds."""


class Interrupted(UserError):
    """The user stopped a query with Ctrl-C: one sentence, and the shell's exit code for SIGINT."""

    exit_code = 130


def _extension(package: str, name: str) -> Path:
    """The scanner's `.duckdb_extension` file shipped inside its pip package, built for this DuckDB."""
    root = Path(importlib.import_module(package).__file__ or "").parent
    path = root / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.is_file():
        raise UserError(f"the DuckDB extension {name} for DuckDB {duckdb.__version__} is not installed "
                        f"(no {path}); install {package.replace('_', '-')}=={duckdb.__version__}.")
    return path


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _libpq_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _libpq(url: Any, *, password: bool = True) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq connection string (`host=... dbname=...`), its password left out
    unless `password`."""
    fields = {"host": url.host, "port": url.port, "user": url.username, "password": url.password if password else None,
              "dbname": url.database, **{k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()}}
    return " ".join(f"{k}='{_libpq_escape(str(v))}'" for k, v in fields.items() if v is not None)


def _current_schema(url: Any) -> str:
    """The schema rplat's tables are in: the first existing one on the role's search_path, where the migrations
    created them (`public` unless the role's search_path names another)."""
    import psycopg

    try:
        with psycopg.connect(_libpq(url), connect_timeout=10) as conn:
            row = conn.execute("SELECT current_schema()").fetchone()
    except psycopg.Error as exc:
        raise UserError(f"cannot open the store ({_first_line(exc)}); check RPLAT_DATABASE_URL.") from None
    if row is None or row[0] is None:
        raise UserError("the PostgreSQL role's search_path names no existing schema, so the store has no tables; "
                        "run `rplat init` first.")
    return str(row[0])


def _attach(con: duckdb.DuckDBPyConnection, database_url: str) -> None:
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = Path(url.database or "")
        if not url.database or url.database == ":memory:" or not path.is_file():
            raise UserError(f"there is no SQLite store at {url.database or '(memory)'}; run `rplat init` first.")
        con.execute(f"LOAD {_quote(str(_extension('duckdb_extension_sqlite_scanner', 'sqlite_scanner')))}")
        con.execute(f"ATTACH {_quote(str(path.resolve()))} AS {STORE} (TYPE sqlite, READ_ONLY)")
    elif backend in ("postgresql", "postgres"):
        schema = _current_schema(url)
        con.execute(f"LOAD {_quote(str(_extension('duckdb_extension_postgres_scanner', 'postgres_scanner')))}")
        # The password goes into a secret held in memory, not into the connection string, which
        # duckdb_databases() and DuckDB's error messages show; secrets are shown redacted. The secret is named:
        # DuckDB looks up no default secret (nor reads the persistent ones, disabled in `connect`).
        password = "" if url.password is None else f", PASSWORD {_quote(str(url.password))}"
        con.execute(f"CREATE TEMPORARY SECRET {STORE}_login (TYPE postgres{password})")
        # SCHEMA: only rplat's schema is attached; not pg_catalog (roles, password hashes, server files, other
        # sessions' queries), information_schema or any other schema of the database.
        con.execute(f"ATTACH {_quote(_libpq(url, password=False))} AS {STORE} "
                    f"(TYPE postgres, READ_ONLY, SECRET {STORE}_login, SCHEMA {_quote(schema)})")
    else:
        raise UserError(f"DuckDB can read SQLite and PostgreSQL stores, not {backend}; check RPLAT_DATABASE_URL.")


def connect(database_url: str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the store at `database_url` attached READ_ONLY as `store` and the VIEWS defined;
    locked: it downloads nothing, reads and writes no file, attaches nothing more and cannot be reconfigured.

    No temporary directory (DuckDB's default, `.tmp` under the working directory, would stay readable): a query
    larger than memory fails instead of spilling. Once external access is off, the only path DuckDB still allows
    is the attached SQLite file itself, which `parse` refuses to read as a file (docs/security.md)."""
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False, "temp_directory": "",
                                             "allow_persistent_secrets": False})
    try:
        try:
            _attach(con, database_url)
        except duckdb.Error as exc:
            raise UserError(f"DuckDB cannot open the store ({_first_line(exc)}); check RPLAT_DATABASE_URL.") from None
        for name, sql in VIEWS.items():
            old = "".join(f", {new} AS {old}" for old, new in DEPRECATED_COLUMNS.get(name, {}).items())
            con.execute(f"CREATE VIEW {name} AS SELECT *{old} FROM ({sql})")
        for old, new in DEPRECATED_VIEWS.items():
            con.execute(f"CREATE VIEW {old} AS SELECT * FROM {new}")
        _create_cache(con)
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        directories = readable_directories(con)
        if directories:
            raise RuntimeError(f"DuckDB can still read the directories {directories}")
    except BaseException:
        con.close()
        raise
    return con


def readable_directories(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The directories a locked connection may still read files in (DuckDB's `allowed_directories`): none."""
    (value,) = con.execute("SELECT current_setting('allowed_directories')").fetchone() or ([],)
    return list(value)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__


def _references(node: Any) -> Iterator[tuple[str, str]]:
    """("function", name), ("table function", name) and ("table", name) for every function call and table
    reference in a tree `json_serialize_sql` made."""
    if isinstance(node, dict):
        if node.get("class") == "FUNCTION" and isinstance(node.get("function_name"), str):
            yield "function", node["function_name"]
        if node.get("type") == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
            yield "table function", str(node["function"].get("function_name"))
        if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
            yield "table", node["table_name"]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def parse(con: duckdb.DuckDBPyConnection, query: str) -> dict[str, Any]:
    """DuckDB's parse tree of `query` (one SELECT-like statement) as `json_serialize_sql` gives it; refused if it
    is not a plain query or calls anything able to reach past the READ_ONLY attachment: a file, a setting, the
    scanners' own functions."""
    # The query as a quoted literal, not a bound parameter: binding a Python value makes DuckDB import pandas.
    tree = json.loads(con.execute(f"SELECT json_serialize_sql({_quote(query)})").fetchone()[0])  # type: ignore[index]
    if tree.get("error"):
        raise UserError("only plain queries run here (SELECT, SHOW, DESCRIBE, EXPLAIN SELECT), not PRAGMA or "
                        "other statements; the store is read-only.")
    for kind, name in _references(tree):
        if (kind == "function" and _FORBIDDEN_FUNCTION.search(name)
                or kind == "table function" and name.lower() not in TABLE_FUNCTIONS):
            raise UserError(f"the function {name} reaches outside the read-only views and cannot be used here; "
                            "query the views or the `store` tables instead.")
        if kind == "table" and _FILE_NAME.search(name):
            raise UserError(f"{name!r} names a file and queries here read no files; query the views or the "
                            "`store` tables instead.")
    return dict(tree)


def _utf8(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(f"{what} holds bytes that are not UTF-8 text (at character {exc.start + 1}); "
                        "type it again as UTF-8.") from None


def _read_only_statement(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one query in `sql` (SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN), as DuckDB parsed
    it, if it calls no function able to reach past the READ_ONLY attachment; anything else is refused."""
    _utf8(sql, "the query")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"the query is not valid SQL ({_first_line(exc)}).") from None
    if len(statements) != 1:
        raise UserError(f"give exactly one query, not {len(statements)} statements.")
    statement = statements[0]
    kind = statement.type.name
    if kind not in ("SELECT", "EXPLAIN"):
        raise UserError(f"only read-only queries run here (SELECT, SHOW, DESCRIBE, EXPLAIN), not {kind}; "
                        "the store is read-only.")
    parse(con, _EXPLAIN.sub("", statement.query) if kind == "EXPLAIN" else statement.query)
    return statement.query


def check_timeout(seconds: float, option: str = "--timeout") -> float:
    """`seconds` if it is a time limit a query can have: more than 0, at most a day."""
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT:
        raise UserError(f"{option} must be a number of seconds above 0 and at most {MAX_TIMEOUT:g} (a day), "
                        f"not {seconds:g}.")
    return seconds


class TimeLimit:
    """Interrupts what runs on `con` once `seconds` have passed (DuckDB has no statement timeout: a timer thread
    calls `con.interrupt()`), and words how a query ended early: past its time limit, or stopped by Ctrl-C."""

    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float | None, remedy: str,
                 what: str = "the query") -> None:
        self.con, self.seconds, self.remedy, self.what = con, seconds, remedy, what
        self.expired = False
        self._timer: threading.Timer | None = None

    def __enter__(self) -> TimeLimit:
        if self.seconds is not None:
            self._timer = threading.Timer(self.seconds, self._expire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        self.expired = True
        with contextlib.suppress(duckdb.Error):  # closed meanwhile: nothing left to stop
            self.con.interrupt()

    def stopped(self, exc: BaseException) -> UserError | None:
        """The sentence for `exc` if it is this query being stopped (time limit or Ctrl-C), else None."""
        if self.expired:
            return UserError(f"{self.what} ran past its time limit of {self.seconds:g} s and was stopped; "
                             f"{self.remedy}.")
        if isinstance(exc, KeyboardInterrupt | duckdb.InterruptException) or (
                isinstance(exc, RuntimeError | OSError) and "interrupted" in str(exc).lower()):
            # DuckDB's own Ctrl-C handling raises without stopping the query's worker threads, which would then run
            # on (and `close()` wait for them): stop them.
            with contextlib.suppress(duckdb.Error):
                self.con.interrupt()
            return Interrupted(f"{self.what} was stopped by Ctrl-C before it finished.")
        return None

    def failed(self, exc: BaseException) -> UserError:
        """The sentence for `exc`, raised while the query ran."""
        stopped = self.stopped(exc)
        if stopped is not None:
            return stopped
        if isinstance(exc, duckdb.Error):
            return UserError(f"the query failed ({_first_line(exc)}).")
        raise exc


TIMEOUT_REMEDY = "narrow the query or give a longer --timeout"
_STOPPABLE = (duckdb.Error, RuntimeError, KeyboardInterrupt)


def run_query(con: duckdb.DuckDBPyConnection, sql: str, timeout: float | None = None,
              remedy: str = TIMEOUT_REMEDY) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one read-only query on a `connect()`ed database, for at most `timeout` seconds: (column names, rows);
    any refusal or error is a UserError of one sentence (Ctrl-C: `Interrupted`)."""
    query = _read_only_statement(con, sql)
    with TimeLimit(con, timeout, remedy) as limit:
        try:
            cursor = con.execute(query)
            columns = [d[0] for d in cursor.description or []]
            return columns, cursor.fetchall()
        except _STOPPABLE as exc:
            raise limit.failed(exc) from None


def stream_query(con: duckdb.DuckDBPyConnection, sql: str, batch_rows: int = 10_000, timeout: float | None = None,
                 remedy: str = TIMEOUT_REMEDY) -> tuple[list[str], Iterator[list[tuple[Any, ...]]]]:
    """Like `run_query`, but the rows come in lists of at most `batch_rows` as they are read, so the caller holds
    one batch, not the result; consume them before closing `con`. The time limit runs until the last batch."""
    query = _read_only_statement(con, sql)
    limit = TimeLimit(con, timeout, remedy).__enter__()
    try:
        cursor = con.execute(query)
    except _STOPPABLE as exc:
        limit.__exit__()
        raise limit.failed(exc) from None

    def batches() -> Iterator[list[tuple[Any, ...]]]:
        try:
            while True:
                try:
                    rows = cursor.fetchmany(batch_rows)
                except _STOPPABLE as exc:
                    raise limit.failed(exc) from None
                if not rows:
                    return
                yield rows
        finally:
            limit.__exit__()

    return [d[0] for d in cursor.description or []], batches()


def view_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    """Each view's columns and their DuckDB types, in VIEWS order."""
    rows = con.execute("SELECT table_name, column_name, data_type FROM duckdb_columns() "
                       "WHERE database_name = current_database() AND schema_name = 'main' "
                       "ORDER BY table_name, column_index").fetchall()
    columns: dict[str, list[tuple[str, str]]] = {name: [] for name in VIEWS}
    for table, column, data_type in rows:
        if table in columns:
            columns[table].append((column, data_type))
    return columns


# --- N-way intersections ----------------------------------------------------------------------------

MAX_RUNS = 63
"""An intersection's combination is a bit mask over the chosen runs (bit k: runs[k] solves the problem) that fits a
signed 64-bit integer, in DuckDB and in SQLite."""

CACHE = "cache"
"""The schema of the connection's own copy of the evaluated runs' predictions: the scanners push no filter down to a
SQLite store, so every query over `predictions` or `run_solves` reads the whole table (seconds at 10^6 rows); the
copy reads it once per new evaluation, keyed by a small integer per run, with each problem's details once."""

_refreshing = threading.Lock()  # Streamlit's sessions share one connection; one of them refreshes at a time


def _create_cache(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"CREATE SCHEMA {CACHE}")
    # Every evaluated job copied so far, also one whose evaluation has no prediction (an empty problem set).
    con.execute(f"CREATE TABLE {CACHE}.jobs (job_id BIGINT)")
    con.execute(f"CREATE TABLE {CACHE}.runs (run_key INTEGER, run VARCHAR, job_id BIGINT, method VARCHAR)")
    con.execute(f"CREATE TABLE {CACHE}.run_solves (run_key INTEGER, problem_id BIGINT, correct BOOLEAN, "
                "answer VARCHAR)")
    con.execute(f"CREATE TABLE {CACHE}.problems (problem_id BIGINT, problem VARCHAR, dataset VARCHAR, "
                "subject VARCHAR, gold VARCHAR)")


def _literal(value: int | str) -> str:
    return str(int(value)) if isinstance(value, int) else _quote(value)


def solved_problems_sql(source: str, run_column: str, runs: Sequence[int | str]) -> str:
    """SQL (DuckDB's and SQLite's alike) of each problem that every one of `runs` (values of `run_column` in
    `source`) answered, with its mask: the sum of 2^k over the runs[k] that solve it. The runs are literals (run
    names are quoted, keys are integers), so each row costs one CASE, not a lookup in a list."""
    values = [_literal(run) for run in runs]
    bits = " ".join(f"WHEN {v} THEN {1 << k}" for k, v in enumerate(values))
    return f"""
SELECT problem_id, mask FROM (
    SELECT problem_id, count(*) AS answered, sum(CASE WHEN correct THEN CASE {run_column} {bits} END ELSE 0 END) AS mask
    FROM {source} WHERE {run_column} IN ({", ".join(values)})
    GROUP BY problem_id) AS per_problem
WHERE answered = {len(values)}"""


def signatures_sql(source: str, run_column: str, runs: Sequence[int | str]) -> str:
    """SQL of how many common problems of `runs` each combination of them solves, exactly (mask: those runs)."""
    return (f"SELECT mask, count(*) AS problems FROM ({solved_problems_sql(source, run_column, runs)}) AS solved "
            "GROUP BY mask ORDER BY problems DESC, mask")


@contextlib.contextmanager
def in_transaction(cursor: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """What `cursor` runs inside is committed together (a cache refreshed whole), or rolled back on any error."""
    cursor.begin()
    try:
        yield
    except BaseException:
        cursor.rollback()
        raise
    cursor.commit()


def refresh_solves(con: duckdb.DuckDBPyConnection) -> None:
    """Copy the predictions of every run evaluated since the last refresh into the connection's cache. A job writes
    its predictions and evaluations in one transaction and never changes them, so the small evaluations table
    says which runs exist and a run once copied stays right."""
    with _refreshing:
        cursor = con.cursor()
        try:
            new = [r[0] for r in cursor.execute(
                f"SELECT DISTINCT job_id FROM store.evaluations "
                f"WHERE job_id NOT IN (SELECT job_id FROM {CACHE}.jobs) ORDER BY job_id").fetchall()]
            if not new:
                return
            with in_transaction(cursor):
                cursor.execute("CREATE TEMP TABLE fresh AS SELECT job_id, method, run, problem_id, problem, dataset, "
                               "subject, gold, answer, correct FROM predictions WHERE list_contains(?, job_id)", [new])
                cursor.execute(f"""INSERT INTO {CACHE}.runs
                    SELECT (SELECT count(*) FROM {CACHE}.runs) + row_number() OVER (ORDER BY job_id, method) - 1,
                           run, job_id, method
                    FROM fresh GROUP BY run, job_id, method""")
                # Sorted by run, so that a query for a few runs skips the other runs' row groups.
                cursor.execute(f"""INSERT INTO {CACHE}.run_solves
                    SELECT r.run_key, f.problem_id, f.correct, f.answer
                    FROM fresh f JOIN {CACHE}.runs r USING (job_id, method)
                    ORDER BY r.run_key, f.problem_id""")
                cursor.execute(f"""INSERT INTO {CACHE}.problems
                    SELECT DISTINCT problem_id, problem, dataset, subject, gold FROM fresh
                    WHERE problem_id NOT IN (SELECT problem_id FROM {CACHE}.problems)""")
                cursor.execute(f"INSERT INTO {CACHE}.jobs SELECT unnest(?)", [new])
                cursor.execute("DROP TABLE fresh")
        finally:
            cursor.close()


def _fetch(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    refresh_solves(con)
    cursor = con.cursor()  # a connection of its own: the caller's may be in use by another thread
    try:
        return cursor.execute(sql, params).fetchall()
    finally:
        cursor.close()


def solved_runs(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The evaluated runs, newest evaluation first."""
    return [r[0] for r in _fetch(con, f"SELECT run FROM {CACHE}.runs ORDER BY job_id DESC, run")]


def _run_keys(con: duckdb.DuckDBPyConnection, runs: Sequence[str]) -> list[int]:
    chosen = list(dict.fromkeys(runs))
    if not chosen:
        raise UserError("choose at least one run to intersect.")
    if len(chosen) > MAX_RUNS:
        raise UserError(f"an intersection takes at most {MAX_RUNS} runs, not {len(chosen)}; choose fewer.")
    keys = dict(_fetch(con, f"SELECT run, run_key FROM {CACHE}.runs"))
    unknown = [r for r in chosen if r not in keys]
    if unknown:
        raise UserError(f"there is no evaluated run {unknown[0]!r}; `rplat sql \"SELECT DISTINCT run FROM "
                        "predictions\"` lists them.")
    return [int(keys[r]) for r in chosen]


def solved_signatures(con: duckdb.DuckDBPyConnection, runs: Sequence[str]) -> list[tuple[int, int]]:
    """(mask, problems) for every combination of `runs` that some common problem has, largest first: bit k of mask
    says runs[k] solves those problems, the others answered them wrongly (mask 0: nobody solves them)."""
    sql = signatures_sql(f"{CACHE}.run_solves", "run_key", _run_keys(con, runs))
    return [(int(mask), int(n)) for mask, n in _fetch(con, sql)]


def signature_answers(con: duckdb.DuckDBPyConnection, runs: Sequence[str], mask: int, limit: int
                      ) -> list[tuple[int, str, str | None, str | None, str | None, str, str | None]]:
    """(problem_id, problem, dataset, subject, gold, run, answer) of each of `runs` for (at most `limit` of) their
    common problems solved by exactly the runs in `mask`, by problem id."""
    keys = _run_keys(con, runs)
    solved = solved_problems_sql(f"{CACHE}.run_solves", "run_key", keys)
    return _fetch(con, f"""
        WITH chosen AS (SELECT problem_id FROM ({solved}) WHERE mask = $mask ORDER BY problem_id LIMIT $limit)
        SELECT p.problem_id, p.problem, p.dataset, p.subject, p.gold, r.run, s.answer
        FROM chosen c
        JOIN {CACHE}.problems p USING (problem_id)
        JOIN {CACHE}.run_solves s ON s.problem_id = c.problem_id AND list_contains($keys, s.run_key)
        JOIN {CACHE}.runs r ON r.run_key = s.run_key
        ORDER BY p.problem_id, list_position($keys, s.run_key)""", {"mask": mask, "limit": limit, "keys": keys})
