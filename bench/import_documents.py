"""Corpus import benchmark: `rplat import documents` of a Pile-like `.jsonl.zst` against a bare streaming
executemany, rows/s and peak RSS of each.

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/import_documents.py [--rows 1000000] [--repeats 1]
      [--backends sqlite,postgresql]

The corpus is `--rows` generated documents shaped like The Pile's JSONL: `{"text": ..., "meta":
{"pile_set_name": ...}}`, 500 to 1,000 characters of word-like text each, the subset one of seven Pile
subsets, written Zstandard-compressed as The Pile ships. Both sides read that file and end with the same rows
in the `documents` table of a freshly migrated store (external_id = content hash, text, subset, source, n_chars,
content_hash), each in its own subprocess so that its peak RSS (`ru_maxrss`) is its own:

- rplat: `rplat.imports.datasets.import_source`, what `rplat import documents corpus.jsonl.zst --dataset bench
  --subset-field meta.pile_set_name --source pile` runs: streamed a batch at a time, every record validated,
  content hash and length computed, the import job and dataset written, one transaction, progress counted.
- bare: decompress the stream with `zstandard`, `json.loads` each line, compute the same columns (the same
  content hash) and hand them to the driver's own `executemany` (sqlite3 / psycopg) in batches of the same
  size as plain INSERTs, then commit. Its dataset and job rows are created before its clock starts.

Each side runs `--repeats` times per database on a new store, alternating; the best run counts. PostgreSQL
comes from RPLAT_TEST_DATABASE_URL (an admin URL; default the local server). The last line is
`ratio import_documents: X`, X the smaller of the databases' rplat/bare ratios (above 1: rplat is faster).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where bench/queue.py would shadow the standard
# library's `queue` (which psycopg imports); drop it before importing anything else.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent / "lib"))  # after the standard library: benchlib

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

from benchlib import bare_parents, fresh_store  # noqa: E402

SUBSETS = ["Pile-CC", "PubMed Central", "ArXiv", "Github", "FreeLaw", "StackExchange", "Wikipedia (en)"]
COLUMNS = ("dataset_id", "job_id", "external_id", "source", "text", "subset", "content_hash", "n_chars")
BATCH = 5000


def write_corpus(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` Pile-like documents, 500-1000 characters, unique (each starts with its number); deterministic."""
    import zstandard

    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(5000)]
    sentences = [" ".join(rng.choices(vocab, k=rng.randint(6, 16))).capitalize() + "." for _ in range(20000)]
    with path.open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as zw, \
            io.TextIOWrapper(zw, encoding="utf-8") as fh:
        for i in range(rows):
            target = rng.randint(500, 1000)
            parts = [f"Document {i}."]
            size = len(parts[0])
            while size < target:
                sentence = sentences[rng.randrange(len(sentences))]
                parts.append(sentence)
                size += len(sentence) + 1
            text = " ".join(parts)[:target]
            fh.write(json.dumps({"text": text, "meta": {"pile_set_name": SUBSETS[rng.randrange(len(SUBSETS))]}})
                     + "\n")


# --- stores ---------------------------------------------------------------------------------------



# --- the two contenders, each run in a subprocess of its own --------------------------------------


def worker_rplat(url: str, corpus: Path) -> dict[str, Any]:
    from rplat.imports.datasets import FieldMap, import_source
    from rplat.progress import Progress
    from rplat.store import get_engine

    engine = get_engine(url)
    fmap = FieldMap("documents", None, {"text": "text"}, {"subset": "meta.pile_set_name"}, {"source": "pile"},
                    strict=("subset",))
    start = time.perf_counter()
    with Progress("import", quiet=True) as progress:
        summary = import_source(engine, str(corpus), "bench", fmap, progress=progress)
    return {"seconds": time.perf_counter() - start, "rows": summary["imported"]}



