# Command: OMP_NUM_THREADS=1 .venv/bin/python bench/queue.py
"""Queue benchmark: claim+complete jobs/s of rplat's Queue against a bare-SQL claim loop, SQLite and PostgreSQL.

Both sides run in the same 4 worker processes (multiprocessing, spawn), against the same freshly migrated
store, on the same number of identical queued `probe` jobs, and loop until nothing is claimable:

- rplat: the `rplat.queue.Queue` API a runner uses, `claim(owner, None, lease)` then `complete(...)`: the
  full semantics (dependencies, not_before, expired-lease reclaim, priority, lease token, fencing, events).
- bare:  the minimal correct atomic claim and complete, hand-written on the driver (sqlite3 / psycopg):
  claim = one `UPDATE jobs ... WHERE id = (SELECT ... LIMIT 1 [FOR UPDATE SKIP LOCKED]) RETURNING`, complete =
  one `UPDATE ... WHERE id = ? AND lease_token = ?`; on SQLite each inside BEGIN IMMEDIATE ... COMMIT, on
  PostgreSQL each its own autocommit statement. No dependencies, no events, no reaper.

The handler is not run: this measures the queue, not job execution. The clock starts when all workers
pass a barrier (connections already open) and stops when the last one finds the queue empty. Each side
runs `--repeats` times per database, alternating, on a re-filled queue; the best run counts. PostgreSQL
comes from RPLAT_TEST_DATABASE_URL (an admin URL; default the local server); the benchmark creates its own
database and drops it afterwards, and a temporary SQLite file. The last line is `ratio queue: X`, X the
smaller of the two databases' rplat/bare ratios (above 1 means rplat is faster).
"""

from __future__ import annotations

import os
import sys

# This file is named queue.py: its folder on sys.path would shadow the standard library's `queue`.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import argparse
import datetime as dt
import multiprocessing
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, delete, text
from sqlalchemy.engine import make_url

from rplat.migrate import upgrade
from rplat.models import Job, JobEvent, utcnow
from rplat.queue import Queue
from rplat.store import get_engine, transaction

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
WORKERS = 4
LEASE_SECONDS = 60.0

BARE_SQLITE_CLAIM = """
UPDATE jobs SET status = 'running', lease_owner = ?, lease_token = lease_token + 1, attempts = attempts + 1,
       lease_expires_at = ?, heartbeat_at = ?, started_at = coalesce(started_at, ?)
WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND not_before <= ? ORDER BY priority DESC, id LIMIT 1)
RETURNING id, lease_token
"""
BARE_SQLITE_COMPLETE = """
UPDATE jobs SET status = 'succeeded', finished_at = ?, lease_expires_at = NULL
WHERE id = ? AND lease_token = ? AND status = 'running'
"""
BARE_PG_CLAIM = """
UPDATE jobs SET status = 'running', lease_owner = %s, lease_token = lease_token + 1, attempts = attempts + 1,
       lease_expires_at = timezone('UTC', statement_timestamp()) + make_interval(secs => %s),
       heartbeat_at = timezone('UTC', statement_timestamp()),
       started_at = coalesce(started_at, timezone('UTC', statement_timestamp()))
WHERE id = (SELECT id FROM jobs WHERE status = 'queued' AND not_before <= timezone('UTC', statement_timestamp())
            ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id, lease_token
"""
BARE_PG_COMPLETE = """
UPDATE jobs SET status = 'succeeded', finished_at = timezone('UTC', statement_timestamp()), lease_expires_at = NULL
WHERE id = %s AND lease_token = %s AND status = 'running'
"""


# --- the two claim loops --------------------------------------------------------------------------


def _stamp() -> str:
    """A timestamp as SQLAlchemy stores DateTime in SQLite, so both sides compare the same strings."""
    return utcnow().isoformat(sep=" ")


