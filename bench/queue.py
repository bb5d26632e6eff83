# Command: OMP_NUM_THREADS=1 .venv/bin/python bench/queue.py
# ruff: noqa: E402 (the imports come after the sys.path fix below)
"""Queue benchmark: claim+complete jobs/s of rplat's Queue against a bare-SQL claim loop.

Both sides run in the same 4 worker processes (multiprocessing, spawn), against the same freshly migrated
store, on the same number of identical queued `probe` jobs, and loop until nothing is claimable:

- rplat: the `rplat.queue.Queue` calls a runner makes, `claim(owner, kinds, lease)` (every registered kind, as
  a runner without --kinds asks) then `complete(...)`: the full semantics (kinds, dependencies, not_before,
  priority, host pinning, GPUs needed against the free devices (none: a CPU runner's claim), devices
  recorded, lease token, fenced complete, the reaper of expired leases every few seconds; a first claim
  writes no job event, see rplat.queue).
- bare:  the minimal correct atomic claim and complete, hand-written on the driver (sqlite3 / psycopg):
  claim = one `UPDATE jobs ... WHERE id = (SELECT ... LIMIT 1 [FOR UPDATE SKIP LOCKED]) RETURNING`, complete =
  one `UPDATE ... WHERE id = ? AND lease_token = ?`; on SQLite each inside BEGIN IMMEDIATE ... COMMIT, on
  PostgreSQL each its own autocommit statement. No dependencies, no events, no reaper.

The handler is not run: this measures the queue, not job execution. The clock starts when all workers
pass a barrier (connections already open) and stops when the last one finds the queue empty. Each side
runs `--repeats` times per database, alternating, on a re-filled (and vacuumed) queue, and its median
counts: lock hand-offs between the workers (SQLite) and other load on the machine make single runs vary. PostgreSQL
comes from RPLAT_TEST_DATABASE_URL (an admin URL; default the local server); the benchmark creates its own
database and drops it afterwards, and a temporary SQLite file. The last line is `ratio queue: X`, X the
smaller of the two databases' rplat/bare ratios (above 1 means rplat is faster).
"""

from __future__ import annotations

import os
import sys

# This file is named queue.py: run as a script, its folder (first on sys.path) would shadow the standard
# library's `queue`, which psycopg and multiprocessing import.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.append(os.path.join(HERE, "lib"))  # after the standard library: benchlib

import argparse
import datetime as dt
import multiprocessing
import sqlite3
import statistics
import tempfile
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg
from benchlib import fresh_store
from sqlalchemy import delete, insert, text
from sqlalchemy.engine import make_url

from rplat import kinds
from rplat.models import Job, JobEvent, utcnow
from rplat.queue import Queue
from rplat.store import get_engine

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


def _stamp(at: dt.datetime) -> str:
    """A timestamp as SQLAlchemy stores DateTime in SQLite, so both sides compare the same strings."""
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")


def bare_sqlite_loop(url: str, owner: str, barrier: Barrier) -> int:
    conn = sqlite3.connect(make_url(url).database, timeout=30, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")  # the store's settings (rplat.store), WAL being persistent
    conn.execute("PRAGMA foreign_keys = ON")
    barrier.wait()
    done = 0
    while True:
        at = utcnow()
        now, lease = _stamp(at), _stamp(at + dt.timedelta(seconds=LEASE_SECONDS))
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(BARE_SQLITE_CLAIM, (owner, lease, now, now, now)).fetchone()
        conn.execute("COMMIT")
        if row is None:
            return done
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(BARE_SQLITE_COMPLETE, (_stamp(utcnow()), row[0], row[1]))
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
    claimable = list(kinds.all_kinds())  # what a runner without --kinds asks for
    with queue.engine.connect():
        pass
    barrier.wait()
    done = 0
    while (job := queue.claim(owner, claimable, LEASE_SECONDS)) is not None:
        queue.complete(job.id, job.lease_token, None)
        done += 1
    return done


LOOPS = {"bare-sqlite": bare_sqlite_loop, "bare-postgresql": bare_pg_loop, "rplat": rplat_loop}


def _worker(schedule: list[str], url: str, owner: str, barrier: Barrier, results: Any) -> None:
    """Run each loop of the schedule in turn, each started by the barrier once the parent filled the queue."""
    for loop in schedule:
        results.put(LOOPS[loop](url, owner, barrier))


# --- runs -----------------------------------------------------------------------------------------


def fill(url: str, jobs: int) -> None:
    """Empty the queue and insert `jobs` due probe jobs, the rows `Queue.enqueue` writes (bulk, to save time)."""
    engine = get_engine(url)
    due = utcnow() - dt.timedelta(seconds=1)
    rows = [dict(kind="probe", params={"target": None, "sleep_seconds": 0.0, "burn_seconds": 0.0, "tag": str(i),
                                       "devices": False},
                 priority=0, status="queued", attempts=0, max_attempts=3, lease_token=0, cancel_requested=False,
                 progress_done=0, created_at=due, not_before=due) for i in range(jobs)]
    with engine.begin() as conn:
        conn.execute(delete(JobEvent))
        conn.execute(delete(Job))
        conn.execute(insert(Job), rows)
    # Every run starts from the same state: no dead rows left by the previous run (PostgreSQL scans them until
    # a vacuum) and fresh planner statistics, as autovacuum would leave them after a bulk enqueue.
    maintenance = "ANALYZE" if engine.dialect.name == "sqlite" else "VACUUM ANALYZE"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(maintenance))


def measure(backend: str, url: str, jobs: int, repeats: int) -> dict[str, float]:
    """Median jobs/s of each side over `repeats` alternating runs, all in the same WORKERS processes."""
    sides = {f"bare-{backend}": "bare", "rplat": "rplat"}
    schedule = list(sides) * repeats
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS + 1)
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(schedule, url, f"w{n}", barrier, results))
               for n in range(WORKERS)]
    for w in workers:
        w.start()
    rates: dict[str, list[float]] = {side: [] for side in sides.values()}
    try:
        for loop in schedule:
            fill(url, jobs)
            barrier.wait()
            start = time.perf_counter()
            done = sum(results.get() for _ in workers)
            elapsed = time.perf_counter() - start
            if done != jobs:
                raise SystemExit(f"{loop} on {backend} completed {done} of {jobs} jobs")
            rates[sides[loop]].append(jobs / elapsed)
    finally:
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.kill()
    return {side: statistics.median(runs) for side, runs in rates.items()}



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per side per database; the median counts")
    args = parser.parse_args()
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("sqlite", "postgresql"):
            with fresh_store(backend, Path(tmp)) as url:
                rate = measure(backend, url, args.jobs, args.repeats)
            ratio = rate["rplat"] / rate["bare"]
            ratios.append(ratio)
            print(f"{backend}: rplat {rate['rplat']:.0f} jobs/s, bare {rate['bare']:.0f} jobs/s, ratio {ratio:.2f} "
                  f"({WORKERS} processes, {args.jobs} jobs, median of {args.repeats})", flush=True)
    print(f"ratio queue: {min(ratios):.2f}")


if __name__ == "__main__":
    main()
