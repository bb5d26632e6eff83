"""kill -9 in score- and train-rationalyst: the re-claimed job ends as an uninterrupted run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rplat.models import GenerationCache, Job, RationaleScore, TrainingMetric
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

from killable_runners import StartRunner, count_rows, kill_then_rescue, run_one, seed_rationales, wait_for
from stores import Store

# Two checkpoints before the kill, and 50 steps to notice them in before the run ends.
STEPS = 60


def test_killed_score_rationales_resumes_without_duplicates(db: Store, tmp_path: Path, runners: StartRunner) -> None:
    extract_job = seed_rationales(db, tmp_path, 120)
    job_id, _ = Queue(db.engine()).enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny",
                                                                "batch_size": 2}, max_attempts=3)
    first = runners("--once")
    wait_for(lambda: count_rows(db, RationaleScore, job_id) >= 10, "the first batches")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    partial = count_rows(db, RationaleScore, job_id)
    with db.engine().connect() as conn:
        cached_at_kill = conn.scalar(select(func.count()).select_from(GenerationCache))
    assert 10 <= partial < 120 and cached_at_kill >= 2 * partial
    run_one(db)  # waits for the dead runner's lease to expire, then takes the job
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        assert job.attempts == 2
        per_rationale = s.execute(select(RationaleScore.rationale_id, func.count())
                                  .where(RationaleScore.job_id == job_id)
                                  .group_by(RationaleScore.rationale_id)).all()
    assert len(per_rationale) == 120 and all(n == 1 for _, n in per_rationale)
    assert job.result["scored"] == 120
    # Every (context, following) pair reached the model exactly once over both runs.
    assert job.result["cache_misses"] == 240 - cached_at_kill


def test_killed_training_resumes_at_its_checkpoint_with_the_same_loss_curve(
        db: Store, tmp_path: Path, runners: StartRunner) -> None:
    extract_job = seed_rationales(db, tmp_path, 40)
    queue = Queue(db.engine())
    score_job, _ = queue.enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny", "tau": -1e9})
    common = {"score_job": score_job, "model": "tiny", "max_steps": STEPS, "epochs": 6, "batch_size": 4,
              "grad_accum": 1, "checkpoint_every": 5, "eval_fraction": 0.0, "lr": 1e-3}
    straight, _ = queue.enqueue("train-rationalyst", {**common, "adapter_name": "straight"}, after=[score_job])
    # The uninterrupted yardstick in this process: the same numbers (one thread, the CPU, fixed seeds).
    Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    assert count_rows(db, TrainingMetric, straight) == STEPS
    crashed, _ = queue.enqueue("train-rationalyst", {**common, "adapter_name": "crashed"}, after=[score_job])
    resume_at, (result, _) = kill_then_rescue(db, runners, crashed, STEPS, checkpoint_at=10)
    with transaction(db.engine()) as s:
        curves = {j: s.execute(select(TrainingMetric.step, TrainingMetric.loss).where(TrainingMetric.job_id == j)
                               .order_by(TrainingMetric.step)).all() for j in (straight, crashed)}
    assert result["resumed_from"] == resume_at
    assert [st for st, _ in curves[crashed]] == list(range(STEPS))
    assert [loss for _, loss in curves[crashed]] == pytest.approx([loss for _, loss in curves[straight]], rel=1e-4)