def bare_sqlite_loop(url: str, owner: str, barrier: Barrier) -> int:
    conn = sqlite3.connect(make_url(url).database, timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    barrier.wait()
    done = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        now = _stamp()
        lease = (utcnow() + dt.timedelta(seconds=LEASE_SECONDS)).isoformat(sep=" ")
        row = conn.execute(BARE_SQLITE_CLAIM, (owner, lease, now, now, now)).fetchone()
        conn.execute("COMMIT")
        if row is None:
            return done
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(BARE_SQLITE_COMPLETE, (_stamp(), row[0], row[1]))
        conn.execute("COMMIT")
        done += 1


def bare_pg_loop(url: str, owner: str, barrier: Barrier) -> int:
    parsed = make_url(url)
    conn = psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, password=parsed.password,
                           dbname=parsed.database, autocommit=True)
    barrier.wait()
    done = 0
    while True:
        row = conn.execute(BARE_PG_CLAIM, (owner, LEASE_SECONDS)).fetchone()
        if row is None:
            return done
        conn.execute(BARE_PG_COMPLETE, (row[0], row[1]))
        done += 1


def rplat_loop(url: str, owner: str, barrier: Barrier) -> int:
    queue = Queue(get_engine(url))
    with queue.engine.connect():
        pass
    barrier.wait()
    done = 0
    while (job := queue.claim(owner, None, LEASE_SECONDS)) is not None:
        queue.complete(job.id, job.lease_token, None, runner=owner)
        done += 1
    return done


def rplat_noping_loop(url, owner, barrier):
    import rplat.store as st
    from sqlalchemy import create_engine
    e = create_engine(url.replace("postgresql:", "postgresql+psycopg:") if url.startswith("postgresql:") else url)
    st._engine_for.cache_clear()
    st._engine_for = lambda u: e
    return rplat_loop(url, owner, barrier)


LOOPS = {"rplat-noping": rplat_noping_loop, "bare-sqlite": bare_sqlite_loop, "bare-postgresql": bare_pg_loop, "rplat": rplat_loop}


def _worker(loop: str, url: str, owner: str, barrier: Barrier, results: Any) -> None:
    results.put(LOOPS[loop](url, owner, barrier))


# --- runs -----------------------------------------------------------------------------------------


def fill(url: str, jobs: int) -> None:
    """Empty the queue and enqueue `jobs` identical-but-distinct probe jobs (same rows for both sides)."""
    engine = get_engine(url)
    queue = Queue(engine)
    with transaction(engine) as session:
        session.execute(delete(JobEvent))
        session.execute(delete(Job))
        for i in range(jobs):
            queue.enqueue_in(session, "probe", {"target": None, "sleep_seconds": 0.0, "burn_seconds": 0.0,
                                                "tag": str(i), "devices": False})
    with engine.connect() as conn:  # fresh planner statistics, as autovacuum would have after a bulk enqueue
        conn.execute(text("ANALYZE"))
        conn.commit()


def run(loop: str, url: str, jobs: int) -> float:
    """jobs/s of `loop` in WORKERS processes draining a queue of `jobs` jobs."""
    fill(url, jobs)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS + 1)
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(loop, url, f"w{n}", barrier, results)) for n in range(WORKERS)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    done = sum(results.get() for _ in workers)
    elapsed = time.perf_counter() - start
    for w in workers:
        w.join()
    if done != jobs:
        raise SystemExit(f"{loop} completed {done} of {jobs} jobs")
    return jobs / elapsed


@contextmanager
def fresh_store(backend: str, workdir: Path) -> Iterator[str]:
    """The URL of a new store migrated to head (temporary SQLite file or PostgreSQL database); removed after."""
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'queue-bench.db'}"
        upgrade(get_engine(url))
        yield url
        get_engine(url).dispose()
        return
    admin_url = make_url(os.environ.get("RPLAT_TEST_DATABASE_URL", DEFAULT_PG)).set(drivername="postgresql+psycopg")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"rplat_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(get_engine(url))
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side per database; the best counts")
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("sqlite", "postgresql"):
            best = {"bare": 0.0, "rplat": 0.0}
            with fresh_store(backend, Path(tmp)) as url:
                for _ in range(args.repeats):
                    best["bare"] = max(best["bare"], run(f"bare-{backend}", url, args.jobs))
                    best["rplat"] = max(best["rplat"], run("rplat", url, args.jobs))
            ratio = best["rplat"] / best["bare"]
            ratios.append(ratio)
            print(f"{backend}: rplat {best['rplat']:.0f} jobs/s, bare {best['bare']:.0f} jobs/s, "
                  f"ratio {ratio:.2f} ({WORKERS} processes, {args.jobs} jobs, best of {args.repeats})", flush=True)
    print(f"ratio queue: {min(ratios):.2f}")


if __name__ == "__main__":
    main()
