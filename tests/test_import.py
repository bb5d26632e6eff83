"""`rplat import`: JSONL and Parquet, field mapping, ids, --append, lineage and content hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from rplat.imports.datasets import FieldMap, import_file
from rplat.models import Dataset, Document, Job, Problem
from rplat.store import transaction

from stores import Store

PASSAGES = [
    {"doc_id": "w-1", "body": "The Nile is the longest river in Africa.", "part": "geography"},
    {"doc_id": "w-2", "body": "Photosynthesis turns light into chemical energy.", "part": "biology"},
    {"doc_id": "w-3", "body": "Euclid proved that there are infinitely many primes.", "part": None},
]
PROBLEMS = [
    {"pid": "p-1", "q": "What is 2 + 3?", "worked": "2 + 3 = 5\n#### 5", "gold": "5", "topic": "arithmetic",
     "difficulty": "1"},
    {"pid": "p-2", "q": "What is 4 * 6?", "worked": "4 * 6 = 24\n#### 24", "gold": "24", "topic": "arithmetic",
     "difficulty": "2"},
]

DOC_MAP = FieldMap("documents", "doc_id", {"text": "body"}, {"subset": "part"},
                   {"source": "wikipedia", "split": "train"})
PROBLEM_MAP = FieldMap("problems", "pid", {"question": "q"},
                       {"solution": "worked", "answer": "gold", "subject": "topic", "level": "difficulty"},
                       {"benchmark": "gsm8k", "split": "test"})


def write_records(path: Path, records: list[dict[str, Any]]) -> Path:
    """JSONL or Parquet by the suffix of `path`."""
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sha256_parts(*parts: str | None) -> str:
    """The canonical content hash: sha256 of the parts as compact JSON, an absent part as the empty string."""
    payload = json.dumps([p or "" for p in parts], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def documents(store: Store) -> list[Document]:
    with transaction(store.engine()) as session:
        return list(session.scalars(select(Document).order_by(Document.id)))


def problems(store: Store) -> list[Problem]:
    with transaction(store.engine()) as session:
        return list(session.scalars(select(Problem).order_by(Problem.id)))


def job(store: Store, job_id: int) -> Job:
    with transaction(store.engine()) as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_documents_are_imported_through_the_field_mapping(db: Store, tmp_path: Path, suffix: str) -> None:
    path = write_records(tmp_path / f"wiki{suffix}", PASSAGES)
    summary = import_file(db.engine(), path, "wiki", DOC_MAP)
    assert summary == {"dataset": "wiki", "kind": "documents", "job_id": summary["job_id"], "read": 3,
                       "imported": 3, "already_present": 0}
    rows = documents(db)
    assert [(d.external_id, d.text, d.subset, d.source, d.split) for d in rows] == [
        (p["doc_id"], p["body"], p["part"], "wikipedia", "train") for p in PASSAGES]
    assert [d.n_chars for d in rows] == [len(p["body"]) for p in PASSAGES]
    assert [d.content_hash for d in rows] == [sha256_parts(p["body"]) for p in PASSAGES]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_problems_are_imported_through_the_field_mapping(db: Store, tmp_path: Path, suffix: str) -> None:
    path = write_records(tmp_path / f"gsm{suffix}", PROBLEMS)
    summary = import_file(db.engine(), path, "gsm", PROBLEM_MAP)
    assert (summary["kind"], summary["imported"]) == ("problems", 2)
    rows = problems(db)
    assert [(p.external_id, p.question, p.solution, p.answer, p.subject, p.level, p.benchmark, p.split)
            for p in rows] == [(r["pid"], r["q"], r["worked"], r["gold"], r["topic"], r["difficulty"], "gsm8k", "test")
                               for r in PROBLEMS]
    assert [p.content_hash for p in rows] == [sha256_parts(r["q"], r["worked"], r["gold"]) for r in PROBLEMS]


def test_absent_optional_fields_are_null_and_hash_as_empty(db: Store, tmp_path: Path) -> None:
    path = write_records(tmp_path / "bare.jsonl", [{"q": "Is 7 prime?"}])
    import_file(db.engine(), path, "bare", FieldMap("problems", None, {"question": "q"},
                                                    {"solution": "worked", "answer": "gold"}, {}))
    (row,) = problems(db)
    assert (row.question, row.solution, row.answer) == ("Is 7 prime?", None, None)
    assert row.content_hash == sha256_parts("Is 7 prime?", None, None)


def test_without_an_id_field_the_content_hash_is_the_id(db: Store, tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first"}\n{"text": "second"}\n\n{"text": "fourth"}\n{"text": "first"}\n',
                    encoding="utf-8")
    summary = import_file(db.engine(), path, "docs", FieldMap("documents", None, {"text": "text"}))
    assert [(d.external_id, d.text) for d in documents(db)] == [
        (sha256_parts(t), t) for t in ("first", "second", "fourth")]
    assert (summary["read"], summary["imported"], summary["duplicates"]) == (4, 3, 1)


def test_without_an_id_field_parquet_rows_are_identified_by_content(db: Store, tmp_path: Path) -> None:
    path = write_records(tmp_path / "docs.parquet", [{"text": "a"}, {"text": "b"}])
    import_file(db.engine(), path, "docs", FieldMap("documents", None, {"text": "text"}))
    assert [d.external_id for d in documents(db)] == [sha256_parts("a"), sha256_parts("b")]


def test_non_text_values_are_stored_as_text(db: Store, tmp_path: Path) -> None:
    path = write_records(tmp_path / "p.jsonl", [{"id": 7, "q": "Sum?", "gold": 12, "meta": {"k": [1, 2]}}])
    import_file(db.engine(), path, "p", FieldMap("problems", "id", {"question": "q"},
                                                 {"answer": "gold", "subject": "meta"}, {}))
    (row,) = problems(db)
    assert (row.external_id, row.answer, row.subject) == ("7", "12", '{"k": [1, 2]}')


def test_append_twice_adds_nothing_and_reports_already_present(db: Store, tmp_path: Path) -> None:
    path = write_records(tmp_path / "wiki.jsonl", PASSAGES)
    first = import_file(db.engine(), path, "wiki", DOC_MAP, append=True)
    again = import_file(db.engine(), path, "wiki", DOC_MAP, append=True)
    assert (first["imported"], first["already_present"]) == (3, 0)
    assert (again["read"], again["imported"], again["already_present"]) == (3, 0, 3)
    assert [d.external_id for d in documents(db)] == ["w-1", "w-2", "w-3"]
    assert all(d.job_id == first["job_id"] for d in documents(db))


def test_append_adds_only_new_ids_and_they_point_at_the_new_import_job(db: Store, tmp_path: Path) -> None:
    first = import_file(db.engine(), write_records(tmp_path / "a.jsonl", PASSAGES[:2]), "wiki", DOC_MAP)
    second = import_file(db.engine(), write_records(tmp_path / "b.jsonl", PASSAGES), "wiki", DOC_MAP, append=True)
    assert (second["imported"], second["already_present"]) == (1, 2)
    assert [(d.external_id, d.job_id) for d in documents(db)] == [
        ("w-1", first["job_id"]), ("w-2", first["job_id"]), ("w-3", second["job_id"])]
    with transaction(db.engine()) as session:
        assert session.scalar(select(func.count()).select_from(Dataset)) == 1


def test_every_document_points_at_an_import_job_that_records_file_and_mapping(db: Store, tmp_path: Path) -> None:
    path = write_records(tmp_path / "wiki.jsonl", PASSAGES)
    summary = import_file(db.engine(), path, "wiki", DOC_MAP)
    imported = job(db, summary["job_id"])
    assert (imported.kind, imported.status) == ("import-documents", "succeeded")
    assert imported.params == {
        "file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "dataset": "wiki",
        "id_field": "doc_id", "fields": {"text": "body", "subset": "part"},
        "constants": {"source": "wikipedia", "split": "train"}}
    assert imported.result == {k: v for k, v in summary.items() if k != "job_id"}  # its own id is the row's id
    assert {d.job_id for d in documents(db)} == {summary["job_id"]}
    with transaction(db.engine()) as session:
        dataset = session.scalar(select(Dataset).where(Dataset.name == "wiki"))
        assert dataset is not None
        assert (dataset.kind, dataset.job_id, dataset.source) == ("documents", summary["job_id"], str(path.resolve()))


def test_every_problem_points_at_an_import_problems_job(db: Store, tmp_path: Path) -> None:
    path = write_records(tmp_path / "gsm.parquet", PROBLEMS)
    summary = import_file(db.engine(), path, "gsm", PROBLEM_MAP)
    imported = job(db, summary["job_id"])
    assert imported.kind == "import-problems"
    assert imported.params["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert imported.params["fields"] == {"question": "q", "solution": "worked", "answer": "gold", "subject": "topic",
                                         "level": "difficulty"}
    assert {p.job_id for p in problems(db)} == {summary["job_id"]}


def test_cli_import_round_trip_and_append(db: Store) -> None:
    path = write_records(db.home / "gsm.jsonl", [{"id": r["pid"], "question": r["q"], "solution": r["worked"],
                                                  "answer": r["gold"]} for r in PROBLEMS])
    args = ("import", "problems", str(path), "--dataset", "gsm", "--id-field", "id", "--benchmark", "gsm8k", "--json")
    first = json.loads(db.rplat(*args, check=True).stdout)
    again = json.loads(db.rplat(*args, "--append", check=True).stdout)
    assert (first["imported"], first["already_present"]) == (2, 0)
    assert (again["imported"], again["already_present"]) == (0, 2)
    assert [(p.external_id, p.benchmark, p.answer, p.job_id) for p in problems(db)] == [
        ("p-1", "gsm8k", "5", first["job_id"]), ("p-2", "gsm8k", "24", first["job_id"])]
    human = db.rplat("import", "problems", str(path), "--dataset", "gsm", "--id-field", "id", "--append", check=True)
    assert human.stdout.startswith("imported 0 problems into dataset gsm (2 already present; import job ")


def test_text_with_tabs_backslashes_newlines_and_emoji_is_stored_exactly(db: Store, tmp_path: Path) -> None:
    tricky = ["tab\there, \\N and back\\slash", 'a "quote"\nnew line\r\n', "\\.", "caf\u00e9 \u4e2d \U0001f600"]
    path = write_records(tmp_path / "tricky.jsonl", [{"text": t} for t in tricky])
    import_file(db.engine(), path, "tricky", FieldMap("documents", None, {"text": "text"}))
    assert [d.text for d in documents(db)] == tricky
    assert [d.n_chars for d in documents(db)] == [len(t) for t in tricky]
