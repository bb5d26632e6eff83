"""`rplat import documents|problems` at corpus scale: every source format, stdin and named pipes, shard directories
that resume after kill -9, dotted field mapping that must match, filters, and --append by content hash."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from sqlalchemy import func, select

from rplat.errors import UserError
from rplat.hashing import content_hash
from rplat.imports import datasets
from rplat.imports.datasets import FieldMap, import_source
from rplat.models import Dataset, Document, Job, Problem
from rplat.store import transaction

from stores import Store

SUBSETS = ["Pile-CC", "ArXiv", "Github", "Wikipedia (en)", "PubMed Abstracts"]
PILE = [{"text": f"document {i} " + "word " * (i % 7), "meta": {"pile_set_name": SUBSETS[i % len(SUBSETS)],
                                                               "src": f"crawl-{i % 2}", "id": f"p{i}"}}
        for i in range(25)]
PAYLOAD = "".join(json.dumps(r) + "\n" for r in PILE).encode()
DOCS = FieldMap("documents", None, {"text": "text"}, {"subset": "meta.pile_set_name"}, {"source": "pile"},
                strict=("subset",))


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    """`records` in the format `path`'s suffix names."""
    payload = "".join(json.dumps(r) + "\n" for r in records).encode()
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)
    elif name.endswith(".gz"):
        path.write_bytes(gzip.compress(payload))
    elif name.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(payload))
    elif name.endswith(".hf"):
        import datasets as hf

        hf.Dataset.from_list(records).save_to_disk(str(path))
    else:
        path.write_bytes(payload)
    return path


def documents(store: Store) -> list[Document]:
    with transaction(store.engine()) as session:
        return list(session.scalars(select(Document).order_by(Document.id)))


def count(store: Store, model: type[Any]) -> int:
    with transaction(store.engine()) as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def import_jobs(store: Store) -> list[Job]:
    with transaction(store.engine()) as session:
        return list(session.scalars(select(Job).where(Job.kind.like("import-%")).order_by(Job.id)))


def expected_rows(records: list[dict[str, Any]]) -> list[tuple[str, str, str | None, str]]:
    return [(content_hash(r["text"]), r["text"], r["meta"]["pile_set_name"], "pile") for r in records]


def rows(store: Store) -> list[tuple[str, str, str | None, str | None]]:
    return [(d.external_id, d.text, d.subset, d.source) for d in documents(store)]


@pytest.mark.parametrize("name", ["pile.jsonl", "pile.jsonl.gz", "pile.jsonl.zst", "pile.parquet", "pile.hf"])
def test_every_format_streams_the_same_documents(db: Store, tmp_path: Path, name: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "BATCH", 4)  # several batches per unit
    path = write(tmp_path / name, PILE)
    summary = import_source(db.engine(), str(path), "pile", DOCS)
    assert (summary["read"], summary["imported"]) == (len(PILE), len(PILE))
    assert rows(db) == expected_rows(PILE)
    (job,) = import_jobs(db)
    assert job.params["sha256"] and job.result["imported"] == len(PILE)
    assert {d.job_id for d in documents(db)} == {job.id}


def test_stdin_plain_and_compressed(db: Store) -> None:
    for n, payload in enumerate([PAYLOAD, gzip.compress(PAYLOAD), zstandard.ZstdCompressor().compress(PAYLOAD)]):
        proc = subprocess.run([sys.executable, "-m", "rplat.cli", "import", "documents", "-", "--dataset", f"s{n}",
                               "--subset-field", "meta.pile_set_name", "--source", "pile", "--json"],
                              input=payload, env=db.env, cwd=db.home, capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        summary = json.loads(proc.stdout)
        assert summary["imported"] == len(PILE)
        job = db.job(summary["job_id"])
        assert job.params["file"] == "<stdin>"
        assert job.params["sha256"] == hashlib.sha256(payload).hexdigest()
    assert count(db, Document) == 3 * len(PILE)


def test_named_pipe(db: Store) -> None:
    fifo = db.home / "feed.jsonl.zst"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(zstandard.ZstdCompressor().compress(PAYLOAD),))
    writer.start()
    proc = db.rplat("import", "documents", str(fifo), "--dataset", "piped", "--subset-field", "meta.pile_set_name",
                    "--source", "pile", "--json", check=True)
    writer.join()
    assert json.loads(proc.stdout)["imported"] == len(PILE)
    assert rows(db) == expected_rows(PILE)


