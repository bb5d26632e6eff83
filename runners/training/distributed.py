"""Multi-process training jobs: the handler runs torchrun and watches it; rank 0 writes, fenced.

`launch(ctx, target, nproc)` runs in the runner's process, whose heartbeat thread keeps holding the job's lease.
It starts `python -m rplat.runners.training.distributed agent -- <torchrun arguments>` in a new session: the agent asks
to die with the runner, then is torchrun itself (`torch.distributed.run`), which starts `nproc` workers
(`... worker ...`). The handler waits, calling `ctx.check()` every poll and stopping the whole tree on
cancellation, a lost lease or shutdown. Each worker asks to die with its agent (a runner killed -9 takes its
workers with it), opens the store from RPLAT_DATABASE_URL, and runs `target(ctx, params)` with a
`WorkerContext`: a `JobContext` holding the handler's lease token, so rank 0's writes are fenced exactly like
the handler's. Rank 0's progress, its return value and any rank's error come back through files in the run's
directory (`RPLAT_HOME/runs/job-<id>`, kept when the run fails, with torchrun's log).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rplat import kinds
from rplat.errors import LeaseLost, UserError
from rplat.kinds import Params
from rplat.models import Job
from rplat.paths import under
from rplat.ports import free_port
from rplat.queue import ClaimedJob, Queue
from rplat.runners.framework.context import JobContext
from rplat.store import get_engine, transaction

POLL_SECONDS = 0.2
STOP_GRACE_SECONDS = 10.0  # torchrun's own shutdown of its workers, before the agent is killed
PR_SET_PDEATHSIG = 1
AGENT_PID = "RPLAT_TORCHRUN_AGENT_PID"


class WorkerFailed(Exception):
    """A torchrun worker failed (its error is the message); the job is retried like any failed handler."""


class WorkerContext(JobContext):
    """A torchrun worker's view of its job: the handler's lease token (rank 0's writes are fenced like the
    handler's); progress goes to a file that the handler forwards to the runner's heartbeat."""

    def __init__(self, job: ClaimedJob, queue: Queue, home: Path, runner: str, run_dir: Path) -> None:
        super().__init__(job, queue, home, runner, threading.Event())
        self.run_dir = run_dir

    def progress(self, done: int, total: int | None = None) -> None:
        super().progress(done, total)
        _write_json(self.run_dir / "progress.json", list(self.current_progress))


def is_main_process() -> bool:
    """Rank 0 under torchrun, or the only process: the one that writes rows and artefacts."""
    return int(os.environ.get("RANK", "0")) == 0


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


# --- the handler's side ----------------------------------------------------------------------------------------


def launch(ctx: JobContext, target: str, nproc: int) -> dict[str, Any]:
    """Run `target` ("module:function", called as function(ctx, params)) on `nproc` torchrun workers of this job
    and return rank 0's result; a worker's UserError or lost lease is raised here as such."""
    import torch

    # The runner gives a job its GPUs through CUDA_VISIBLE_DEVICES; one process per GPU.
    if torch.cuda.is_available() and nproc > torch.cuda.device_count():
        raise UserError(f"job {ctx.job_id} asks for nproc={nproc} but sees {torch.cuda.device_count()} GPU(s) "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); lower nproc "
                        "or give the job more GPUs.")
    run_dir = under(ctx.home, "runs", f"job-{ctx.job_id}")
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    torchrun = ["--nnodes", "1", "--nproc-per-node", str(nproc), "--master-addr", "127.0.0.1",
                "--master-port", str(free_port()), "--max-restarts", "0"]
    worker = ["-m", "rplat.runners.training.distributed", "worker", "--target", target, "--job", str(ctx.job_id),
              "--token", str(ctx.job.lease_token), "--runner", ctx.runner, "--run-dir", str(run_dir)]
    env = {**os.environ, "RPLAT_DATABASE_URL": ctx.engine.url.render_as_string(hide_password=False),
           "RPLAT_HOME": str(ctx.home), "OMP_NUM_THREADS": "1"}
    log_path = run_dir / "torchrun.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rplat.runners.training.distributed", "agent", "--parent",
                                 str(os.getpid()), "--", *torchrun, *worker], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while proc.poll() is None:
            _forward_progress(ctx, run_dir)  # before the check: a cancelled job records how far it got
            ctx.check()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=POLL_SECONDS)
    except BaseException:
        _stop(proc)
        raise
    _forward_progress(ctx, run_dir)
    result = _outcome(run_dir, proc.returncode, log_path)
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _forward_progress(ctx: JobContext, run_dir: Path) -> None:
    path = run_dir / "progress.json"
    if path.exists():
        done, total = json.loads(path.read_text())
        ctx.progress(done, total)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM lets torchrun stop its workers (each in a session of its own); SIGKILL after the grace period
    still takes them, since each dies with the agent."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _outcome(run_dir: Path, code: int, log_path: Path) -> dict[str, Any]:
    result = run_dir / "result.json"
    if code == 0 and result.exists():
        return dict(json.loads(result.read_text()))
    # The first rank to fail names the cause; the others then fail on the broken process group.
    errors = sorted(run_dir.glob("error-*.json"), key=lambda p: p.stat().st_mtime_ns)
    if errors:
        error = json.loads(errors[0].read_text())
        exc: type[Exception] = UserError if error["user_error"] else LeaseLost if error["lease_lost"] else WorkerFailed
        raise exc(error["message"] if exc is not WorkerFailed else f"{error['type']}: {error['message']}")
    tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
    raise WorkerFailed(f"torchrun exited with code {code} and no worker said why; see {log_path}: {tail}")


# --- the processes' side ----------------------------------------------------------------------------------------


def die_with_parent(parent: int) -> None:
    """Be killed when `parent` dies: Linux's PR_SET_PDEATHSIG, elsewhere a watchdog thread; exit at once if the
    parent is already gone (it may have died before the request was made)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(POLL_SECONDS)
            os._exit(1)

        threading.Thread(target=watch, name="rplat-parent-watchdog", daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def _agent(parent: int, torchrun_args: list[str]) -> None:
    from torch.distributed.run import main as torchrun

    die_with_parent(parent)
    os.environ[AGENT_PID] = str(os.getpid())
    torchrun(torchrun_args)


def _target(name: str) -> Callable[[JobContext, Params], dict[str, Any]]:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


def _worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    die_with_parent(int(os.environ[AGENT_PID]))
    rank = int(os.environ["RANK"])
    run_dir = Path(args.run_dir)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        engine = get_engine()
        with transaction(engine.execution_options(rplat_readonly=True)) as s:
            row = s.get(Job, args.job)
            if row is None:
                raise UserError(f"job {args.job} does not exist.")
            job = ClaimedJob(row.id, row.kind, row.params, args.token, row.attempts, row.max_attempts,
                             row.experiment_id)
        params = kinds.get(job.kind).params.model_validate(job.params)
        from rplat.config import get_settings

        ctx = WorkerContext(job, Queue(engine), get_settings().home, f"{args.runner}/rank{rank}", run_dir)
        result = _target(args.target)(ctx, params)
        if rank == 0:
            _write_json(run_dir / "result.json", result)
    except BaseException as exc:
        _write_json(run_dir / f"error-{rank}.json", {"type": type(exc).__name__, "message": str(exc),
                                                     "user_error": isinstance(exc, UserError),
                                                     "lease_lost": isinstance(exc, LeaseLost)})
        raise
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rplat.runners.training.distributed")
    sub = parser.add_subparsers(dest="role", required=True)
    agent = sub.add_parser("agent", help="torchrun, dying with the runner process --parent")
    agent.add_argument("--parent", type=int, required=True)
    agent.add_argument("torchrun_args", nargs=argparse.REMAINDER)
    worker = sub.add_parser("worker", help="one rank of a job's training")
    worker.add_argument("--target", required=True)
    worker.add_argument("--job", type=int, required=True)
    worker.add_argument("--token", type=int, required=True)
    worker.add_argument("--runner", required=True)
    worker.add_argument("--run-dir", required=True)
    args = parser.parse_args(argv)
    if args.role == "agent":
        rest = args.torchrun_args
        _agent(args.parent, rest[1:] if rest[:1] == ["--"] else rest)
    else:
        _worker(args)


if __name__ == "__main__":
    main()
