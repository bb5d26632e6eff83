"""`rplat import`: documents and problems from JSONL or Parquet into a dataset, all or nothing.

Every record is validated before anything is written; the first bad record stops the import with one
sentence naming the file and line (Parquet: row). The rows, the dataset and an `import` job that records
the file's sha256 and field mapping (so imported rows have lineage like derived ones; recorded through the queue,
the only writer of jobs) go in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, String, Table, select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.hashing import content_hash, file_sha256
from rplat.imports.readers import jsonl_records
from rplat.models import Dataset, Document, Problem
from rplat.queue import Queue
from rplat.store import transaction

BATCH = 5000


@dataclass(frozen=True)
class FieldMap:
    """Which input field feeds which column; `id` None means "use the line (row) number"."""

    kind: str
    id: str | None
    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)
    constants: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class _Source:
    """How one column is read from a record: the field, the option that names it, and its limits."""

    column: str
    field: str
    option: str
    required: bool
    max_len: int | None


def _max_len(table: Table, column: str) -> int | None:
    type_ = table.c[column].type
    return type_.length if isinstance(type_, String) else None


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) pairs; Parquet rows are numbered from 1 like lines."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types; all mean "not readable Parquet"
            reason = str(exc).strip().splitlines()[0].split(". ")[0].rstrip(".")
            raise UserError(f"{path} is not a readable Parquet file ({reason}); check that it is complete "
                            "Parquet, or use JSONL.") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    with path.open("rb") as fh:
        yield from jsonl_records(fh, str(path))


class _BadField(Exception):
    """What is wrong with one field; `_rows` prefixes the file and line."""


def _value(record: dict[str, Any], src: _Source) -> str | None:
    """The text of one field of one record; raises _BadField saying what is wrong and how to fix it."""
    value = record.get(src.field)
    if value is None:
        if src.required:
            raise _BadField(f"has no field {src.field!r}; name the right field with {src.option}")
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list)):
        if src.required:
            raise _BadField(f"field {src.field!r} is a JSON {'object' if isinstance(value, dict) else 'array'}, "
                            f"not text; name a text field with {src.option}")
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = str(value)
    if src.required and (not text or text.isspace()):
        raise _BadField(f"field {src.field!r} is empty; remove the record or fill it in")
    if src.max_len is not None and len(text) > src.max_len:
        raise _BadField(f"field {src.field!r} is {len(text)} characters long; the {src.column} column holds "
                        f"at most {src.max_len}")
    if "\x00" in text:
        raise _BadField(f"field {src.field!r} contains a NUL character (\\u0000), which databases cannot store; "
                        "remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _BadField(f"field {src.field!r} contains an unpaired surrogate (\\u{ord(text[exc.start]):04x}), "
                        "which is not valid Unicode; fix that escape") from None
    return text


def _set(constants: dict[str, str | None]) -> dict[str, str]:
    """The constants that carry a value; the others are left to the column's NULL rather than bound per row."""
    return {column: value for column, value in constants.items() if value is not None}


def _layout(fmap: FieldMap) -> tuple[Table, list[str], list[_Source]]:
    """The table, the column order of a row (after dataset_id, job_id), and how each mapped column is read."""
    table: Table = (Document if fmap.kind == "documents" else Problem).__table__  # type: ignore[assignment]
    for column, value in fmap.constants.items():
        limit = _max_len(table, column)
        if value is not None and limit is not None and len(value) > limit:
            raise UserError(f"--{column} is {len(value)} characters long; the {column} column holds at most {limit}.")
    sources = [_Source(column, name, f"--{column.replace('_', '-')}-field", required, _max_len(table, column))
               for mapping, required in ((fmap.required, True), (fmap.optional, False))
               for column, name in mapping.items()]
    if fmap.id is not None:
        sources.insert(0, _Source("external_id", fmap.id, "--id-field", True, _max_len(table, "external_id")))
    extra = ["n_chars"] if fmap.kind == "documents" else []
    columns = ["external_id", *_set(fmap.constants), *(s.column for s in sources if s.column != "external_id"),
               "content_hash", *extra]
    return table, columns, sources


