"""train-rationalyst with nproc=2 under torchrun: one process's curves, and resume after a kill -9.

The loss curve matches one process's (DDP, and FSDP); a kill -9 of the runner takes its workers with it, after
which another runner resumes under 2 processes at the checkpoint."""

from __future__ import annotations

import math
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from rplat.models import Job, JobEvent, Model, TrainingMetric
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

from killable_runners import (
    IN_PROCESS_LEASE_SECONDS,
    LEASE_SECONDS,
    StartRunner,
    last_checkpoint,
    run_one,
    runner_processes,
    seed_rationales,
    wait_for,
)
from stores import Store

pytestmark = pytest.mark.slow

# Absolute, per step: two processes add the same per-token terms in another order (and all-reduce them), so the
# float sums differ in the last bits; the largest difference measured over 80 such steps was 7.1e-7.
TOLERANCE = 1e-4
# 25 rationales, 2 held out, 23 trained on for 11 epochs in global batches of 4: the last step has one example,
# so the second rank runs a zero-weight one. Checkpoints every 8 steps: the kill comes after the second (16), with
# 48 steps left to notice it in before the run ends.
RATIONALES = 25
STEPS = math.ceil(11 * 23 / 4)
COMMON = {"model": "tiny", "epochs": 11, "batch_size": 2, "grad_accum": 2, "checkpoint_every": 8,
          "eval_fraction": 0.1, "eval_every": 8, "lr": 1e-3, "lora_dropout": 0.0}


@pytest.fixture
def runners(db: Store, monkeypatch: pytest.MonkeyPatch) -> Iterator[StartRunner]:
    # Torchrun workers of a runner in this process inherit its environment: they load the test plugins too.
    monkeypatch.setenv("PYTHONPATH", db.env["PYTHONPATH"])
    yield from runner_processes(db)


def _run_in_process(db: Store, **options: object) -> None:
    """A runner in this process (one runner start-up less; torchrun still starts real workers)."""
    options = {"lease_seconds": IN_PROCESS_LEASE_SECONDS, "poll_seconds": 0.1, **options}
    Runner(Queue(db.engine()), db.home, RunnerOptions(**options)).run()  # type: ignore[arg-type]