def _bare_batches(corpus: Path, dataset_id: int, job_id: int) -> Iterator[list[tuple[object, ...]]]:
    import zstandard

    from rplat.hashing import content_hash

    batch: list[tuple[object, ...]] = []
    with corpus.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as zr, \
            io.BufferedReader(zr, buffer_size=1 << 20) as lines:  # type: ignore[arg-type]
        for line in lines:
            record = json.loads(line)
            body = record["text"]
            digest = content_hash(body)
            batch.append((dataset_id, job_id, digest, "pile", body, record["meta"]["pile_set_name"], digest,
                          len(body)))
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def worker_bare(url: str, corpus: Path) -> dict[str, Any]:
    """Seconds for read + json.loads + the driver's executemany of the same columns in batches + commit."""
    from sqlalchemy.engine import make_url

    dataset_id, job_id = bare_parents(url)
    cols = ", ".join(COLUMNS)
    n = 0
    if url.startswith("sqlite"):
        conn = sqlite3.connect(make_url(url).database)
        sql = f"INSERT INTO documents ({cols}) VALUES ({', '.join('?' * len(COLUMNS))})"
        start = time.perf_counter()
        for batch in _bare_batches(corpus, dataset_id, job_id):
            conn.executemany(sql, batch)
            n += len(batch)
        conn.commit()
        elapsed = time.perf_counter() - start
        conn.close()
        return {"seconds": elapsed, "rows": n}
    import psycopg

    with psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        sql = f"INSERT INTO documents ({cols}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
        start = time.perf_counter()
        with conn.cursor() as cur:
            for batch in _bare_batches(corpus, dataset_id, job_id):
                cur.executemany(sql, batch)
                n += len(batch)
        conn.commit()
        return {"seconds": time.perf_counter() - start, "rows": n}


def run_worker(name: str, url: str, corpus: Path) -> dict[str, Any]:
    """One contender in a fresh interpreter: its seconds, rows and peak RSS (MB)."""
    proc = subprocess.run([sys.executable, __file__, "--worker", name, url, str(corpus)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{name} worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _count(url: str) -> int:
    from sqlalchemy import text

    from rplat.store import get_engine

    engine = get_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM documents")).scalar_one()
    engine.dispose()
    return int(n)


def measure(backend: str, corpus: Path, rows: int, repeats: int, workdir: Path) -> dict[str, dict[str, float]]:
    """Best rows/s and the peak RSS of that run, per contender, on `backend`; runs alternate on fresh stores."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        for name in ("rplat", "bare"):
            with fresh_store(backend, workdir) as url:
                got = run_worker(name, url, corpus)
                assert _count(url) == rows == got["rows"], f"{name} on {backend} did not write all {rows} rows"
            rate = rows / got["seconds"]
            if rate > best.get(name, {}).get("rate", 0.0):
                best[name] = {"rate": rate, "rss_mb": got["rss_mb"]}
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--corpus", type=Path, default=None, help="reuse (or write once) this .jsonl.zst")
    parser.add_argument("--worker", nargs=3, metavar=("NAME", "URL", "CORPUS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, url, corpus = args.worker
        result = (worker_rplat if name == "rplat" else worker_bare)(url, Path(corpus))
        result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="rplat-bench-import-") as tmp:
        workdir = Path(tmp)
        corpus = args.corpus or workdir / "corpus.jsonl.zst"
        if not corpus.exists():
            started = time.perf_counter()
            write_corpus(corpus, args.rows)
            print(f"wrote {corpus.name} in {time.perf_counter() - started:.0f} s")
        print(f"corpus: {args.rows:,} Pile-like documents, {corpus.stat().st_size / 1e6:.0f} MB .jsonl.zst; "
              f"best of {args.repeats} run(s) each, each in its own process")
        ratios = {}
        for backend in args.backends.split(","):
            best = measure(backend, corpus, args.rows, args.repeats, workdir)
            ratios[backend] = best["rplat"]["rate"] / best["bare"]["rate"]
            print(f"{backend:>10}: rplat import {best['rplat']['rate']:>8,.0f} rows/s (peak RSS "
                  f"{best['rplat']['rss_mb']:.0f} MB)   bare executemany {best['bare']['rate']:>8,.0f} rows/s "
                  f"(peak RSS {best['bare']['rss_mb']:.0f} MB)   ratio {ratios[backend]:.2f}")
    print(f"ratio import_documents: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