def test_dotted_mapping_for_every_field(db: Store) -> None:
    write(db.home / "pile.jsonl", PILE)
    proc = db.rplat("import", "documents", "pile.jsonl", "--dataset", "pile", "--id-field", "meta.id",
                    "--subset-field", "meta.pile_set_name", "--source-field", "meta.src", "--json", check=True)
    assert json.loads(proc.stdout)["imported"] == len(PILE)
    assert [(d.external_id, d.subset, d.source) for d in documents(db)] == [
        (r["meta"]["id"], r["meta"]["pile_set_name"], r["meta"]["src"]) for r in PILE]
    problems = [{"q": {"text": f"What is {i}+1?"}, "meta": {"gold": str(i + 1), "topic": "sums"}} for i in range(3)]
    write(db.home / "p.jsonl", problems)
    db.rplat("import", "problems", "p.jsonl", "--dataset", "p", "--question-field", "q.text", "--answer-field",
             "meta.gold", "--subject-field", "meta.topic", check=True)
    with transaction(db.engine()) as session:
        got = session.execute(select(Problem.question, Problem.answer, Problem.subject).order_by(Problem.id)).all()
    assert [tuple(r) for r in got] == [(p["q"]["text"], p["meta"]["gold"], "sums") for p in problems]


@pytest.mark.parametrize(("args", "fragment"), [
    (("--subset-field", "meta.pile_subset"), "no record of pile.jsonl has the field 'meta.pile_subset' named by "
                                             "--subset-field"),
    (("--where", "meta.set=ArXiv"), "no record of pile.jsonl has the field 'meta.set' named by --where"),
    (("--where", "meta.pile_set_name"), "--where 'meta.pile_set_name' is not FIELD=VALUE[,VALUE]"),
    (("--source", "pile", "--source-field", "meta.src"), "--source and --source-field both set the source"),
])
def test_a_mapping_that_matches_nothing_is_one_sentence_and_writes_nothing(db: Store, args: tuple[str, ...],
                                                                           fragment: str) -> None:
    write(db.home / "pile.jsonl", PILE)
    proc = db.rplat("import", "documents", "pile.jsonl", "--dataset", "pile", *args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert fragment in proc.stderr
    assert (count(db, Document), count(db, Dataset), len(import_jobs(db))) == (0, 0, 0)


def test_an_optional_field_left_at_its_default_may_be_absent(db: Store) -> None:
    write(db.home / "q.jsonl", [{"question": "Is 7 prime?"}])
    db.rplat("import", "problems", "q.jsonl", "--dataset", "q", check=True)
    assert count(db, Problem) == 1


def test_filters_where_and_max_chars(db: Store) -> None:
    write(db.home / "pile.jsonl", PILE)
    proc = db.rplat("import", "documents", "pile.jsonl", "--dataset", "pile", "--subset-field",
                    "meta.pile_set_name", "--where", "meta.pile_set_name=ArXiv,Github", "--max-chars", "20",
                    "--json", check=True)
    kept = [r for r in PILE if r["meta"]["pile_set_name"] in ("ArXiv", "Github") and len(r["text"]) <= 20]
    assert 0 < len(kept) < len(PILE)
    summary = json.loads(proc.stdout)
    assert (summary["read"], summary["imported"], summary["filtered"]) == (len(PILE), len(kept),
                                                                          len(PILE) - len(kept))
    assert [d.text for d in documents(db)] == [r["text"] for r in kept]
    (job,) = import_jobs(db)
    assert job.params["filters"] == {"max_chars": 20, "where": {"meta.pile_set_name": ["ArXiv", "Github"]}}
    human = db.rplat("import", "documents", "pile.jsonl", "--dataset", "pile2", "--max-chars", "20", check=True)
    assert f"{sum(len(r['text']) > 20 for r in PILE)} filtered out" in human.stdout


def test_append_without_an_id_field_identifies_documents_by_content(db: Store) -> None:
    write(db.home / "a.jsonl", PILE[:10])
    write(db.home / "b.jsonl", PILE[10:])
    base = ("--dataset", "pile", "--append", "--json")
    first = json.loads(db.rplat("import", "documents", "a.jsonl", *base, check=True).stdout)
    second = json.loads(db.rplat("import", "documents", "b.jsonl", *base, check=True).stdout)
    again = json.loads(db.rplat("import", "documents", "a.jsonl", *base, check=True).stdout)
    assert (first["imported"], second["imported"]) == (10, len(PILE) - 10)
    assert (again["imported"], again["already_present"]) == (0, 10)
    assert sorted(d.text for d in documents(db)) == sorted(r["text"] for r in PILE)


def test_append_without_an_id_field_identifies_problems_by_content(db: Store) -> None:
    one = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(4)]
    two = [{"question": f"What is {i}*{i}?", "answer": str(i * i)} for i in range(3)]
    write(db.home / "one.jsonl", one)
    write(db.home / "two.parquet", two)
    for name in ("one.jsonl", "two.parquet", "one.jsonl", "two.parquet"):
        db.rplat("import", "problems", name, "--dataset", "gsm", "--append", check=True)
    with transaction(db.engine()) as session:
        got = session.execute(select(Problem.question, Problem.answer).order_by(Problem.id)).all()
    assert [tuple(r) for r in got] == [(p["question"], p["answer"]) for p in one + two]


