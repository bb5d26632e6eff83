"""The runner: claims jobs, runs their handlers while a heartbeat thread holds the lease, records how they ended."""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from rplat import kinds
from rplat.errors import JobCancelled, JobInterrupted, LeaseLost, UserError
from rplat.migrate import ensure_at_head
from rplat.queue import ClaimedJob, Queue
from rplat.runners.context import JobContext


@dataclass
class RunnerOptions:
    kinds: list[str] | None = None
    once: bool = False
    until_done: bool = False  # exit when no job this runner could run is queued or running anywhere
    max_jobs: int | None = None
    lease_seconds: float = 60.0
    poll_seconds: float = 1.0
    name: str | None = None
    host: str | None = None  # the machine name jobs pinned with `enqueue --host` must name (default: hostname)


class Runner:
    def __init__(self, queue: Queue, home: Path, options: RunnerOptions,
                 echo: Callable[[str], None] = lambda _m: None) -> None:
        self.queue = queue
        self.home = home
        self.options = options
        self.echo = echo
        self.name = options.name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stopping = threading.Event()
        self.jobs_done = 0
        self._current: JobContext | None = None
        self._lock = threading.Lock()
        self._beat_stop = threading.Event()

    # --- heartbeat ---------------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        interval = max(self.options.lease_seconds / 3, 0.05)
        while not self._beat_stop.wait(interval):
            with self._lock:
                ctx = self._current
            try:
                if ctx is not None:
                    beat = self.queue.heartbeat(ctx.job.id, ctx.job.lease_token, self.options.lease_seconds,
                                                ctx.current_progress)
                    ctx._on_beat(beat.alive, beat.cancel_requested)
                self.queue.runner_beat(self.name, ctx.job.id if ctx else None, self.jobs_done)
            except Exception as exc:  # a missed beat is retried next interval; the lease covers several
                self.echo(f"heartbeat failed: {exc}")

    # --- main loop ---------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        def _stop(signum: int, _frame: object) -> None:
            self.echo(f"received signal {signum}; finishing the current unit of work and releasing the job")
            self.stopping.set()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)

    def run(self) -> int:
        """Run until stopped, drained (--once: nothing claimable now; --until-done: nothing left to wait for) or
        --max-jobs; returns the number of jobs executed."""
        ensure_at_head(self.queue.engine)
        # Without --kinds a runner takes every kind it can run, and only those: a job of a kind this
        # runner has never heard of (a plugin it lacks) stays queued for a runner that knows it.
        claimable = self.options.kinds if self.options.kinds is not None else list(kinds.all_kinds())
        for k in claimable:
            kinds.get(k)
        self._install_signals()
        host = self.options.host or socket.gethostname()
        self.queue.register_runner(self.name, host, os.getpid(), self.options.kinds)
        beat = threading.Thread(target=self._heartbeat_loop, name="rplat-heartbeat", daemon=True)
        beat.start()
        idle = self.options.poll_seconds
        try:
            while not self.stopping.is_set():
                if self.options.max_jobs is not None and self.jobs_done >= self.options.max_jobs:
                    break
                job = self.queue.claim(self.name, claimable, self.options.lease_seconds, host)
                if job is None:
                    if self.options.once or (self.options.until_done and not self.queue.outstanding(claimable, host)):
                        break
                    self.stopping.wait(idle * random.uniform(0.5, 1.0))
                    continue
                self.execute(job)
                self.jobs_done += 1
        finally:
            self._beat_stop.set()
            beat.join(timeout=5)
            self.queue.runner_beat(self.name, None, self.jobs_done, stopped=True)
        return self.jobs_done

    def execute(self, job: ClaimedJob) -> str:
        """Run one claimed job to an end state; returns that state."""
        self.echo(f"job {job.id} ({job.kind}) attempt {job.attempts}: started")
        try:
            kind = kinds.get(job.kind)
            try:
                params = kind.params.model_validate(job.params)
            except ValidationError as exc:
                raise UserError(f"job {job.id}'s stored params no longer fit kind {job.kind!r}: "
                                f"{exc.errors()[0]['msg']}") from None
            ctx = JobContext(job, params, self.queue, self.home, self.name, self.stopping)
            with self._lock:
                self._current = ctx
            result = kind.load_handler()(ctx, params)
            self.queue.complete(job.id, job.lease_token, result, ctx.current_progress)
            state = "succeeded"
        except JobCancelled:
            self.queue.finish_cancelled(job.id, job.lease_token, runner=self.name)
            state = "cancelled"
        except JobInterrupted:
            self.queue.release(job.id, job.lease_token, runner=self.name)
            state = "released"
        except LeaseLost:
            state = "lease-lost"
        except UserError as exc:
            state = self._fail(job, str(exc), retryable=False)
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            self.echo(traceback.format_exc())
            state = self._fail(job, detail, retryable=True)
        finally:
            with self._lock:
                self._current = None
        self.echo(f"job {job.id} ({job.kind}): {state}")
        return state

    def _fail(self, job: ClaimedJob, error: str, *, retryable: bool) -> str:
        try:
            return self.queue.fail(job.id, job.lease_token, error, retryable=retryable, runner=self.name)
        except LeaseLost:
            return "lease-lost"

