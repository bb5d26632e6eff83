"""Documents and prefilter scores leave the store as files, streamed: `rplat export documents|prefilter_scores`
and `rplat sql --csv` hold one batch of rows, not the result, and say how far they are."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_analytics import run_cli

from rplat import analytics, export
from rplat.export import export_view
from rplat.models import PrefilterScore
from rplat.progress import Progress
from rplat.store import transaction

import factories as make
from stores import Store, make_store

TEXTS = {
    "arxiv-1": "We prove that the sum of two even numbers is even: 2a + 2b = 2(a + b).",
    "arxiv-2": "Let x be the number of apples; then 3x + 4 = 19 gives x = 5.",
    "law-1": "The court held that the contract was void for want of consideration.",
    "cc-1": "Our bakery opens at seven and sells sourdough bread every morning.",
}
SUBSET = {"arxiv-1": "ArXiv", "arxiv-2": "ArXiv", "law-1": "FreeLaw", "cc-1": "Pile-CC"}
COSINE = {"arxiv-1": 0.61, "arxiv-2": 0.47, "law-1": 0.12}  # cc-1 was left out by the job's subsets


@dataclass
class Seeded:
    import_job: int
    prefilter_job: int
    document_ids: dict[str, int]


def _seed(db: Store) -> Seeded:
    with transaction(db.engine()) as s:
        imported = make.job(s, "import-documents", {"file": "pile-00.jsonl"})
        docs = make.dataset(s, "pile-00", imported, kind="documents")
        made = {ext: d for ext in TEXTS
                for d in make.documents(s, docs, {ext: TEXTS[ext]}, subset=SUBSET[ext], source="pile")}
        experiment = make.experiment(s, "mining")
        prefilter = make.job(s, "prefilter", {"documents": "pile-00", "subsets": ["ArXiv", "FreeLaw"]},
                             experiment=experiment)
        embedder = make.model(s, "all-minilm-l6-v2", "embedding")
        s.add_all(PrefilterScore(job_id=prefilter.id, document_id=made[ext].id, embed_model_id=embedder.id,
                                 cosine=cosine, threshold=0.3, passed=cosine >= 0.3) for ext, cosine in COSINE.items())
        return Seeded(imported.id, prefilter.id, {ext: d.id for ext, d in made.items()})


@pytest.fixture
def seeded(db: Store) -> tuple[Store, Seeded]:
    return db, _seed(db)


def test_documents_export_to_parquet_with_their_subset_and_import_job(seeded: tuple[Store, Seeded],
                                                                      tmp_path: Path) -> None:
    db, w = seeded
    out = tmp_path / "docs.parquet"
    assert export_view(db.url, "documents", out, where="subset = 'ArXiv'") == 2
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda r: r["document"])
    assert [(r["document"], r["document_id"], r["dataset"], r["subset"], r["source"], r["text"], r["n_chars"])
            for r in rows] == [(ext, w.document_ids[ext], "pile-00", "ArXiv", "pile", TEXTS[ext], len(TEXTS[ext]))
                               for ext in ("arxiv-1", "arxiv-2")]
    assert {(r["job_id"], r["job_kind"]) for r in rows} == {(w.import_job, "import-documents")}
    assert json.loads(rows[0]["job_params"]) == {"file": "pile-00.jsonl"}


def test_prefilter_scores_export_the_kept_documents_with_score_subset_text_and_job(
        seeded: tuple[Store, Seeded], tmp_path: Path) -> None:
    db, w = seeded
    out = tmp_path / "kept.jsonl"
    assert export_view(db.url, "prefilter_scores", out, where=f"job_id = {w.prefilter_job} AND passed") == 2
    rows = sorted((json.loads(line) for line in out.read_text().splitlines()), key=lambda r: r["document"])
    assert [(r["document"], r["subset"], r["cosine"], r["passed"], r["text"]) for r in rows] == [
        ("arxiv-1", "ArXiv", 0.61, True, TEXTS["arxiv-1"]), ("arxiv-2", "ArXiv", 0.47, True, TEXTS["arxiv-2"])]
    assert {(r["job_id"], r["job_kind"], r["experiment"], r["embed_model"], r["threshold"]) for r in rows} == {
        (w.prefilter_job, "prefilter", "mining", "all-minilm-l6-v2", 0.3)}
    assert json.loads(rows[0]["job_params"])["subsets"] == ["ArXiv", "FreeLaw"]
    assert export_view(db.url, "prefilter_scores", tmp_path / "all.csv") == len(COSINE)
    with open(tmp_path / "all.csv", newline="") as f:
        assert {r["document"]: float(r["cosine"]) for r in csv.DictReader(f)} == COSINE


def test_an_export_writes_batch_by_batch_and_counts_them_against_the_total(
        seeded: tuple[Store, Seeded], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db, _ = seeded
    monkeypatch.setattr(export, "_BATCH_ROWS", 3)
    shown = io.StringIO()
    for file_type in ("parquet", "csv", "jsonl"):
        shown.seek(0)
        shown.truncate()
        progress = Progress("export documents", unit="documents", stream=shown, every=0)
        assert export_view(db.url, "documents", tmp_path / f"docs.{file_type}", progress=progress) == len(TEXTS)
        lines = shown.getvalue().splitlines()
        assert len(lines) == 2, lines  # one line per batch of 3 rows: 3, then 4
        assert lines[0].startswith("export documents: 3/4 documents (75%)"), lines
        assert lines[1].startswith("export documents: 4/4 documents (100%)"), lines
    assert pq.read_table(tmp_path / "docs.parquet").num_rows == len(TEXTS)


def test_export_cli_writes_documents_and_shows_progress_on_stderr(
        seeded: tuple[Store, Seeded], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    db, _ = seeded
    monkeypatch.setenv("RPLAT_PROGRESS_SECONDS", "0")
    out = db.home / "docs.parquet"
    code, printed, err = run_cli(capsys, "export", "documents", "--where", "subset <> 'Pile-CC'", "--out", str(out))
    assert (code, printed) == (0, f"wrote 3 rows of documents to {out}\n")
    assert err.splitlines()[-1].startswith("export documents: 3/3 rows (100%)")
    assert sorted(pq.read_table(out).column("document").to_pylist()) == ["arxiv-1", "arxiv-2", "law-1"]


def test_sql_csv_streams_batches_of_rows(seeded: tuple[Store, Seeded], capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = seeded
    con = analytics.connect(db.url)
    try:
        columns, batches = analytics.stream_query(con, "SELECT document, n_chars FROM documents ORDER BY document",
                                                  batch_rows=3)
        got = list(batches)
    finally:
        con.close()
    assert columns == ["document", "n_chars"]
    assert [len(b) for b in got] == [3, 1]
    assert [r for b in got for r in b] == sorted((ext, len(t)) for ext, t in TEXTS.items())
    code, out, _ = run_cli(capsys, "sql", "SELECT document, subset FROM documents ORDER BY document", "--csv")
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [["document", "subset"], *sorted(map(list, SUBSET.items()))]


def _child_peak_rss_mb(db: Store, query: str) -> int:
    """Peak RSS of `rplat sql --csv QUERY` (its output thrown away), in a fresh parent so only it counts."""
    script = ("import resource, subprocess, sys\n"
              "subprocess.run([sys.executable, '-m', 'rplat.cli', 'sql', '--csv', sys.argv[1]], check=True,\n"
              "               stdout=subprocess.DEVNULL)\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n")
    out = subprocess.run([sys.executable, "-c", script, query], env=db.env, capture_output=True, text=True,
                         check=True, timeout=600)
    return int(out.stdout)


def test_sql_csv_memory_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    # The rows come from DuckDB's range(), not from the store: one backend shows it.
    rows = "SELECT range AS i, repeat('x', 100) AS pad FROM range({})"
    for db in make_store("sqlite", tmp_path):
        small, large = _child_peak_rss_mb(db, rows.format(1_000)), _child_peak_rss_mb(db, rows.format(2_000_000))
        # Holding 2,000,000 such rows takes about 500 MB more than holding 1,000; a stream holds one batch.
        assert large - small < 150, (small, large)
