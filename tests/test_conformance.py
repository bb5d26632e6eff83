"""Queue conformance with real `rplat runner` processes, the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from rplat.models import TERMINAL_STATUSES, Job, JobEvent, Runner
from rplat.queue import Queue
from rplat.store import get_engine, transaction

import rplat_test_plugins
from killable_runners import wait_for
from rplat_test_plugins import echo_output, item_output
from stores import Store

HANG = 180.0  # seconds before a wait gives up: a guard against hangs, never a performance threshold


# --- helpers --------------------------------------------------------------------------------------


class Runners:
    """Runner subprocesses with their stderr in files; all of them are killed on exit, whatever happened."""

    def __init__(self, db: Store, logs: Path) -> None:
        self.db = db
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, lease: float = 1.0) -> subprocess.Popen[bytes]:
        # PGAPPNAME lets a test find this runner's PostgreSQL sessions in pg_stat_activity.
        env = {**self.db.env, "PGAPPNAME": name}
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rplat.cli", "runner", "--name", name, "--lease-seconds", str(lease),
                 "--poll-seconds", "0.05", *args],
                env=env, cwd=self.db.home, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def wait(self, name: str) -> int:
        return self.procs[name].wait(timeout=HANG)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()


@pytest.fixture
def runners(db: Store, tmp_path: Path) -> Iterator[Runners]:
    rplat_test_plugins.register()
    rplat_test_plugins.create_output_tables(db.engine())
    started = Runners(db, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def scalar(engine: Engine, query: Any) -> Any:
    with transaction(engine) as session:
        return session.scalar(query)


def job(engine: Engine, job_id: int) -> Job:
    with transaction(engine) as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def events(engine: Engine, job_id: int, event: str) -> list[JobEvent]:
    with transaction(engine) as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.event == event)
                                    .order_by(JobEvent.id)))


def items_written(engine: Engine, job_id: int) -> list[tuple[int, str, int]]:
    """(item, runner, attempt) rows of a test-items job, in item order."""
    with transaction(engine) as session:
        return [tuple(r) for r in session.execute(
            select(item_output.c.item, item_output.c.runner, item_output.c.attempt)
            .where(item_output.c.job_id == job_id).order_by(item_output.c.item, item_output.c.runner))]


def enqueue(engine: Engine, kind: str, params: dict[str, Any], **options: Any) -> int:
    job_id, _ = Queue(engine).enqueue(kind, params, **options)
    return job_id


def holds_no_write_lock(db: Store, runner: str) -> bool:
    """True if the (stopped) runner is outside any transaction, so stopping it blocks nobody but itself."""
    if db.backend == "sqlite":
        conn = sqlite3.connect(db.url.removeprefix("sqlite:///"), timeout=0.5, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()
    busy = scalar(db.engine(), text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                                    "AND state <> 'idle'").bindparams(name=runner))
    return busy == 0


def stop_between_transactions(db: Store, runners: Runners, name: str) -> None:
    """SIGSTOP a runner at a moment it holds no lock (else resume it and try again)."""
    proc = runners.procs[name]
    while True:
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.1)  # lets the server finish a statement the runner sent just before it stopped
        if holds_no_write_lock(db, name):
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)


# --- the matrix -----------------------------------------------------------------------------------


@pytest.mark.parametrize("jobs", [1, 64, 1000])
@pytest.mark.parametrize("n_runners", [1, 4, 8])
def test_every_job_completes_exactly_once(db: Store, runners: Runners, n_runners: int, jobs: int) -> None:
    engine = db.engine()
    queue = Queue(engine)
    with transaction(engine) as session:
        for i in range(jobs):
            queue.enqueue_in(session, "test-echo", {"i": i})
    names = [f"runner-{n}" for n in range(n_runners)]
    for name in names:
        runners.start(name, "--once", "--quiet", "--kinds", "test-echo", lease=30.0)
    assert [runners.wait(name) for name in names] == [0] * n_runners
    with transaction(engine) as session:
        rows = session.execute(select(echo_output.c.job_id, echo_output.c.i)).all()
        ends = session.execute(select(Job.status, Job.lease_token, Job.attempts, func.count())
                               .group_by(Job.status, Job.lease_token, Job.attempts)).all()
    completed = sorted(i for _, i in rows)
    assert completed == list(range(jobs))
    assert len({job_id for job_id, _ in rows}) == len(rows) == jobs
    assert ends == [("succeeded", 1, 1, jobs)], "every job succeeded, claimed once (lease token 1): none ran twice"


# --- enqueue and dependencies ---------------------------------------------------------------------


def _enqueue_at_barrier(url: str, barrier: Any, results: Any) -> None:
    engine = get_engine(url)
    queue = Queue(engine)
    with engine.connect():
        pass
    barrier.wait()
    results.put(queue.enqueue("probe", {"tag": "same", "devices": False}))


def test_concurrent_identical_enqueues_from_several_processes_make_one_job(db: Store) -> None:
    processes = 6
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    workers = [ctx.Process(target=_enqueue_at_barrier, args=(db.url, barrier, results)) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        got = [results.get(timeout=HANG) for _ in range(processes)]
    finally:
        for w in workers:
            w.join(timeout=HANG)
            if w.is_alive():
                w.kill()
    assert [w.exitcode for w in workers] == [0] * processes
    assert len({job_id for job_id, _ in got}) == 1
    assert sum(created for _, created in got) == 1
    assert scalar(db.engine(), select(func.count()).select_from(Job)) == 1


def test_concurrent_identical_rplat_enqueue_commands_make_one_job(db: Store) -> None:
    args = ("enqueue", "probe", "--param", "tag=same", "--param", "devices=false", "--json")
    procs = [db.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    try:
        outputs = [p.communicate(timeout=HANG) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0] * 4, outputs
    answers = [json.loads(out) for out, _ in outputs]
    assert len({a["id"] for a in answers}) == 1
    assert sum(a["created"] for a in answers) == 1
    assert scalar(db.engine(), select(func.count()).select_from(Job)) == 1


def test_job_blocked_on_a_failed_parent_is_cancelled(db: Store, runners: Runners) -> None:
    engine = db.engine()
    parent = enqueue(engine, "test-fail", {}, max_attempts=1)
    child = enqueue(engine, "probe", {"devices": False}, after=[parent])
    grandchild = enqueue(engine, "probe", {"tag": "grandchild", "devices": False}, after=[child])
    runners.start("runner-a", "--once")
    assert runners.wait("runner-a") == 0
    assert job(engine, parent).status == "failed"
    for descendant in (child, grandchild):
        stored = job(engine, descendant)
        assert (stored.status, stored.error, stored.lease_token) == ("cancelled", f"parent job {parent} failed", 0)


# --- leases, crashes, fencing, shutdown -----------------------------------------------------------


def test_handler_burning_cpu_past_its_lease_is_never_reclaimed(db: Store, runners: Runners) -> None:
    engine = db.engine()
    lease = 1.0
    for name in ("runner-a", "runner-b"):
        runners.start(name, lease=lease)
    wait_for(lambda: scalar(engine, select(func.count()).select_from(Runner)) == 2, "both runners to poll")
    job_id = enqueue(engine, "probe", {"burn_seconds": 3 * lease, "devices": False})
    wait_for(lambda: job(engine, job_id).status in TERMINAL_STATUSES, "the job to finish")
    stored = job(engine, job_id)
    assert (stored.status, stored.attempts, stored.lease_token) == ("succeeded", 1, 1), "claimed once, never again"
    assert events(engine, job_id, "lease-expired") == []
    assert stored.result is not None and stored.result["burn_loops"] > 0
    assert stored.finished_at is not None and stored.started_at is not None
    assert (stored.finished_at - stored.started_at).total_seconds() > lease, "the handler outlived its lease"


def test_killed_runner_job_is_completed_by_another_after_the_lease_expires(db: Store, runners: Runners) -> None:
    engine = db.engine()
    items = 6
    job_id = enqueue(engine, "test-items", {"items": items, "pause_seconds": 0.3})
    runners.start("runner-a", "--max-jobs", "1")
    wait_for(lambda: len(items_written(engine, job_id)) >= 1, "runner-a to write an item")
    runners.procs["runner-a"].kill()
    runners.wait("runner-a")
    by_a = items_written(engine, job_id)
    lease_of_a = job(engine, job_id).lease_expires_at
    assert len(by_a) < items, "runner-a was killed mid-job"
    runners.start("runner-b", "--max-jobs", "1")
    assert runners.wait("runner-b") == 0
    stored = job(engine, job_id)
    assert (stored.status, stored.attempts) == ("succeeded", 2)
    written = items_written(engine, job_id)
    assert [item for item, _, _ in written] == list(range(items)), "no duplicate and no lost item"
    assert written[: len(by_a)] == by_a
    assert {(runner, attempt) for _, runner, attempt in written[len(by_a):]} == {("runner-b", 2)}
    assert [(e.runner, e.attempt) for e in events(engine, job_id, "lease-expired")] == [("runner-a", 1)]
    (reclaim,) = events(engine, job_id, "claimed")
    assert (reclaim.runner, reclaim.attempt) == ("runner-b", 2)
    assert lease_of_a is not None and reclaim.at >= lease_of_a, "taken over only after runner-a's lease expired"


def test_fenced_runner_late_commit_is_rejected(db: Store, runners: Runners) -> None:
    engine = db.engine()
    items = 4
    job_id = enqueue(engine, "test-items", {"items": items, "pause_seconds": 1.0, "check": False})
    runners.start("runner-a", "--max-jobs", "1")
    wait_for(lambda: len(items_written(engine, job_id)) >= 1, "runner-a to write an item")
    stop_between_transactions(db, runners, "runner-a")
    by_a = items_written(engine, job_id)
    assert len(by_a) < items
    runners.start("runner-b", "--max-jobs", "1")
    assert runners.wait("runner-b") == 0
    runners.procs["runner-a"].send_signal(signal.SIGCONT)
    assert runners.wait("runner-a") == 0
    assert f"job {job_id} (test-items): lease-lost" in runners.log("runner-a")
    stored = job(engine, job_id)
    assert (stored.status, stored.attempts) == ("succeeded", 2)
    assert stored.result is not None and stored.result["runner"] == "runner-b"
    written = items_written(engine, job_id)
    assert [item for item, _, _ in written] == list(range(items))
    assert [row for row in written if row[1] == "runner-a"] == by_a, "runner-a wrote nothing after its lease"


def test_sigterm_releases_the_job_for_another_runner_without_counting_the_attempt(
        db: Store, runners: Runners) -> None:
    engine = db.engine()
    items = 5
    job_id = enqueue(engine, "test-items", {"items": items, "pause_seconds": 0.3})
    runners.start("runner-a", "--max-jobs", "1")
    wait_for(lambda: len(items_written(engine, job_id)) >= 1, "runner-a to write an item")
    runners.procs["runner-a"].send_signal(signal.SIGTERM)
    assert runners.wait("runner-a") == 0
    released = job(engine, job_id)
    assert (released.status, released.attempts, released.lease_expires_at) == ("queued", 0, None)
    by_a = items_written(engine, job_id)
    assert len(by_a) < items
    runners.start("runner-b", "--once")
    assert runners.wait("runner-b") == 0
    stored = job(engine, job_id)
    assert (stored.status, stored.attempts, stored.lease_owner) == ("succeeded", 1, "runner-b")
    assert [e.runner for e in events(engine, job_id, "released")] == ["runner-a"]
    assert [(e.runner, e.attempt) for e in events(engine, job_id, "claimed")] == [("runner-b", 1)]
    written = items_written(engine, job_id)
    assert [item for item, _, _ in written] == list(range(items))
    assert {runner for _, runner, _ in written[len(by_a):]} == {"runner-b"}
