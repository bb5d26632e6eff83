"""`rplat import`: documents and problems from JSONL or Parquet into a named dataset, all or nothing.

Every record is validated before anything is written; the first bad record stops the import with one
sentence naming the file and line. The rows, the dataset and an `import` job that records the file's
sha256 and field mapping (so imported rows have lineage like derived ones) go in one transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from rplat.errors import UserError
from rplat.models import Dataset, Document, Job, Problem, utcnow
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


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) pairs; Parquet rows are numbered from 1 like lines."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise UserError(f"{path} is not a readable Parquet file ({exc}).") from None
        yield from enumerate(table.to_pylist(), start=1)
        return
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(
                    f"{path} line {lineno} is not valid UTF-8 (byte {exc.start}); re-encode the file as UTF-8."
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); fix or remove that line."
                ) from None
            if not isinstance(record, dict):
                raise UserError(f"{path} line {lineno} is a JSON {type(record).__name__}, not an object; "
                                "each line must be one JSON object.")
            yield lineno, record


def _text(path: Path, lineno: int, record: dict[str, Any], name: str, option: str, *, required: bool) -> str | None:
    value = record.get(name)
    if value is None:
        if required:
            raise UserError(f"{path} line {lineno} has no field {name!r}; name the right field with {option}.")
        return None
    if isinstance(value, (dict, list)):
        if required:
            raise UserError(f"{path} line {lineno} field {name!r} is a {type(value).__name__}, not text; "
                            f"name a text field with {option}.")
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    if required and not text.strip():
        raise UserError(f"{path} line {lineno} field {name!r} is empty; remove the record or fill it in.")
    return text


def _hash(*parts: str | None) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update((part or "").encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def _option(column: str) -> str:
    return f"--{column.replace('_', '-')}-field"


def _rows(path: Path, fmap: FieldMap) -> list[dict[str, Any]]:
    """Validate every record and build the rows (without dataset/job ids); raises on the first bad one."""
    seen: dict[str, int] = {}
    rows = []
    hash_cols = ("text",) if fmap.kind == "documents" else ("question", "solution", "answer")
    for lineno, record in _records(path):
        if fmap.id is None:
            ext_id = str(lineno)
        else:
            ext_id = _text(path, lineno, record, fmap.id, "--id-field", required=True)
            assert ext_id is not None
            if len(ext_id) > 200:
                raise UserError(f"{path} line {lineno} has an id of {len(ext_id)} characters; ids are at most 200.")
        if ext_id in seen:
            raise UserError(f"{path} line {lineno} repeats id {ext_id!r} first seen on line {seen[ext_id]}; "
                            "ids must be unique within a dataset.")
        seen[ext_id] = lineno
        row: dict[str, Any] = {"external_id": ext_id, **fmap.constants}
        for column, name in fmap.required.items():
            row[column] = _text(path, lineno, record, name, _option(column), required=True)
        for column, name in fmap.optional.items():
            row[column] = _text(path, lineno, record, name, _option(column), required=False)
        row["content_hash"] = _hash(*(row.get(c) for c in hash_cols))
        if fmap.kind == "documents":
            row["n_chars"] = len(row["text"])
        rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no records; nothing to import.")
    return rows


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def import_file(engine: Engine, path: Path, dataset: str, fmap: FieldMap, *, append: bool = False,
                progress: Callable[[int], None] = lambda _n: None) -> dict[str, Any]:
    """Import one file into `dataset` in a single transaction; returns a summary."""
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file.")
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise UserError(f"{path} is neither JSONL (.jsonl) nor Parquet (.parquet); convert it to one of those.")
    rows = _rows(path, fmap)
    model = Document if fmap.kind == "documents" else Problem
    with transaction(engine) as session:
        ds = session.scalar(select(Dataset).where(Dataset.name == dataset))
        if ds is not None and not append:
            raise UserError(f"dataset {dataset!r} already exists; choose another --dataset or pass --append.")
        if ds is not None and ds.kind != fmap.kind:
            raise UserError(f"dataset {dataset!r} holds {ds.kind}, not {fmap.kind}; choose another --dataset.")
        now = utcnow()
        job_id = session.scalar(insert(Job).values(
            kind=f"import-{fmap.kind}", status="succeeded", attempts=1, max_attempts=1, lease_token=0,
            cancel_requested=False, priority=0, created_at=now, not_before=now, started_at=now, finished_at=now,
            params={"file": str(path.resolve()), "sha256": file_sha256(path), "dataset": dataset,
                    "id_field": fmap.id, "fields": {**fmap.required, **fmap.optional}, "constants": fmap.constants},
            progress_done=len(rows), progress_total=len(rows),
        ).returning(Job.id))
        if ds is None:
            ds = Dataset(name=dataset, kind=fmap.kind, source=str(path.resolve()), job_id=job_id)
            session.add(ds)
            session.flush()
            existing: set[str] = set()
        else:
            existing = set(session.scalars(select(model.external_id).where(model.dataset_id == ds.id)).all())
        fresh = [r for r in rows if r["external_id"] not in existing]
        for start in range(0, len(fresh), BATCH):
            chunk = fresh[start:start + BATCH]
            for r in chunk:
                r["dataset_id"] = ds.id
                r["job_id"] = job_id
            session.execute(insert(model), chunk)
            progress(len(chunk))
        summary = {"dataset": dataset, "kind": fmap.kind, "job_id": job_id, "read": len(rows),
                   "imported": len(fresh), "already_present": len(rows) - len(fresh)}
        session.execute(Job.__table__.update().where(Job.id == job_id).values(result=summary))
    return summary
