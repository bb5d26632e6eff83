"""Helpers of the kill -9 tests: real runner subprocesses, seeded rationales, untimed waits."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select

from rplat.models import Extraction, Job, Rationale
from rplat.prompts import TEMPLATES, ensure_template
from rplat.registry import register_model
from rplat.store import transaction

from tiny_lm import save_tiny

HANG = 300.0  # a guard against hangs, never a performance threshold


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def runner_processes(db: Any) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Body of a `runners` fixture: start(*args) starts `rplat runner` (2 s leases) on the store; all are killed
    at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "rplat.cli", "runner", "--lease-seconds", "2",
                                 "--poll-seconds", "0.1", "--quiet", *args], env=db.env, cwd=db.home,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def count_rows(db: Any, model: Any, job_id: int) -> int:
    with db.engine().connect() as conn:
        return conn.scalar(select(func.count()).select_from(model).where(model.job_id == job_id)) or 0


def seed_rationales(db: Any, tmp_path: Path, n: int) -> int:
    """A tiny registered model and a finished extraction job with `n` rationales; returns the extraction job's id."""
    with transaction(db.engine()) as s:
        model = register_model(s, "tiny", "base", save_tiny(tmp_path / "tiny"), role="agent")
        job_id = s.scalar(insert(Job).values(kind="extract-rationales", status="succeeded", params={}, attempts=1,
                                             max_attempts=1, lease_token=1, cancel_requested=False, priority=0,
                                             progress_done=0).returning(Job.id))
        template_id = ensure_template(s, TEMPLATES["extract-insert"])
        for k in range(n):
            ext = Extraction(job_id=job_id, model_id=model.id, prompt_template_id=template_id, temperature=0.0,
                             input_text=str(k), raw_output=str(k), fidelity=1.0, passed=True)
            s.add(ext)
            s.flush()
            s.add(Rationale(job_id=job_id, extraction_id=ext.id, position=1, left_step=1, source="gsm8k",
                            preceding=f"Tom has {k} apples and buys {k % 7} more.",
                            rationale=f"add {k % 7} to {k}",
                            following=f"He has {k + k % 7} apples. The answer is {k}."))
    return job_id


def kill_then_rescue(db: Any, runners: Callable[..., subprocess.Popen[bytes]], job_id: int, steps: int,
                     ready: Callable[[], bool], what: str) -> tuple[int, Any]:
    """The kill -9 sequence of a training job: a runner takes it, is killed once `ready()` (checkpoints were
    written), and a second runner takes it over after the lease expires. Returns (the step it resumed from, the
    job's result), having checked that the job succeeded."""
    from rplat.models import Checkpoint

    victim = runners("--once")
    wait_for(ready, what)
    victim.kill()  # SIGKILL: no handler runs, the lease is left to expire
    victim.wait()
    with db.engine().connect() as conn:
        resume_at = conn.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.job_id == job_id))
    assert resume_at is not None and resume_at < steps
    rescuer = runners("--max-jobs", "1")  # waits for the dead runner's lease to expire, then takes the job
    wait_for(lambda: rescuer.poll() is not None, "the rescuing runner")
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        return resume_at, (job.result, job.attempts)
