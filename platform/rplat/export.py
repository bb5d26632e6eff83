"""`rplat export`: a view's rows with the lineage of the jobs that made them, as a JSONL, Parquet or CSV file or a
Hugging Face `save_to_disk` directory with a dataset card; with a shape (rplat.shapes), in a trainer's format."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import duckdb
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from rplat import analytics
from rplat.errors import UserError
from rplat.progress import Progress
from rplat.shapes import Pairing, Shape, parse_pairing, shape_of

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
    "problems": ("job_id",),  # the import job
}
FILE_TYPES = ("jsonl", "parquet", "csv", "hf")
HF_DATA_FILE = "data-00000-of-00001.arrow"  # the one shard of a save_to_disk directory, named as datasets names it
_BATCH_ROWS = 10_000  # rows fetched and written at a time: an export streams, it does not hold the view in memory
DEFAULT_TIMEOUT = 3600.0
"""Seconds an export may take (`--timeout`): a large view streams for minutes; a predicate that runs for ever stops."""


def file_type_of(path: Path, file_type: str | None) -> str:
    """The file type asked for, or the one the file's suffix names."""
    if file_type is not None:
        return file_type
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FILE_TYPES[:-1]:
        raise UserError(f"cannot tell the file type of {path} from its suffix; give --file-type "
                        f"{', '.join(FILE_TYPES[:-1])} or {FILE_TYPES[-1]} (a Hugging Face dataset directory).")
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


def _shaped(batches: Iterator[pa.RecordBatch], shape: Shape, pairing: Pairing) -> Iterator[pa.RecordBatch]:
    """The shape's rows of the view's batches, in batches of at most `_BATCH_ROWS` (a group spanning two batches of
    the view is one group: the rows flow through one generator)."""
    rows = shape.rows((row for batch in batches for row in batch.to_pylist()), pairing)
    while chunk := list(itertools.islice(rows, _BATCH_ROWS)):
        yield pa.RecordBatch.from_pylist(chunk, schema=shape.schema)


class _Jobs:
    """The ids of the jobs named by the rows written (every column ending in `job_id`): the card's lineage."""

    def __init__(self) -> None:
        self.ids: set[int] = set()

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for name in batch.schema.names:
                if name.endswith("job_id") and pa.types.is_integer(batch.schema.field(name).type):
                    self.ids.update(v for v in batch.column(name).to_pylist() if v is not None)
            yield batch


