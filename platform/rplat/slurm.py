"""Slurm as the cluster engine: runners as Slurm job arrays, and the scaler that keeps them matched to the queue.

`rplat slurm submit` writes one batch script for a job array whose every task `exec`s an `rplat runner` on the GPUs
Slurm allocated to it (Slurm sets CUDA_VISIBLE_DEVICES, which the runner gives its jobs); `--signal=B:TERM@GRACE`
has Slurm send that runner SIGTERM GRACE seconds before a time limit, as a preemption or `scancel` does, and the
runner releases its job to be resumed from its checkpoint elsewhere. `rplat slurm scale` compares the ready jobs per
number of GPUs with the arrays it has pending or running and submits or cancels tasks to match, never above a
maximum; runners that find nothing to claim leave by themselves (`rplat runner --max-idle`).

Everything goes through Slurm's own commands (`sbatch`, `squeue`, `scancel`), as a person would type them: no
library sits between rplat and the cluster (docs/slurm.md says why not submitit). The script and the scaling
decision are pure functions (`runner_script`, `plan`), tested without a cluster; `SlurmCommands` runs the commands.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from rplat.errors import UserError
from rplat.paths import under

if TYPE_CHECKING:
    from sqlalchemy import Engine

NAME_PREFIX = "rplat-runner"
DEFAULT_GRACE_SECONDS = 120
DEFAULT_MAX_IDLE_SECONDS = 300.0
# squeue states of a task that will run or runs; others (COMPLETING, CANCELLED, ...) are leaving.
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
RUNNING_STATES = frozenset({"RUNNING", "CONFIGURING", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"})


class Demand(NamedTuple):
    """Jobs needing one number of GPUs: how many are ready to be claimed and how many are running."""

    ready: int
    running: int


def demand_by_gpus(engine: Engine, kinds: Iterable[str] | None = None) -> dict[int, Demand]:
    """Per number of GPUs needed, the jobs (of these kinds) that are ready (queued with every parent succeeded; a
    retry backoff does not hold one back) and those running: what the scaler matches runners to, and what
    `rplat status` shows as ready. (Here, not in rplat.queue, so that `rplat status` loads no job kind.)"""
    from sqlalchemy import and_, func, or_, select
    from sqlalchemy.orm import aliased

    from rplat.models import Job, JobDependency

    parent = aliased(Job)
    blocked = (select(JobDependency.job_id).join(parent, parent.id == JobDependency.depends_on_id)
               .where(JobDependency.job_id == Job.id, parent.status != "succeeded").exists())
    query = (select(Job.gpus, Job.status, func.count())
             .where(or_(Job.status == "running", and_(Job.status == "queued", ~blocked)))
             .group_by(Job.gpus, Job.status))
    if kinds is not None:
        query = query.where(Job.kind.in_(list(kinds)))
    counts: dict[int, dict[str, int]] = {}
    with engine.connect() as conn:
        for gpus, status, n in conn.execute(query):
            counts.setdefault(gpus, {})[status] = n
    return {gpus: Demand(ready=c.get("queued", 0), running=c.get("running", 0)) for gpus, c in sorted(counts.items())}


def slurm_job_of(environ: Mapping[str, str]) -> str | None:
    """The Slurm job a process runs in, as `scontrol show job` and `scancel` take it: ARRAYJOB_TASK for an array
    task, the job id otherwise; None outside Slurm."""
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def store_tag(database_url: str, home: Path) -> str:
    """Eight hex digits naming one store (its URL and RPLAT_HOME): the scaler of one store never touches the
    runner arrays of another, even under the same Slurm user."""
    return hashlib.sha256(f"{database_url}\n{home}".encode()).hexdigest()[:8]


def array_name(tag: str, gpus: int) -> str:
    """The Slurm job name of a store's runner arrays with `gpus` GPUs per runner, e.g. `rplat-runner-1a2b3c4d-g1`."""
    return f"{NAME_PREFIX}-{tag}-g{gpus}"


