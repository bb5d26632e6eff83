"""The runner: claims jobs and runs their handlers while a heartbeat thread holds each lease.

A runner with one slot and no devices runs its jobs one at a time in its own process. With devices (`--gpus`,
by default the visible CUDA devices) or several slots (`--slots`), it claims while a slot is free, giving
each job the free devices it needs, and runs every job in a child process (`rplat.runners.framework.worker`) whose
CUDA_VISIBLE_DEVICES names the job's devices: CUDA reads that variable once per process, so concurrent jobs
cannot share one. The child is the in-process execution path with a heartbeat thread of its own, so its
lease, cancellation and fencing work as they do in-process; it dies with the runner (PR_SET_PDEATHSIG), so a
runner killed -9 leaves no child holding a lease, and the lease expires as in-process. SIGTERM reaches each
child, which releases its job. A child that dies without recording its job's end fails it (retried).

A runner in the foreground echoes each running job's progress every RPLAT_PROGRESS_SECONDS; with `max_idle` it
leaves once nothing was claimable for that long (a Slurm runner's way out, so an idle allocation is given back).
Under Slurm it records its Slurm job on its row (`runners.slurm_job`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from rplat import kinds
from rplat.errors import JobCancelled, JobInterrupted, LeaseLost, UserError
from rplat.migrate import ensure_at_head
from rplat.progress import Progress
from rplat.queue import ClaimedJob, Queue
from rplat.quiet import silence_libraries
from rplat.runners.framework.context import JobContext
from rplat.runners.training import trackers
from rplat.slurm import slurm_job_of


def how_far(progress: tuple[int, int | None] | None, seconds: float) -> str:
    """", 40/40 in 63 s" from the job's (done, total) progress and this attempt's seconds."""
    done, total = progress or (0, None)
    if total is None:
        return f", {done} in {seconds:.0f} s" if done else f" in {seconds:.0f} s"
    return f", {done}/{total} in {seconds:.0f} s"


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
    gpus: list[str] | None = None  # the device ids to give jobs (default: the visible CUDA devices)
    slots: int = 1  # jobs run at once
    max_idle: float | None = None  # exit after this many seconds with nothing claimable (and no job running)
    progress: bool = False  # echo each running job's progress every RPLAT_PROGRESS_SECONDS (the foreground)


def parse_devices(text: str, source: str) -> list[str]:
    """Device ids from a comma-separated list ("0,1", or GPU UUIDs as CUDA_VISIBLE_DEVICES takes them);
    `none` or nothing is no device."""
    devices = [d.strip() for d in text.split(",") if d.strip()]
    if devices == ["none"]:
        return []
    twice = next((d for i, d in enumerate(devices) if d in devices[:i]), None)
    if twice is not None:
        raise UserError(f"{source} names device {twice!r} twice; list each device once, e.g. --gpus 0,1.")
    return devices


def _nvidia_gpus() -> int:
    """How many GPUs the NVIDIA driver lists (0 without one), asked without importing torch."""
    driver = Path("/proc/driver/nvidia/gpus")
    if driver.is_dir():
        return sum(1 for _ in driver.iterdir())
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0


def visible_devices() -> list[str]:
    """The CUDA devices a runner gives jobs by default: CUDA_VISIBLE_DEVICES if set; else, if the NVIDIA
    driver lists GPUs, the ones torch can use (the driver's count without torch); else none."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return parse_devices(declared, "CUDA_VISIBLE_DEVICES")
    count = _nvidia_gpus()
    if count:
        with contextlib.suppress(ImportError):
            import torch

            count = torch.cuda.device_count()
    return [str(i) for i in range(count)]


class _EchoLines(io.TextIOBase):
    """A text stream whose every line goes to a runner's `echo` (a log line, never redrawn: not a terminal)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        super().__init__()
        self._echo = echo

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self._echo(line)
        return len(text)

    def isatty(self) -> bool:
        return False


@dataclass
class _Child:
    """A job running in a child process, and whether this runner asked it to stop."""

    job: ClaimedJob
    proc: subprocess.Popen[bytes]
    terminated: bool = False


class Runner:
    def __init__(self, queue: Queue, home: Path, options: RunnerOptions,
                 echo: Callable[[str], None] = lambda _m: None) -> None:
        self.queue = queue
        self.home = home
        self.options = options
        self.echo = echo
        self.name = options.name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.devices = options.gpus if options.gpus is not None else visible_devices()
        self.stopping = threading.Event()
        self.jobs_done = 0
        self._current: JobContext | None = None
        self._children: dict[int, _Child] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()  # a child ended or the runner is stopping

    @property
    def in_process(self) -> bool:
        """Jobs run in this process (one at a time, no devices to give), else each in a child process."""
        return self.options.slots == 1 and not self.devices

    # --- heartbeat ---------------------------------------------------------------------------------

    def _heartbeat_loop(self, stop: threading.Event, runner_row: bool) -> None:
        """Extend the in-process job's lease (and record its progress); with `runner_row`, the runner's row too."""
        interval = max(self.options.lease_seconds / 3, 0.05)
        while not stop.wait(interval):
            with self._lock:
                ctx = self._current
                current = ctx.job.id if ctx is not None else min(self._children, default=None)
            try:
                if ctx is not None:
                    beat = self.queue.heartbeat(ctx.job.id, ctx.job.lease_token, self.options.lease_seconds,
                                                ctx.current_progress)
                    ctx._on_beat(beat.alive, beat.cancel_requested)
                if runner_row:
                    self.queue.runner_beat(self.name, current, self.jobs_done)
            except Exception as exc:  # a missed beat is retried next interval; the lease covers several
                self.echo(f"heartbeat failed: {exc}")

    @contextlib.contextmanager
    def _heartbeat(self, *, runner_row: bool) -> Iterator[None]:
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat_loop, args=(stop, runner_row), name="rplat-heartbeat",
                                daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join(timeout=5)

    # --- main loop ---------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        def _stop(signum: int, _frame: object) -> None:
            self.echo(f"received signal {signum}; finishing the current unit of work and releasing the job")
            self.stopping.set()
            self._wake.set()

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
        self.queue.register_runner(self.name, host, os.getpid(), self.options.kinds, self.devices,
                                   self.options.slots, slurm_job_of(os.environ))
        try:
            with self._heartbeat(runner_row=True):
                if self.in_process:
                    self._run_in_process(claimable, host)
                else:
                    self._run_slots(claimable, host)
        finally:
            self.queue.runner_beat(self.name, None, self.jobs_done, stopped=True)
        return self.jobs_done

    def _drained(self, claimable: list[str], host: str, idle_since: float) -> bool:
        """Nothing was claimable (and nothing runs here) since `idle_since`: whether --once, --until-done or
        --max-idle says to stop."""
        if self.options.max_idle is not None and time.monotonic() - idle_since >= self.options.max_idle:
            self.echo(f"nothing to claim for {self.options.max_idle:g} s; leaving")
            return True
        return self.options.once or (
            self.options.until_done and not self.queue.outstanding(claimable, host, len(self.devices)))

    def _idle(self) -> None:
        self._wake.wait(self.options.poll_seconds * random.uniform(0.5, 1.0))

    def _run_in_process(self, claimable: list[str], host: str) -> None:
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            if self.options.max_jobs is not None and self.jobs_done >= self.options.max_jobs:
                break
            job = self.queue.claim(self.name, claimable, self.options.lease_seconds, host)
            if job is None:
                if self._drained(claimable, host, idle_since):
                    break
                self._idle()
                continue
            self.execute(job)
            self.jobs_done += 1
            idle_since = time.monotonic()

    def _run_slots(self, claimable: list[str], host: str) -> None:
        """Claim while a slot is free (with the devices no running job holds), each job in a child process;
        on the way out (stopped, drained, --max-jobs) wait for the children, asking them to stop if stopped."""
        started = 0
        idle_since = time.monotonic()
        try:
            while not self.stopping.is_set():
                self._wake.clear()
                self._settle_ended()
                with self._lock:
                    running = list(self._children.values())
                if running:
                    idle_since = time.monotonic()
                if self.options.max_jobs is not None and started >= self.options.max_jobs:
                    if not running:
                        break
                elif len(running) < self.options.slots:
                    busy = {device for child in running for device in child.job.devices}
                    free = [device for device in self.devices if device not in busy]
                    job = self.queue.claim(self.name, claimable, self.options.lease_seconds, host, free)
                    if job is not None:
                        self._spawn(job)
                        started += 1
                        idle_since = time.monotonic()
                        continue
                    # With a job running, a claim may have failed for want of its devices: wait for it.
                    if not running and self._drained(claimable, host, idle_since):
                        break
                self._idle()
        finally:
            with self._lock:
                running = list(self._children.values())
            for child in running:
                if self.stopping.is_set() and child.proc.poll() is None:
                    child.terminated = True
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.send_signal(signal.SIGTERM)
            for child in running:
                child.proc.wait()
            self._settle_ended()

    def _spawn(self, job: ClaimedJob) -> None:
        """Start `job` in a child process that sees only its devices; its output comes back through `echo`."""
        order = {"url": self.queue.engine.url.render_as_string(hide_password=False), "home": str(self.home),
                 "runner": self.name, "lease_seconds": self.options.lease_seconds, "parent": os.getpid(),
                 "progress": self.options.progress,
                 "job": dataclasses.asdict(job)}
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(job.devices)}
        proc = subprocess.Popen([sys.executable, "-m", "rplat.runners.framework.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        child = _Child(job, proc)
        with self._lock:
            self._children[job.id] = child
        on = f"devices {','.join(job.devices)}" if job.devices else "no device"
        self.echo(f"job {job.id} ({job.kind}): in process {proc.pid} on {on}")
        # The order goes through stdin: the URL may hold a password, which a command line would show to `ps`. A
        # child that died before reading it is settled like any other that ended early.
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(json.dumps(order).encode())
            proc.stdin.close()
        threading.Thread(target=self._watch, args=(proc,), name=f"rplat-job-{job.id}", daemon=True).start()

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.echo(line.decode(errors="replace").rstrip("\n"))
        proc.wait()
        self._wake.set()

    def _settle_ended(self) -> None:
        """Count the children that ended; the job of one that died before recording its end is failed (retried),
        or released if it died of the SIGTERM this runner sent it while stopping."""
        with self._lock:
            ended = [child for child in self._children.values() if child.proc.poll() is not None]
            for child in ended:
                del self._children[child.job.id]
        for child in ended:
            self.jobs_done += 1
            code = child.proc.returncode
            if code == 0:
                continue
            job = child.job
            if child.terminated and code == -signal.SIGTERM:
                try:
                    self.queue.release(job.id, job.lease_token, runner=self.name)
                    self.echo(f"job {job.id} ({job.kind}): released")
                except LeaseLost:  # its end was recorded before the signal came
                    pass
                continue
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            state = self._fail(job, f"the process running job {job.id} {how} before recording how the job ended",
                               retryable=True)
            self.echo(f"job {job.id} ({job.kind}): {state} (its process {how})")

    def run_claimed(self, job: ClaimedJob) -> str:
        """Run a job another process claimed for this runner (see rplat.runners.framework.worker), heartbeating its
        lease from this process; returns its end state."""
        self._install_signals()
        with self._heartbeat(runner_row=False):
            return self.execute(job)

    def execute(self, job: ClaimedJob) -> str:
        """Run one claimed job to an end state; returns that state."""
        silence_libraries()
        self.echo(f"job {job.id} ({job.kind}) attempt {job.attempts}: started")
        started = time.monotonic()
        progress: tuple[int, int | None] | None = None
        try:
            kind = kinds.get(job.kind)
            try:
                params = kind.params.model_validate(job.params)
            except ValidationError as exc:
                raise UserError(f"job {job.id}'s stored params no longer fit kind {job.kind!r}: "
                                f"{exc.errors()[0]['msg']}") from None
            ctx = JobContext(job, self.queue, self.home, self.name, self.stopping)
            with self._lock:
                self._current = ctx
            # Lineage: a model a parent registered is known now, a bundled one once the handler registered it.
            self.queue.resolve_model(job)
            with self._progress_lines(job, ctx):
                result = kind.load_handler()(ctx, params)
            self.queue.resolve_model(job)
            trackers.finish_job(ctx, result)  # a training job that reports to MLflow or W&B: its model, run ended
            self.queue.complete(job.id, job.lease_token, result, ctx.current_progress)
            state = "succeeded"
        except JobCancelled:
            self.queue.finish_cancelled(job.id, job.lease_token, runner=self.name, progress=ctx.current_progress)
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
                if self._current is not None:
                    progress = self._current.current_progress
                self._current = None
        self.echo(f"job {job.id} ({job.kind}): {state}{how_far(progress, time.monotonic() - started)}")
        return state

    @contextlib.contextmanager
    def _progress_lines(self, job: ClaimedJob, ctx: JobContext) -> Iterator[None]:
        """With `progress`, a line of the job's progress (done of total, rate, ETA) every RPLAT_PROGRESS_SECONDS
        through `echo`, from what the handler last reported (`ctx.progress`), while the handler runs."""
        if not self.options.progress:
            yield
            return
        progress = Progress(f"job {job.id} ({job.kind})", unit="items", stream=_EchoLines(self.echo))
        stop = threading.Event()

        def show() -> None:
            while not stop.wait(progress.every):
                done, total = ctx.current_progress
                progress.set_total(total)
                progress.advance(done - progress.done)

        ticker = threading.Thread(target=show, name=f"rplat-progress-{job.id}", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join(timeout=5)

    def _fail(self, job: ClaimedJob, error: str, *, retryable: bool) -> str:
        try:
            return self.queue.fail(job.id, job.lease_token, error, retryable=retryable, runner=self.name)
        except LeaseLost:
            return "lease-lost"