def _processes_of(run_dir: Path) -> list[int]:
    """Live processes whose command line names the run's directory: torchrun's agent and its workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:  # the process ended while we looked
                continue
            if str(run_dir).encode() in argv and state != "Z":
                found.append(int(entry.name))
    return found


def _curve(db: Store, job_id: int) -> list[tuple[int, float, float | None]]:
    with db.engine().connect() as conn:
        rows = conn.execute(select(TrainingMetric.step, TrainingMetric.loss, TrainingMetric.extra)
                            .where(TrainingMetric.job_id == job_id).order_by(TrainingMetric.step)).all()
    return [(r.step, r.loss, (r.extra or {}).get("eval_loss")) for r in rows]


def test_two_processes_follow_one_and_resume_after_the_runner_is_killed(
        db: Store, tmp_path: Path, runners: StartRunner) -> None:
    extract_job = seed_rationales(db, tmp_path, RATIONALES)
    queue = Queue(db.engine())
    score_job, _ = queue.enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny", "tau": -1e9})
    common = {**COMMON, "score_job": score_job}
    single, _ = queue.enqueue("train-rationalyst", {**common, "adapter_name": "single"}, after=[score_job])
    double, _ = queue.enqueue("train-rationalyst", {**common, "adapter_name": "double", "nproc": 2},
                              after=[score_job])
    sharded, _ = queue.enqueue("train-rationalyst", {**common, "adapter_name": "sharded", "nproc": 2,
                                                     "parallel": "fsdp"}, after=[score_job])
    _run_in_process(db, once=True)
    with transaction(db.engine()) as s:
        for job_id in (single, double, sharded):
            job = s.get(Job, job_id)
            assert job.status == "succeeded", job.error
        assert s.get(Job, double).result["nproc"] == 2 and s.get(Job, double).result["train_examples"] == 23
    one, two = _curve(db, single), _curve(db, double)
    assert [st for st, _, _ in two] == [st for st, _, _ in one] == list(range(STEPS))
    assert [loss for _, loss, _ in two] == pytest.approx([loss for _, loss, _ in one], abs=TOLERANCE)
    assert [loss for _, loss, _ in _curve(db, sharded)] == pytest.approx([loss for _, loss, _ in one], abs=TOLERANCE)
    evals = [(st, ev) for st, _, ev in one if ev is not None]
    assert [st for st, _ in evals] == [*range(7, STEPS - 1, 8), STEPS - 1]
    assert [ev for _, ev, in evals] == pytest.approx([ev for _, _, ev in two if ev is not None], abs=TOLERANCE)

    crashed, _ = queue.enqueue("train-rationalyst", {**common, "adapter_name": "crashed", "nproc": 2},
                               after=[score_job])
    victim = runners("--once")
    run_dir = db.home / "runs" / f"job-{crashed}"
    wait_for(lambda: last_checkpoint(db, crashed) >= 16 or victim.poll() is not None, "two checkpoints")
    assert len(_processes_of(run_dir)) == 3  # torchrun's agent and two workers
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    wait_for(lambda: not _processes_of(run_dir), "the workers to die with the runner")
    resume_at = last_checkpoint(db, crashed)
    assert 16 <= resume_at < STEPS

    run_one(db)  # waits for the dead runner's lease to expire, then takes the job
    with transaction(db.engine()) as s:
        job = s.get(Job, crashed)
        assert job.status == "succeeded", job.error
        logs = s.scalars(select(JobEvent.message).where(JobEvent.job_id == crashed, JobEvent.event == "log",
                                                        JobEvent.attempt == 2)).all()
        adapter = s.scalar(select(Model).where(Model.job_id == crashed))
    assert job.attempts == 2 and job.result["resumed_from"] == resume_at and job.result["nproc"] == 2
    assert f"resumed training at step {resume_at} of {STEPS}" in logs
    assert adapter is not None and adapter.name == "crashed" and adapter.format == "lora"
    again = _curve(db, crashed)
    assert [st for st, _, _ in again] == list(range(STEPS))
    assert [loss for _, loss, _ in again] == pytest.approx([loss for _, loss, _ in two], rel=1e-6)
    assert [ev for _, _, ev in again if ev is not None] == pytest.approx([ev for _, _, ev in two if ev is not None],
                                                                         rel=1e-6)


def test_cancelling_a_two_process_job_stops_its_workers(db: Store, tmp_path: Path, runners: StartRunner) -> None:
    extract_job = seed_rationales(db, tmp_path, 8)
    queue = Queue(db.engine())
    score_job, _ = queue.enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny", "tau": -1e9})
    job_id, _ = queue.enqueue("train-rationalyst", {**COMMON, "score_job": score_job, "nproc": 2, "epochs": 10000},
                              after=[score_job])
    run_dir = db.home / "runs" / f"job-{job_id}"
    workers_at_cancel: list[int] = []

    def cancel_after_the_first_checkpoint() -> None:
        try:
            wait_for(lambda: last_checkpoint(db, job_id) >= 8, "the first checkpoint")
            workers_at_cancel.append(len(_processes_of(run_dir)))
        finally:  # even after a failed wait: the runner below would train for 10000 epochs
            queue.cancel(job_id)

    canceller = threading.Thread(target=cancel_after_the_first_checkpoint)
    canceller.start()
    # The score job, then the training job until its cancellation, which reaches the runner with its next
    # heartbeat (every third of a lease: short here).
    _run_in_process(db, max_jobs=2, lease_seconds=LEASE_SECONDS)
    canceller.join()
    assert workers_at_cancel == [3]  # torchrun's agent and two workers were running
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
    assert job.status == "cancelled" and job.progress_done is not None and 8 <= job.progress_done < job.progress_total
    wait_for(lambda: not _processes_of(run_dir), "the workers to stop")  # killed ones may take a moment to go
