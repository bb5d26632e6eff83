"""Helpers of the kill -9 tests: real runner subprocesses, in-process rescuers, seeded rationales, untimed waits."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from rplat.models import Checkpoint, Job
from rplat.prompts import TEMPLATES, ensure_template
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

import factories as make
from stores import Store
from tiny_lm import register_tiny

HANG = 300.0  # a guard against hangs, never a performance threshold
LEASE_SECONDS = 2.0  # the runner processes' leases: what a rescuer waits out after a kill -9, at most
IN_PROCESS_LEASE_SECONDS = 30.0

StartRunner = Callable[..., subprocess.Popen[bytes]]  # what a `runners` fixture gives: start(*args) -> the process


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def runner_processes(db: Store) -> Iterator[StartRunner]:
    """Body of a `runners` fixture: start(*args) starts `rplat runner` (2 s leases) on the store; all are killed
    at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "rplat.cli", "runner", "--lease-seconds", str(LEASE_SECONDS),
                                 "--poll-seconds", "0.1", "--quiet", *args], env=db.env, cwd=db.home,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def count_rows(db: Store, model: Any, job_id: int) -> int:
    with db.engine().connect() as conn:
        return conn.scalar(select(func.count()).select_from(model).where(model.job_id == job_id)) or 0


def seed_rationales(db: Store, tmp_path: Path, n: int) -> int:
    """A tiny registered model and a finished extraction job with `n` rationales; returns the extraction job's id."""
    with transaction(db.engine()) as s:
        model = register_tiny(s, tmp_path)
        extract = make.job(s, "extract-rationales")
        template_id = ensure_template(s, TEMPLATES["extract-insert"])
        for k in range(n):
            extraction = make.extraction(s, extract, model, template_id, str(k), str(k))
            make.rationale(s, extraction, f"Tom has {k} apples and buys {k % 7} more.", f"add {k % 7} to {k}",
                           f"He has {k + k % 7} apples. The answer is {k}.", source="gsm8k")
        return extract.id


def last_checkpoint(db: Store, job_id: int) -> int:
    """The step of the job's newest recorded checkpoint, -1 before the first. Kill tests wait on this, not on
    metric rows: a step's metrics are written just before its checkpoint."""
    with db.engine().connect() as conn:
        step = conn.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.job_id == job_id))
    return -1 if step is None else step


def run_one(db: Store) -> None:
    """A runner in this process (torch is imported here already: one runner start-up less) that runs one job and
    returns; a job whose runner was killed it takes over once that runner's lease has expired. Its own lease is
    long: nothing takes over from it, and this busy process must not lose it between heartbeats."""
    Runner(Queue(db.engine()), db.home, RunnerOptions(max_jobs=1, lease_seconds=IN_PROCESS_LEASE_SECONDS,
                                                      poll_seconds=0.1)).run()


def kill_then_rescue(db: Store, runners: StartRunner, job_id: int, steps: int,
                     checkpoint_at: int) -> tuple[int, Any]:
    """The kill -9 sequence of a training job: a runner process takes it and is killed once the checkpoint of step
    `checkpoint_at` (or a later one) is recorded; a second runner, in this process, takes it over after the lease
    expires. Returns (the step it resumed from, (the job's result, its attempts)), having checked that the job
    succeeded. `steps - checkpoint_at` steps are the margin for noticing the checkpoint before the job ends."""
    victim = runners("--once")
    wait_for(lambda: last_checkpoint(db, job_id) >= checkpoint_at or victim.poll() is not None,
             f"the checkpoint of step {checkpoint_at}")
    victim.kill()  # SIGKILL: no handler runs, the lease is left to expire
    victim.wait()
    resume_at = last_checkpoint(db, job_id)
    assert checkpoint_at <= resume_at < steps, f"killed after the checkpoint of step {resume_at} of {steps}"
    run_one(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        return resume_at, (job.result, job.attempts)