def gpus_of_name(name: str, tag: str) -> int | None:
    """The GPUs per runner of a job named by `array_name(tag, ...)`, or None for any other job."""
    prefix = f"{NAME_PREFIX}-{tag}-g"
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


@dataclass(frozen=True)
class ArraySpec:
    """What `rplat slurm submit` asks for: `runners` array tasks with `gpus` GPUs each, and how each runner runs."""

    runners: int
    gpus: int
    partition: str | None = None
    time: str | None = None  # Slurm's --time, e.g. 4:00:00
    kinds: tuple[str, ...] | None = None
    max_idle: float | None = DEFAULT_MAX_IDLE_SECONDS  # a runner leaves after this long with nothing to claim
    grace_seconds: int = DEFAULT_GRACE_SECONDS  # SIGTERM this long before the time limit
    sbatch_args: tuple[str, ...] = ()  # extra sbatch options, one per item ("--account=lab", "--qos=high")
    runner_args: tuple[str, ...] = ()  # extra `rplat runner` options ("--lease-seconds", "120")


@dataclass(frozen=True)
class Where:
    """Where the runners find the store and the Python that runs them: the submitter's own."""

    database_url: str
    home: Path
    python: str

    @property
    def tag(self) -> str:
        return store_tag(self.database_url, self.home)

    @property
    def log_dir(self) -> Path:
        return under(self.home, "slurm")


def check_spec(spec: ArraySpec) -> None:
    """One sentence for a spec Slurm would refuse or rplat could not run."""
    if spec.runners < 1:
        raise UserError(f"--runners must be at least 1, not {spec.runners}.")
    if spec.gpus < 0:
        raise UserError(f"--gpus-per-runner must be 0 or more, not {spec.gpus}.")
    if spec.grace_seconds < 1:
        raise UserError(f"--grace must be at least 1 second, not {spec.grace_seconds}.")
    if spec.kinds is not None and not spec.kinds:
        raise UserError("--kinds names no kind; list kinds separated by commas, or leave it out for every kind.")
    for arg in spec.sbatch_args:
        if not arg.startswith("-"):
            raise UserError(f"--sbatch-arg {arg!r} is not an sbatch option; pass one option each, e.g. "
                            "--sbatch-arg=--account=lab.")


def runner_command(spec: ArraySpec, where: Where) -> list[str]:
    """The `rplat runner` command line of every task (its GPUs come from Slurm's CUDA_VISIBLE_DEVICES)."""
    command = [where.python, "-m", "rplat.cli", "runner"]
    if spec.gpus == 0:
        command += ["--gpus", "none"]  # a CPU task on a GPU node must not take the node's GPUs
    if spec.kinds is not None:
        command += ["--kinds", ",".join(spec.kinds)]
    if spec.max_idle is not None:
        command += ["--max-idle", f"{spec.max_idle:g}"]
    return command + list(spec.runner_args)