def test_a_repeated_id_is_named_across_batches_and_nothing_is_written(db: Store, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "BATCH", 3)
    records = [{"id": f"d{i}", "text": f"t{i}"} for i in range(8)] + [{"id": "d2", "text": "again"}]
    path = write(tmp_path / "docs.jsonl.zst", records)
    fmap = FieldMap("documents", "id", {"text": "text"})
    with pytest.raises(UserError, match=r"docs.jsonl.zst line 9 repeats id 'd2' first seen on line 3; ids must be"):
        import_source(db.engine(), str(path), "docs", fmap)
    assert (count(db, Document), count(db, Dataset), len(import_jobs(db))) == (0, 0, 0)


def shard_dir(root: Path, n_shards: int, per_shard: int) -> Path:
    shards = root / "shards"
    shards.mkdir()
    for s in range(n_shards):
        records = [{"text": f"shard {s} document {i} " + "lorem ipsum " * 20,
                    "meta": {"pile_set_name": SUBSETS[i % len(SUBSETS)]}} for i in range(per_shard)]
        write(shards / f"{s:03d}.jsonl{'.zst' if s % 2 else ''}", records)
    return shards


def test_a_shard_directory_killed_mid_import_resumes_at_the_next_unfinished_shard(db: Store) -> None:
    n_shards, per_shard = 40, 2000
    shards = shard_dir(db.home, n_shards, per_shard)
    command = ("import", "documents", str(shards), "--dataset", "pile", "--subset-field", "meta.pile_set_name",
               "--json")
    proc = db.popen(*command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not import_jobs(db) and proc.poll() is None:
            time.sleep(0.01)
        done = [j for j in import_jobs(db) if j.status == "succeeded" and j.result]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    committed = [j for j in import_jobs(db) if j.result]
    assert 1 <= len(committed) < n_shards, "the import ended before it could be killed"
    assert len(committed) >= len(done)
    assert count(db, Document) == len(committed) * per_shard  # whole shards only
    assert len(import_jobs(db)) == len(committed)  # no job of a half-written shard
    again = json.loads(db.rplat(*command, check=True).stdout)
    assert again["units_skipped"] == len(committed)
    assert again["imported"] == (n_shards - len(committed)) * per_shard
    assert count(db, Document) == n_shards * per_shard
    files = [j.params["file"] for j in import_jobs(db)]
    assert sorted(files) == sorted(str(p.resolve()) for p in shards.iterdir())  # each shard imported once
    assert json.loads(db.rplat(*command, check=True).stdout)["units_skipped"] == n_shards


def test_a_shard_repeating_an_id_of_an_earlier_shard_is_named(db: Store, tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    write(shards / "a.jsonl", [{"id": "x", "text": "one"}])
    write(shards / "b.jsonl", [{"id": "y", "text": "two"}, {"id": "x", "text": "three"}])
    with pytest.raises(UserError, match=r"b.jsonl line 2 repeats id 'x', which dataset 'd' already holds"):
        import_source(db.engine(), str(shards), "d", FieldMap("documents", "id", {"text": "text"}))
    assert [d.text for d in documents(db)] == ["one"]  # the first shard stays; the second wrote nothing


def test_progress_lines_when_stderr_is_not_a_terminal(db: Store) -> None:
    write(db.home / "pile.jsonl.zst", PILE * 400)
    env = {**db.env, "RPLAT_PROGRESS_SECONDS": "0"}
    proc = subprocess.run([sys.executable, "-m", "rplat.cli", "import", "documents", "pile.jsonl.zst", "--dataset",
                           "p"], env=env, cwd=db.home, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("import p: ")]
    assert lines and all(" bytes (" in ln for ln in lines)
    assert proc.stdout.startswith(f"imported {len(PILE)} documents into dataset p ("
                                  f"0 already present; {len(PILE) * 399} repeated within the import")

