"""Ingest benchmark: `rplat import documents` rows/s against a bare DB-API executemany.

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/ingest.py [--rows 100000] [--repeats 3]

Both sides read the same generated JSONL file (~500 characters of text per document) and end with the
same rows in the `documents` table of a freshly migrated store, in one transaction:

- rplat: `rplat.imports.datasets.import_file`, the function behind `rplat import documents FILE --id-field id`
  (every record validated before anything is written, content hash and length computed, the import job
  and dataset rows written, all in one transaction), timed from opening the file to the commit. It
  writes the documents with COPY on PostgreSQL and the driver's executemany on SQLite.
- bare:  open the file, `json.loads` each line, compute the same NOT NULL columns (n_chars and the same
  sha256 content hash) and hand them to the driver's own `executemany` (sqlite3 / psycopg) as a plain INSERT of
  the same columns into the same table, then commit. The dataset and job rows it points at are created
  before its clock starts, so the baseline pays for nothing but reading and inserting documents.

Each side runs `--repeats` times per database on a new store, alternating, and the best run counts.
PostgreSQL comes from RPLAT_TEST_DATABASE_URL (an admin URL; default the local server); the benchmark
creates its own database and drops it afterwards. The last line is `ratio ingest: X`, X the smaller of
the two databases' rplat/bare ratios (above 1 means rplat is faster).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/queue.py would shadow the standard
# library's `queue` (which psycopg imports); drop it before importing anything else.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent / "lib"))  # after the standard library: benchlib

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sqlite3  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import psycopg  # noqa: E402
from benchlib import bare_parents, fresh_store  # noqa: E402
from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from rplat.hashing import content_hash  # noqa: E402
from rplat.imports.datasets import FieldMap, import_file  # noqa: E402
from rplat.store import get_engine  # noqa: E402

COLUMNS = ("dataset_id", "job_id", "external_id", "text", "n_chars", "content_hash")


def write_corpus(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` JSONL documents of about 500 characters of word-like text, deterministic by seed."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(5000)]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(rows):
            words: list[str] = []
            size = 0
            while size < 500:
                word = rng.choice(vocab)
                words.append(word)
                size += len(word) + 1
            fh.write(json.dumps({"id": f"doc-{i}", "text": " ".join(words), "source": "bench"}) + "\n")


# --- stores ---------------------------------------------------------------------------------------



# --- the two contenders ---------------------------------------------------------------------------


def run_rplat(url: str, corpus: Path) -> float:
    """Seconds for `rplat.imports.datasets.import_file` (what `rplat import documents --id-field id` runs)."""
    engine = get_engine(url)
    fmap = FieldMap("documents", "id", {"text": "text"}, {}, {"source": None, "split": None})
    start = time.perf_counter()
    summary = import_file(engine, corpus, "bench", fmap)
    elapsed = time.perf_counter() - start
    assert summary["imported"] > 0
    return elapsed



def _bare_rows(corpus: Path, dataset_id: int, job_id: int) -> list[tuple[object, ...]]:
    rows = []
    with corpus.open("rb") as fh:
        for raw in fh:
            record = json.loads(raw)
            body = record["text"]
            rows.append((dataset_id, job_id, record["id"], body, len(body), content_hash(body)))
    return rows


def run_bare(url: str, corpus: Path) -> float:
    """Seconds for read + json.loads + the driver's executemany of the same columns + commit."""
    dataset_id, job_id = bare_parents(url)
    get_engine(url).dispose()
    cols = ", ".join(COLUMNS)
    if url.startswith("sqlite"):
        conn = sqlite3.connect(make_url(url).database)
        sql = f"INSERT INTO documents ({cols}) VALUES ({', '.join('?' * len(COLUMNS))})"
        start = time.perf_counter()
        conn.executemany(sql, _bare_rows(corpus, dataset_id, job_id))
        conn.commit()
        elapsed = time.perf_counter() - start
        conn.close()
        return elapsed
    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        sql = f"INSERT INTO documents ({cols}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
        start = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany(sql, _bare_rows(corpus, dataset_id, job_id))
        conn.commit()
        return time.perf_counter() - start


def _count(url: str) -> int:
    with get_engine(url).connect() as conn:
        return conn.execute(text("SELECT count(*) FROM documents")).scalar_one()


def measure(backend: str, corpus: Path, rows: int, repeats: int, workdir: Path) -> tuple[float, float]:
    """Best rows/s of rplat and of the bare baseline on `backend`, runs alternating on fresh stores."""
    best: dict[str, float] = {"rplat": 0.0, "bare": 0.0}
    contenders: dict[str, Callable[[str, Path], float]] = {"rplat": run_rplat, "bare": run_bare}
    for _ in range(repeats):
        for name, run in contenders.items():
            with fresh_store(backend, workdir) as url:
                seconds = run(url, corpus)
                assert _count(url) == rows, f"{name} on {backend} did not write all {rows} rows"
            best[name] = max(best[name], rows / seconds)
    return best["rplat"], best["bare"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rplat-bench-ingest-") as tmp:
        workdir = Path(tmp)
        corpus = workdir / "corpus.jsonl"
        write_corpus(corpus, args.rows)
        size_mb = corpus.stat().st_size / 1e6
        print(f"corpus: {args.rows} documents, {size_mb:.1f} MB JSONL; best of {args.repeats} runs each")
        ratios = {}
        for backend in ("sqlite", "postgresql"):
            rplat_rate, bare_rate = measure(backend, corpus, args.rows, args.repeats, workdir)
            ratios[backend] = rplat_rate / bare_rate
            print(f"{backend:>10}: rplat import {rplat_rate:>9,.0f} rows/s   bare executemany {bare_rate:>9,.0f} rows/s"
                  f"   ratio {ratios[backend]:.2f}")
    print(f"ratio ingest: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