def _write(batches: Iterator[pa.RecordBatch], schema: pa.Schema, file_type: str, out: IO[Any],
           metadata: Callable[[int], dict[str, Any]]) -> int:
    """Write `batches` to `out` (a file open for writing); returns the number of rows. Parquet keeps the export's
    `metadata` (given the number of rows, once every batch is written) under the key `rplat`."""
    rows = 0
    if file_type == "parquet":
        with pq.ParquetWriter(out, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
            writer.add_key_value_metadata({"rplat": json.dumps(metadata(rows), default=str)})
    elif file_type == "csv":
        with pa_csv.CSVWriter(out, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
    else:
        for batch in batches:
            out.write(b"".join(json.dumps(row, default=str, ensure_ascii=False).encode() + b"\n"
                               for row in batch.to_pylist()))
            rows += batch.num_rows
    return rows


def _write_hf(batches: Iterator[pa.RecordBatch], schema: pa.Schema, directory: Path) -> tuple[int, Any]:
    """Write `batches` as the one Arrow shard of a `save_to_disk` directory (datasets' own ArrowWriter, batch by
    batch); returns the number of rows and the features. `_finish_hf` writes the rest."""
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    features = Features.from_arrow_schema(schema)
    writer = ArrowWriter(features=features, path=str(directory / HF_DATA_FILE))
    try:
        for batch in batches:
            writer.write_table(pa.Table.from_batches([batch], schema=schema))
        rows, _ = writer.finalize()
    finally:
        writer.close()
    return rows, features


def _finish_hf(directory: Path, features: Any, metadata: dict[str, Any], card: str) -> None:
    """The files beside the shard that make `directory` what `Dataset.save_to_disk` writes (`state.json`,
    `dataset_info.json`, the export's metadata as the description), and the card, README.md."""
    from datasets import DatasetInfo

    DatasetInfo(description=json.dumps(metadata, default=str), features=features).write_to_directory(
        str(directory), pretty_print=True)
    state = {"_data_files": [{"filename": HF_DATA_FILE}], "_fingerprint": secrets.token_hex(8),
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": None}
    (directory / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (directory / "README.md").write_text(card, encoding="utf-8")


def _cell(value: Any) -> str:
    return "-" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def job_lineage(con: duckdb.DuckDBPyConnection, job_ids: set[int]) -> list[dict[str, Any]]:
    """Each job's id, kind, model and prompt template (name and content hash), by id."""
    if not job_ids:
        return []
    cursor = con.execute(
        "SELECT j.id, j.kind, m.name, t.name, t.content_hash FROM store.jobs j "
        "LEFT JOIN store.models m ON m.id = j.model_id "
        "LEFT JOIN store.prompt_templates t ON t.id = j.prompt_template_id "
        f"WHERE j.id IN ({', '.join(str(int(i)) for i in sorted(job_ids))}) ORDER BY j.id")
    return [dict(zip(("job_id", "kind", "model", "prompt_template", "prompt_hash"), row, strict=True))
            for row in cursor.fetchall()]


def dataset_card(metadata: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    """The README.md of an exported Hugging Face dataset: what it holds and the jobs, models and prompts behind it."""
    shape, view = metadata["shape"], metadata["view"]
    title = f"{shape} rows from the rplat view {view}" if shape else f"rows of the rplat view {view}"
    command = " ".join(part for part in (
        f"rplat export {view}", f"--where {json.dumps(metadata['where'])}" if metadata["where"] is not None else "",
        f"--shape {shape}" if shape else "", metadata.get("pairing_options", ""), "--file-type hf") if part)
    lines = ["---", "tags:", "- rplat", "---", f"# {title}", "",
             f"{metadata['rows']} rows, written by `{command}`. Load them with "
             "`datasets.load_from_disk(\"DIR\")`; every row carries the ids of the store rows it came from.", ""]
    if metadata.get("pairing"):
        lines += [f"Pairing rule: {metadata['pairing']}.", ""]
    models = sorted({j["model"] for j in jobs if j["model"]})
    hashes = sorted({j["prompt_hash"] for j in jobs if j["prompt_hash"]})
    lines += ["## Lineage", "", f"Models: {', '.join(models) or 'none'}.", "",
              f"Prompt hashes: {', '.join(hashes) or 'none'}.", "",
              "| job | kind | model | prompt template | prompt hash |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {j['job_id']} | {_cell(j['kind'])} | {_cell(j['model'])} | {_cell(j['prompt_template'])} | "
              f"{_cell(j['prompt_hash'])} |" for j in jobs]
    return "\n".join(lines) + "\n"


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


def _check_out(out: Path, file_type: str, view: str) -> None:
    if not out.parent.is_dir():
        raise UserError(f"the directory {out.parent} does not exist; create it or choose another --out.")
    if file_type == "hf":
        if out.exists() and not (out.is_dir() and not any(out.iterdir())):
            raise UserError(f"{out} already exists; --file-type hf writes a new directory, so choose another --out "
                            "or remove it.")
    elif out.is_dir():
        raise UserError(f"{out} is a directory; give --out a file name, e.g. {out / f'{view}.{file_type}'}, "
                        "or --file-type hf for a Hugging Face dataset directory.")


def export_view(database_url: str, view: str, out: Path, *, file_type: str | None = None,
                where: str | None = None, shape: str | None = None, pairing: str | None = None,
                seed: int | None = None, progress: Progress | None = None,
                timeout: float | None = DEFAULT_TIMEOUT) -> int:
    """Write the rows of `view` satisfying `where` (one expression, checked read-only like `rplat sql`) to `out`,
    atomically (a temporary file or directory beside it, renamed when complete); returns the number of rows
    written. With `shape` (rplat.shapes) the rows written are the shape's, made from the view's (`pairing` and
    `seed`: how `dpo` pairs chains); a shape that makes no rows is refused. No file is left on failure, nor when
    the export runs past `timeout` seconds or is stopped by Ctrl-C. The rows stream through in batches of
    `_BATCH_ROWS` (memory bounded by a batch, not by the view), counted by `progress` (given: its total is counted
    first, for an ETA; none: silent). `hf` writes a `save_to_disk` directory with a README.md card naming the
    jobs, models and prompt hashes behind the rows."""
    file_type = file_type_of(out, file_type)
    lineage_query(view)
    shaper = shape_of(shape, view) if shape is not None else None
    if shape != "dpo" and (pairing is not None or seed is not None):
        raise UserError(f"--{'pairing' if pairing is not None else 'seed'} only applies to --shape dpo; "
                        "leave it out or give --shape dpo.")
    pair = parse_pairing(pairing, seed) if shape == "dpo" else Pairing()
    if shaper is not None and file_type == "csv" and any(pa.types.is_list(f.type) for f in shaper.schema):
        raise UserError(f"the {shape} shape has list columns, which CSV cannot hold; give --file-type jsonl, "
                        "parquet or hf.")
    _check_where(where)
    if timeout is not None:
        analytics.check_timeout(timeout)
    _check_out(out, file_type, view)
    metadata: dict[str, Any] = {"view": view, "shape": shape, "where": where,
                                "pairing": str(pair) if shape == "dpo" else None}
    pairing_options = pair.options if shape == "dpo" else ""
    con = analytics.connect(database_url)
    try:
        query = export_query(con, view, where)
        read = shaper.query(query) if shaper else query  # what is read: the view's rows a shape reads, in order
        with analytics.TimeLimit(con, timeout, "nothing was written (narrow --where, or give a longer --timeout)",
                                 "the export") as limit:
            if progress is None:
                progress = Progress(f"export {view}", quiet=True)
            else:
                (total,) = _run(con, f"SELECT count(*) FROM ({read})", where, view, limit).fetchone() or (0,)
                progress.set_total(int(total))
            reader = _run(con, read, where, view, limit).to_arrow_reader(_BATCH_ROWS)
            schema = shaper.schema if shaper else reader.schema
            jobs = _Jobs()
            batches = _batches(reader, progress)
            batches = jobs(_shaped(batches, shaper, pair) if shaper else batches)
            tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
            try:
                if file_type == "hf":
                    tmp.mkdir()
                    rows, features = _write_hf(batches, schema, tmp)
                else:
                    with open(tmp, "xb") as f:  # 0o666 less the umask, like any file the user writes
                        rows = _write(batches, schema, file_type, f,
                                      lambda n: {**metadata, "rows": n, "jobs": sorted(jobs.ids)})
                if shaper is not None and rows == 0:
                    found = f" matching --where {where!r}" if where is not None else ""
                    raise UserError(f"the {shape} shape found no {shaper.keeps} among the {progress.done} rows of "
                                    f"{view}{found}; nothing was written.")
                if file_type == "hf":
                    metadata["rows"] = rows
                    metadata["jobs"] = sorted(jobs.ids)
                    card = dataset_card({**metadata, "pairing_options": pairing_options}, job_lineage(con, jobs.ids))
                    _finish_hf(tmp, features, metadata, card)
                os.replace(tmp, out)
            except BaseException as exc:
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
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
