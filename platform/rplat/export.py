"""`rplat export`: a view's rows with the lineage of the jobs that made them, as a JSONL, Parquet or CSV file."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rplat import analytics
from rplat.errors import UserError
from rplat.progress import Progress

# The views that can be exported and the columns naming the jobs that made each row: a rationale is made by its
# extract-rationales job and judged (loss delta, kept, leak) by its score-rationales job, so it carries the
# lineage of both.
EXPORTS: dict[str, tuple[str, ...]] = {
    "rationales": ("extract_rationales_job_id", "score_rationales_job_id"),
    "chains": ("job_id",),
    "samples": ("sample_job_id",),
    "predictions": ("job_id",),
    "sample_scores": ("score_samples_job_id",),
    "ranker_pairs": ("job_id",),
    "step_candidates": ("job_id",),
    "evaluations": ("job_id",),
    "training_metrics": ("job_id",),
    "documents": ("job_id",),  # the import job
    "prefilter_scores": ("job_id",),
}
FILE_TYPES = ("jsonl", "parquet", "csv")
_BATCH_ROWS = 10_000  # rows fetched and written at a time: an export streams, it does not hold the view in memory
DEFAULT_TIMEOUT = 3600.0
"""Seconds an export may take (`--timeout`): a large view streams for minutes; a predicate that runs for ever stops."""


def file_type_of(path: Path, file_type: str | None) -> str:
    """The file type asked for, or the one the file's suffix names."""
    if file_type is not None:
        return file_type
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FILE_TYPES:
        raise UserError(f"cannot tell the file type of {path} from its suffix; give --file-type "
                        f"{', '.join(FILE_TYPES[:-1])} or {FILE_TYPES[-1]}.")
    return suffix


def lineage_query(view: str) -> str:
    """The SELECT over `view` with lineage columns per job column (`{prefix}job_kind`, `{prefix}job_model`,
    `{prefix}job_prompt_template`, `{prefix}job_params` as JSON text). The view's deprecated columns (old names of
    columns it has) may be in a predicate over it but are not exported twice."""
    if view not in EXPORTS:
        raise UserError(f"cannot export {view!r}; the views with lineage are {', '.join(EXPORTS)}.")
    columns, joins = [], []
    for i, job_column in enumerate(EXPORTS[view]):
        prefix = job_column.removesuffix("job_id")
        j, m, t = f"lineage_job{i}", f"lineage_model{i}", f"lineage_template{i}"
        columns.append(f"{j}.kind AS {prefix}job_kind, {m}.name AS {prefix}job_model, "
                       f"{t}.name AS {prefix}job_prompt_template, CAST({j}.params AS VARCHAR) AS {prefix}job_params")
        joins.append(f"LEFT JOIN store.jobs {j} ON {j}.id = v.{job_column} "
                     f"LEFT JOIN store.models {m} ON {m}.id = {j}.model_id "
                     f"LEFT JOIN store.prompt_templates {t} ON {t}.id = {j}.prompt_template_id")
    old = analytics.DEPRECATED_COLUMNS.get(view)
    exclude = f" EXCLUDE ({', '.join(old)})" if old else ""
    return f"SELECT *{exclude} FROM (SELECT v.*, {', '.join(columns)} FROM {view} v {' '.join(joins)}) AS exported"


def _check_where(where: str | None) -> None:
    if where is not None and not where.strip():
        raise UserError("--where is empty; give a predicate over the view's columns, e.g. --where kept, "
                        "or leave --where out.")
    if where is not None:
        analytics._utf8(where, "--where")


def _shape(node: Any) -> Any:
    """A parse tree without the positions of its parts in the text."""
    if isinstance(node, dict):
        return {k: _shape(v) for k, v in node.items() if k != "query_location"}
    if isinstance(node, list):
        return [_shape(v) for v in node]
    return node


def export_query(con: duckdb.DuckDBPyConnection, view: str, where: str | None) -> str:
    """The SQL that exports `view` (`lineage_query`) filtered by the user's predicate, as DuckDB renders the checked
    parse tree: `where` must parse as ONE expression, the WHERE clause of the lineage query and nothing else (no
    second statement, set operation, ORDER BY, LIMIT or anything a closing parenthesis could add), and call nothing
    `rplat sql` refuses. Subqueries in it are allowed: they read the same locked connection (the views, `store`)."""
    query = lineage_query(view)
    _check_where(where)
    if where is None:
        return query
    probe = f"{query} WHERE {where}"
    try:
        analytics._read_only_statement(con, probe)
        tree = analytics.parse(con, probe)
    except UserError as exc:
        raise UserError(f"the --where predicate {where!r} is refused: {exc}") from None
    reference = analytics.parse(con, f"{query} WHERE true")
    [node], [expected] = tree["statements"], reference["statements"]
    if _shape({**node["node"], "where_clause": None}) != _shape({**expected["node"], "where_clause": None}):
        raise UserError(f"the --where predicate {where!r} is refused: give one condition over the view's columns "
                        "with nothing after it (no ORDER BY, LIMIT or UNION), e.g. --where kept.")
    # What runs is what was checked: DuckDB's own rendering of the tree, not the text around the predicate.
    (rendered,) = con.execute(f"SELECT json_deserialize_sql({analytics._quote(json.dumps(tree))})").fetchone() or ("",)
    return str(rendered)


