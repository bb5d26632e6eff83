"""JobContext: a handler's fenced writes, progress, logs, checkpoints and cancellation."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from rplat import reviews
from rplat.errors import JobCancelled, JobInterrupted, LeaseLost
from rplat.hashing import file_sha256
from rplat.models import Checkpoint, TrainingMetric
from rplat.paths import under
from rplat.queue import ClaimedJob, Queue, record_event
from rplat.store import insert_ignore, transaction, upsert

KEEP_CHECKPOINTS = 2


class StepMetric(TypedDict):
    """One optimizer step's row of `training_metrics`, without its job: the loss, the learning rate, and the
    objective's metrics and eval values in `extra`."""

    step: int
    loss: float
    lr: float
    extra: dict[str, float] | None


class JobContext:
    def __init__(self, job: ClaimedJob, queue: Queue, home: Path, runner: str, stopping: threading.Event) -> None:
        self.job = job
        self.queue = queue
        self.home = home
        self.runner = runner
        self._stopping = stopping
        self._cancelled = threading.Event()
        self._lease_lost = threading.Event()
        self._progress: tuple[int, int | None] = (0, None)
        self._reviews_seen: int | None = None

    @property
    def job_id(self) -> int:
        return self.job.id

    @property
    def engine(self) -> Engine:
        return self.queue.engine

    @property
    def attempt(self) -> int:
        return self.job.attempts

    @property
    def devices(self) -> tuple[str, ...]:
        """The device ids the runner gave this job, which is also its CUDA_VISIBLE_DEVICES (pass them on to
        processes the handler starts, e.g. torchrun); empty for a job that needs no GPU."""
        return self.job.devices

    # --- writes ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction whose first statement proves this runner still holds the lease (else LeaseLost)."""
        with transaction(self.engine) as session:
            self.queue.fence(session, self.job.id, self.job.lease_token)
            yield session

    def reviews_seen(self) -> int:
        """The last review this job reads (rplat.reviews): pinned by its first call in any attempt, so a resumed
        job reads the labels, keep decisions and gold answers its first attempt read. Pass it to the effective
        value expressions (`rplat.reviews.chain_label(through)`...)."""
        if self._reviews_seen is None:
            with self.transaction() as session:
                self._reviews_seen = reviews.seen(session, self.job.id)
        return self._reviews_seen

    def read(self) -> Session:
        """A plain session for reading inputs (the caller closes it)."""
        return Session(self.engine.execution_options(rplat_readonly=True))

    def log(self, message: str) -> None:
        with transaction(self.engine) as session:
            record_event(session, self.job.id, "log", message, runner=self.runner, attempt=self.job.attempts)

    def progress(self, done: int, total: int | None = None) -> None:
        """Recorded with the next heartbeat (no extra write per item)."""
        self._progress = (done, total if total is not None else self._progress[1])

    @property
    def current_progress(self) -> tuple[int, int | None]:
        return self._progress

    def record_metrics(self, rows: Sequence[StepMetric]) -> None:
        """Upsert training steps' metrics (a resumed run rewrites the steps after its checkpoint), fenced."""
        with self.transaction() as session:
            upsert(session, TrainingMetric, [dict(row, job_id=self.job.id) for row in rows], ["job_id", "step"],
                   ["loss", "lr", "extra"])

    # --- checkpoints -------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return under(self.home, "checkpoints", f"job-{self.job.id}")

    def save_checkpoint(self, state: dict[str, Any], step: int) -> Path:
        """Write `state` (tensors, numbers, strings, nested dicts/lists) atomically and register it, fenced."""
        import torch

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"step-{step:09d}.pt"
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, path)
        digest = file_sha256(path)
        with self.transaction() as session:
            session.execute(delete(Checkpoint).where(Checkpoint.job_id == self.job.id, Checkpoint.step == step))
            insert_ignore(session, Checkpoint, [dict(job_id=self.job.id, step=step, path=str(path), sha256=digest,
                                                     size_bytes=path.stat().st_size)], ["job_id", "step"])
            stale = session.scalars(
                select(Checkpoint).where(Checkpoint.job_id == self.job.id)
                .order_by(Checkpoint.step.desc()).offset(KEEP_CHECKPOINTS)
            ).all()
            for old in stale:
                session.delete(old)
        for old in stale:
            Path(old.path).unlink(missing_ok=True)
        return path

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """The newest intact checkpoint of this job as (step, state), or None; loads with weights_only=True."""
        import torch

        with self.read() as session:
            rows = session.scalars(
                select(Checkpoint).where(Checkpoint.job_id == self.job.id).order_by(Checkpoint.step.desc())
            ).all()
        for row in rows:
            path = Path(row.path)
            if path.exists() and file_sha256(path) == row.sha256:
                return row.step, torch.load(path, weights_only=True, map_location="cpu")
        return None

    # --- cancellation and shutdown -----------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def check(self) -> None:
        """Call between units of work: stops the handler if the job was cancelled, the runner is shutting down
        or the lease was lost."""
        if self._lease_lost.is_set():
            raise LeaseLost(f"job {self.job.id}: lease lost")
        if self._cancelled.is_set():
            raise JobCancelled(f"job {self.job.id} was cancelled")
        if self._stopping.is_set():
            raise JobInterrupted(f"job {self.job.id} interrupted by runner shutdown")

    def _on_beat(self, alive: bool, cancel_requested: bool) -> None:
        if not alive:
            self._lease_lost.set()
        if cancel_requested:
            self._cancelled.set()