def _rows(path: Path, fmap: FieldMap, columns: list[str], sources: list[_Source]) -> list[tuple[Any, ...]]:
    """Validate every record and build the rows in `columns` order; raises on the first bad one."""
    unit = "row" if path.suffix == ".parquet" else "line"
    constants = tuple(_set(fmap.constants).values())
    hash_columns = ("text",) if fmap.kind == "documents" else ("question", "solution", "answer")
    hashed = [columns.index(c) if c in columns else None for c in hash_columns]
    text_at = columns.index("text") if fmap.kind == "documents" else None
    by_id = fmap.id is not None
    seen: dict[str, int] = {}
    rows: list[tuple[Any, ...]] = []
    for lineno, record in _records(path):
        try:
            values = [_value(record, src) for src in sources]
        except _BadField as exc:
            raise UserError(f"{path} {unit} {lineno} {exc}.") from None
        ext_id: str = values.pop(0) if by_id else str(lineno)  # type: ignore[assignment]
        first = seen.setdefault(ext_id, lineno)
        if first != lineno:
            raise UserError(f"{path} {unit} {lineno} repeats id {ext_id!r} first seen on {unit} {first}; "
                            "ids must be unique within a dataset.")
        row = [ext_id, *constants, *values]
        # An absent optional field hashes like an empty one: the same content either way.
        row.append(content_hash(*("" if i is None else row[i] or "" for i in hashed)))
        if text_at is not None:
            row.append(len(row[text_at]))
        rows.append(tuple(row))
    if not rows:
        raise UserError(f"{path} holds no records; nothing to import.")
    return rows


def _insert_rows(session: Session, table: Table, columns: list[str], rows: list[tuple[Any, ...]],
                 progress: Callable[[int], None]) -> None:
    """Bulk insert in the session's transaction, no per-row SQLAlchemy work: PostgreSQL COPY, SQLite executemany."""
    conn = session.connection()
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.cursor() as cursor, \
                cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
            for start in range(0, len(rows), BATCH):
                chunk = rows[start:start + BATCH]
                for row in chunk:
                    copy.write_row(row)
                progress(len(chunk))
        return
    sql = f"INSERT INTO {table.name} ({names}) VALUES ({', '.join(['?'] * len(columns))})"
    for start in range(0, len(rows), BATCH):
        chunk = rows[start:start + BATCH]
        conn.exec_driver_sql(sql, chunk)
        progress(len(chunk))


def import_file(engine: Engine, path: Path, dataset: str, fmap: FieldMap, *, append: bool = False,
                progress: Callable[[int], None] = lambda _n: None) -> dict[str, Any]:
    """Import one file into `dataset` in a single transaction; returns a summary."""
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file.")
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise UserError(f"{path} is neither JSONL (.jsonl) nor Parquet (.parquet); convert it to one of those.")
    name_limit = _max_len(Dataset.__table__, "name")  # type: ignore[arg-type]
    if name_limit is not None and len(dataset) > name_limit:
        raise UserError(f"--dataset is {len(dataset)} characters long; dataset names are at most {name_limit}.")
    table, columns, sources = _layout(fmap)
    rows = _rows(path, fmap, columns, sources)
    sha256 = file_sha256(path)
    with transaction(engine) as session:
        ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
        if ds is not None and not append:
            raise UserError(f"dataset {dataset!r} already exists; choose another --dataset or pass --append.")
        if ds is not None and ds.kind != fmap.kind:
            raise UserError(f"dataset {dataset!r} holds {ds.kind}, not {fmap.kind}; choose another --dataset.")
        existing = set() if ds is None else set(
            session.scalars(select(table.c.external_id).where(table.c.dataset_id == ds.id)).all())
        fresh = [r for r in rows if r[0] not in existing]
        result = {"dataset": dataset, "kind": fmap.kind, "read": len(rows), "imported": len(fresh),
                  "already_present": len(rows) - len(fresh)}
        job_id = Queue.record_done(session, f"import-{fmap.kind}", {
            "file": str(path.resolve()), "sha256": sha256, "dataset": dataset, "id_field": fmap.id,
            "fields": {**fmap.required, **fmap.optional}, "constants": fmap.constants}, result, items=len(rows))
        if ds is None:
            ds = Dataset(name=dataset, kind=fmap.kind, source=str(path.resolve()), job_id=job_id)
            session.add(ds)
            session.flush()
        _insert_rows(session, table, ["dataset_id", "job_id", *columns], [(ds.id, job_id, *r) for r in fresh],
                     progress)
    return {**result, "job_id": job_id}