def _batches(reader: pa.RecordBatchReader, progress: Progress) -> Iterator[pa.RecordBatch]:
    for batch in reader:
        yield batch
        progress.advance(batch.num_rows)


def _write(reader: pa.RecordBatchReader, file_type: str, out: IO[Any], progress: Progress) -> int:
    if file_type == "parquet":
        with pq.ParquetWriter(out, reader.schema) as writer:
            for batch in _batches(reader, progress):
                writer.write_batch(batch)
    elif file_type == "csv":
        with pa_csv.CSVWriter(out, reader.schema) as writer:
            for batch in _batches(reader, progress):
                writer.write_batch(batch)
    else:
        for batch in _batches(reader, progress):
            out.write(b"".join(json.dumps(row, default=str, ensure_ascii=False).encode() + b"\n"
                               for row in batch.to_pylist()))
    return progress.done


def _run(con: duckdb.DuckDBPyConnection, query: str, where: str | None, view: str,
         limit: analytics.TimeLimit) -> duckdb.DuckDBPyConnection:
    try:
        return con.execute(query)
    except (duckdb.Error, RuntimeError, KeyboardInterrupt) as exc:
        stopped = limit.stopped(exc)
        if stopped is not None:
            raise stopped from None
        if not isinstance(exc, duckdb.Error):
            raise
        raise UserError(f"the --where predicate {where!r} does not run on the view {view} "
                        f"({analytics._first_line(exc)}); `rplat sql --views` lists its columns.") from None


def export_view(database_url: str, view: str, out: Path, *, file_type: str | None = None,
                where: str | None = None, progress: Progress | None = None,
                timeout: float | None = DEFAULT_TIMEOUT) -> int:
    """Write the rows of `view` satisfying `where` (one expression, checked read-only like `rplat sql`) to `out`,
    atomically (a temporary file beside it, renamed when complete); returns the number of rows. No file is left
    on failure, nor when the export runs past `timeout` seconds or is stopped by Ctrl-C. The rows stream through
    in batches of `_BATCH_ROWS` (memory bounded by a batch, not by the view), counted by `progress` (given: its
    total is counted first, for an ETA; none: silent)."""
    file_type = file_type_of(out, file_type)
    lineage_query(view)
    _check_where(where)
    if timeout is not None:
        analytics.check_timeout(timeout)
    if not out.parent.is_dir():
        raise UserError(f"the directory {out.parent} does not exist; create it or choose another --out.")
    if out.is_dir():
        raise UserError(f"{out} is a directory; give --out a file name, e.g. {out / f'{view}.{file_type}'}.")
    con = analytics.connect(database_url)
    try:
        query = export_query(con, view, where)
        with analytics.TimeLimit(con, timeout, "nothing was written (narrow --where, or give a longer --timeout)",
                                 "the export") as limit:
            if progress is None:
                progress = Progress(f"export {view}", quiet=True)
            else:
                (total,) = _run(con, f"SELECT count(*) FROM ({query})", where, view, limit).fetchone() or (0,)
                progress.set_total(int(total))
            reader = _run(con, query, where, view, limit).to_arrow_reader(_BATCH_ROWS)
            tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
            try:
                with open(tmp, "xb") as f:  # 0o666 less the umask, like any file the user writes
                    rows = _write(reader, file_type, f, progress)
                os.replace(tmp, out)
            except BaseException as exc:
                tmp.unlink(missing_ok=True)
                stopped = limit.stopped(exc)
                if stopped is not None:
                    raise stopped from None
                if isinstance(exc, OSError):
                    raise UserError(f"cannot write {out} ({exc.strerror or exc}); choose a writable --out path."
                                    ) from None
                if isinstance(exc, duckdb.Error | pa.ArrowException):
                    raise UserError(f"exporting {view} failed ({analytics._first_line(exc)}); nothing was written."
                                    ) from None
                raise
    finally:
        con.close()
    return rows
