"""kill -9 during score-rationales and train-rationalyst: the re-claimed job resumes and ends as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import func, insert, select

from rplat.models import (
    Checkpoint,
    Extraction,
    GenerationCache,
    Job,
    Rationale,
    RationaleScore,
    TrainingMetric,
)
from rplat.prompts import TEMPLATES, ensure_template
from rplat.queue import Queue
from rplat.registry import register_model
from rplat.store import transaction

from tiny_lm import save_tiny

HANG = 300.0  # a guard against hangs, never a performance threshold


def _wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def runners(db) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:  # type: ignore[no-untyped-def]
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


def _count(db, model, job_id: int) -> int:  # type: ignore[no-untyped-def]
    with db.engine().connect() as conn:
        return conn.scalar(select(func.count()).select_from(model).where(model.job_id == job_id)) or 0


def _seed(db, tmp_path, n: int) -> int:  # type: ignore[no-untyped-def]
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
                            rationale=f"add {k % 7} to {k}", following=f"He has {k + k % 7} apples. The answer is {k}."))
    return job_id


def test_killed_score_rationales_resumes_without_duplicates(db, tmp_path, runners) -> None:  # type: ignore[no-untyped-def]
    extract_job = _seed(db, tmp_path, 120)
    job_id, _ = Queue(db.engine()).enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny",
                                                                "batch_size": 2}, max_attempts=3)
    first = runners("--once")
    _wait(lambda: _count(db, RationaleScore, job_id) >= 10, "the first batches")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    partial = _count(db, RationaleScore, job_id)
    with db.engine().connect() as conn:
        cached_at_kill = conn.scalar(select(func.count()).select_from(GenerationCache))
    assert 10 <= partial < 120 and cached_at_kill >= 2 * partial
    second = runners("--max-jobs", "1")  # waits for the dead runner's lease to expire, then takes the job
    _wait(lambda: second.poll() is not None, "the second runner")
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        assert job.attempts == 2
        per_rationale = s.execute(select(RationaleScore.rationale_id, func.count()).where(RationaleScore.job_id == job_id)
                                  .group_by(RationaleScore.rationale_id)).all()
    assert len(per_rationale) == 120 and all(n == 1 for _, n in per_rationale)
    assert job.result["scored"] == 120
    # Every (context, following) pair reached the model exactly once over both runs.
    assert job.result["cache_misses"] == 240 - cached_at_kill


def test_killed_training_resumes_at_its_checkpoint_with_the_same_loss_curve(db, tmp_path, runners) -> None:  # type: ignore[no-untyped-def]
    extract_job = _seed(db, tmp_path, 40)
    queue = Queue(db.engine())
    score_job, _ = queue.enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny", "tau": -1e9})
    common = {"score_job": score_job, "model": "tiny", "max_steps": 120, "epochs": 12, "batch_size": 4, "grad_accum": 1,
              "checkpoint_every": 10, "eval_fraction": 0.0, "lr": 1e-3}
    straight, _ = queue.enqueue("train-rationalyst", {**common, "adapter_name": "straight"}, after=[score_job])
    runners("--once").wait(timeout=HANG)
    assert _count(db, TrainingMetric, straight) == 120
    crashed, _ = queue.enqueue("train-rationalyst", {**common, "adapter_name": "crashed"}, after=[score_job])
    victim = runners("--once")
    _wait(lambda: _count(db, TrainingMetric, crashed) >= 30, "a few checkpoints")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    with db.engine().connect() as conn:
        resume_at = conn.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.job_id == crashed))
    assert resume_at is not None and resume_at < 120
    rescuer = runners("--max-jobs", "1")  # waits for the dead runner's lease to expire, then takes the job
    _wait(lambda: rescuer.poll() is not None, "the rescuing runner")
    with transaction(db.engine()) as s:
        job = s.get(Job, crashed)
        assert job.status == "succeeded", job.error
        curves = {j: s.execute(select(TrainingMetric.step, TrainingMetric.loss).where(TrainingMetric.job_id == j)
                               .order_by(TrainingMetric.step)).all() for j in (straight, crashed)}
    assert job.result["resumed_from"] == resume_at
    assert [st for st, _ in curves[crashed]] == list(range(120))
    assert [loss for _, loss in curves[crashed]] == pytest.approx([loss for _, loss in curves[straight]], rel=1e-4)