def runner_script(spec: ArraySpec, where: Where) -> str:
    """The sbatch script of one runner array: each task `exec`s the runner, so the signals Slurm sends the batch
    shell (`--signal=B:TERM@GRACE` before the time limit, SIGTERM on preemption or `scancel`) reach it."""
    check_spec(spec)
    lines = [
        "#!/bin/bash",
        f"# rplat runners for the store at {where.home}: one `rplat runner` per array task, on the GPUs Slurm",
        "# allocated to the task (CUDA_VISIBLE_DEVICES); SIGTERM makes it release its job and exit.",
        f"#SBATCH --job-name={array_name(where.tag, spec.gpus)}",
        f"#SBATCH --array=0-{spec.runners - 1}",
        "#SBATCH --ntasks=1",
    ]
    if spec.gpus:
        lines.append(f"#SBATCH --gres=gpu:{spec.gpus}")
    lines.append(f"#SBATCH --signal=B:TERM@{spec.grace_seconds}")
    lines.append(f"#SBATCH --output={where.log_dir}/%x-%A_%a.out")
    if spec.partition:
        lines.append(f"#SBATCH --partition={spec.partition}")
    if spec.time:
        lines.append(f"#SBATCH --time={spec.time}")
    lines += [f"#SBATCH {arg}" for arg in spec.sbatch_args]
    lines += [
        f"export RPLAT_HOME={shlex.quote(str(where.home))}",
        f"export RPLAT_DATABASE_URL={shlex.quote(where.database_url)}",
    ]
    command = shlex.join(runner_command(spec, where))
    if spec.gpus:
        # Slurm names the allocated GPUs in CUDA_VISIBLE_DEVICES; without it (a cluster whose gres plugin does not
        # set it) the runner would take every GPU of the node, so the task stops with that sentence instead.
        command += ' --gpus "${CUDA_VISIBLE_DEVICES:?Slurm set no CUDA_VISIBLE_DEVICES for this task}"'
    lines.append(f"exec {command}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Task:
    """One task of a runner array as squeue lists it."""

    array: str  # the array's job id
    index: str  # the task's index in the array
    state: str  # squeue's state, e.g. PENDING, RUNNING
    gpus: int  # GPUs per runner of its array

    @property
    def id(self) -> str:
        return f"{self.array}_{self.index}"

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES


@dataclass(frozen=True)
class Plan:
    """What one scaling pass does: runners to submit per GPU count, pending tasks to cancel (by task id)."""

    submit: dict[int, int] = field(default_factory=dict)
    cancel: tuple[str, ...] = ()


def plan(demand: Mapping[int, tuple[int, int]], tasks: Sequence[Task], max_runners: int) -> Plan:
    """Match runners to the queue. `demand` maps a number of GPUs to (ready, running) jobs needing that many;
    `tasks` are this store's runner array tasks now pending or running.

    Each GPU count wants one runner per ready or running job. A count with fewer runners (pending and running) gets
    more, one count at a time in turn so that no count waits on another's backlog, while the total stays within
    `max_runners`. A count with more runners than it wants has its surplus pending tasks cancelled, newest first (a
    running runner leaves by itself once idle: it may be finishing a job), and so have pending tasks beyond
    `max_runners` (the maximum was lowered). With the queue empty, every pending task is cancelled.
    """
    live = [t for t in tasks if t.pending or t.running]
    counts = sorted(set(demand) | {t.gpus for t in live})
    want = {g: sum(demand.get(g, (0, 0))) for g in counts}
    have = {g: sum(t.gpus == g for t in live) for g in counts}
    cancel: list[str] = []
    kept = dict(have)
    for g in counts:
        surplus = have[g] - want[g]
        pending = sorted((t for t in live if t.gpus == g and t.pending), key=_newest_first)
        for task in pending[:max(surplus, 0)]:
            cancel.append(task.id)
            kept[g] -= 1
    over = sum(kept.values()) - max_runners
    if over > 0:
        rest = sorted((t for t in live if t.pending and t.id not in cancel), key=_newest_first)
        for task in rest[:over]:
            cancel.append(task.id)
            kept[task.gpus] -= 1
    allowance = max_runners - sum(kept.values())
    need = {g: max(want[g] - kept[g], 0) for g in counts}
    submit: dict[int, int] = {}
    while allowance > 0 and any(need.values()):
        for g in counts:
            if allowance > 0 and need[g] > 0:
                submit[g] = submit.get(g, 0) + 1
                need[g] -= 1
                allowance -= 1
    return Plan(submit=submit, cancel=tuple(cancel))


def _newest_first(task: Task) -> tuple[int, int]:
    return (-_number(task.array), -_number(task.index))


def _number(text: str) -> int:
    return int(text) if text.isdigit() else 0


def parse_squeue(output: str, tag: str) -> list[Task]:
    """This store's runner tasks from `squeue --array --noheader --format=%F|%K|%T|%j` (other jobs are left out)."""
    tasks = []
    for line in output.splitlines():
        parts = line.strip().split("|", 3)
        if len(parts) != 4:
            continue
        array, index, state, name = parts
        gpus = gpus_of_name(name, tag)
        if gpus is not None:
            tasks.append(Task(array=array, index=index, state=state.split()[0], gpus=gpus))
    return tasks


class SlurmCommands:
    """sbatch, squeue and scancel, run as a person would; a failure is one sentence with Slurm's own message."""

    def __init__(self, where: Where) -> None:
        self.where = where

    @staticmethod
    def _run(args: list[str], stdin: str | None = None) -> str:
        if shutil.which(args[0]) is None:
            raise UserError(f"{args[0]} is not on PATH; run rplat slurm on a machine that submits Slurm jobs (a "
                            "login node), or start the one-node test cluster with `make slurm`.")
        done = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            said = (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}").splitlines()[0]
            raise UserError(f"{args[0]} refused: {said}; check the options and `sinfo`.")
        return done.stdout

    def submit(self, spec: ArraySpec) -> str:
        """Submit the array; returns its job id."""
        script = runner_script(spec, self.where)
        self.where.log_dir.mkdir(parents=True, exist_ok=True)  # Slurm writes the logs there but makes no folder
        out = self._run(["sbatch", "--parsable"], stdin=script)
        return out.strip().split(";")[0]

    def tasks(self) -> list[Task]:
        """This store's runner tasks, pending ones one per task."""
        out = self._run(["squeue", "--array", "--noheader", f"--user={getpass.getuser()}",
                         "--format=%F|%K|%T|%j"])
        return parse_squeue(out, self.where.tag)

    def cancel(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self._run(["scancel", *task_ids])


def where_here(database_url: str, home: Path, python: str | None = None) -> Where:
    """The submitter's store and Python, which every runner it submits uses (a virtual environment's python
    keeps its packages; the path must be the same on the compute nodes)."""
    return Where(database_url=database_url, home=home, python=python or os.path.abspath(sys.executable))


@dataclass(frozen=True)
class Pass:
    """What one scaling pass saw and did."""

    demand: dict[int, tuple[int, int]]
    tasks: list[Task]
    plan: Plan
    submitted: dict[int, str]  # GPUs per runner -> the array submitted for them

    def summary(self) -> str:
        """One line, e.g. `ready 1 GPU: 40, 2 GPUs: 2; runners: 0 pending, 0 running; submitted 3 x 1 GPU (array 12),
        1 x 2 GPUs (array 13); cancelled none`."""
        ready = ", ".join(f"{_gpus(g)}: {r}" for g, (r, _) in self.demand.items() if r) or "none"
        running_jobs = sum(n for _, n in self.demand.values())
        pending = sum(t.pending for t in self.tasks)
        running = sum(t.running for t in self.tasks)
        submitted = ", ".join(f"{n} x {_gpus(g)}" + (f" (array {self.submitted[g]})" if g in self.submitted else "")
                              for g, n in self.plan.submit.items()) or "none"
        cancelled = " ".join(self.plan.cancel) or "none"
        return (f"ready {ready}; running jobs: {running_jobs}; runners: {pending} pending, {running} running; "
                f"submitted {submitted}; cancelled {cancelled}")


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def scale_once(demand: Mapping[int, tuple[int, int]], commands: SlurmCommands, template: ArraySpec,
               max_runners: int, *, dry_run: bool = False) -> Pass:
    """One pass of the scaler: list this store's runner tasks, plan, then cancel and submit (unless `dry_run`);
    every array it submits is `template` with the planned runners and GPUs."""
    tasks = commands.tasks()
    decided = plan(demand, tasks, max_runners)
    submitted: dict[int, str] = {}
    if not dry_run:
        commands.cancel(decided.cancel)
        for gpus, runners in decided.submit.items():
            submitted[gpus] = commands.submit(dataclasses.replace(template, runners=runners, gpus=gpus))
    return Pass(demand=dict(demand), tasks=tasks, plan=decided, submitted=submitted)
