"""`rplat experiments`, `kinds`, `jobs`, `runner` and `status`: the queue and who works on it."""

from __future__ import annotations

import json
from typing import Any

import click
from sqlalchemy import func, select

from rplat.boundary import MAX_GPUS, MAX_LISTED, MAX_SLOTS
from rplat.cli._common import HOST, ID, NAME, Finite, emit, job_row, listing, open_store, queue_of, table
from rplat.config import get_settings
from rplat.errors import UserError
from rplat.models import JOB_STATUSES, Experiment, Job, JobEvent, Runner, utcnow
from rplat.store import transaction

# --- experiments ----------------------------------------------------------------------------------


@click.group()
def experiments() -> None:
    """Named experiments that group jobs."""


@experiments.command("add")
@click.argument("name", type=NAME)
@click.option("--description", default=None)
def experiments_add(name: str, description: str | None) -> None:
    """Create the experiment NAME."""
    engine = open_store()
    with transaction(engine) as session:
        if session.scalar(select(Experiment.id).where(Experiment.name == name)) is not None:
            raise UserError(f"experiment {name!r} already exists; see `rplat experiments ls`.")
        session.add(Experiment(name=name, description=description))
    click.echo(f"experiment {name} created")


@experiments.command("ls")
@listing
def experiments_ls(as_json: bool, as_csv: bool) -> None:
    """List experiments and how many jobs each has."""
    engine = open_store()
    with transaction(engine) as session:
        counts = dict(session.execute(select(Job.experiment_id, func.count()).group_by(Job.experiment_id)).all())
        rows = [{"name": e.name, "jobs": counts.get(e.id, 0), "description": e.description,
                 "created": e.created_at.strftime("%Y-%m-%d %H:%M:%S")}
                for e in session.scalars(select(Experiment).order_by(Experiment.id))]
    emit(rows, ["name", "jobs", "description", "created"], as_json, as_csv)



# --- kinds and jobs -------------------------------------------------------------------------------


@click.command("kinds")
@listing
def kinds_cmd(as_json: bool, as_csv: bool) -> None:
    """List job kinds and their parameters."""
    from rplat import kinds as kinds_registry

    rows = []
    for kind in kinds_registry.all_kinds().values():
        params = ", ".join(
            n if f.is_required() else f"{n}={json.dumps(f.get_default(call_default_factory=True), default=str)}"
            for n, f in kind.params.model_fields.items()
        )
        rows.append({"kind": kind.name, "description": kind.description, "params": params})
    if as_json or as_csv:
        emit(rows, ["kind", "description", "params"], as_json, as_csv)
        return
    for r in rows:
        click.echo(f"{r['kind']}: {r['description']}\n    params: {r['params']}")


@click.group()
def jobs() -> None:
    """List, inspect, cancel and retry jobs."""


def _get_job(session: Any, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise UserError(f"job {job_id} does not exist; see `rplat jobs ls`.")
    return job


@jobs.command("ls")
@click.option("--status", type=click.Choice(JOB_STATUSES), default=None)
@click.option("--kind", default=None)
@click.option("--experiment", default=None, type=NAME)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, MAX_LISTED))
@listing
def jobs_ls(status: str | None, kind: str | None, experiment: str | None, limit: int, as_json: bool,
            as_csv: bool) -> None:
    """List jobs, newest first."""
    engine = open_store()
    with transaction(engine) as session:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status)
        if kind:
            q = q.where(Job.kind == kind)
        if experiment:
            from rplat.lookup import experiment_id

            q = q.where(Job.experiment_id == experiment_id(session, experiment))
        rows = [job_row(j) for j in session.scalars(q)]
    emit(rows, ["id", "kind", "status", "attempts", "priority", "progress", "owner", "created", "error"],
         as_json, as_csv)


@jobs.command("show")
@click.argument("job_id", type=ID)
@click.option("--json", "as_json", is_flag=True)
def jobs_show(job_id: int, as_json: bool) -> None:
    from rplat.models import JobDependency

    engine = open_store()
    with transaction(engine) as session:
        job = _get_job(session, job_id)
        parents = session.scalars(select(JobDependency.depends_on_id).where(JobDependency.job_id == job_id)).all()
        experiment = session.get(Experiment, job.experiment_id).name if job.experiment_id else None
        info = {c.name: getattr(job, c.name) for c in Job.__table__.columns}
        info.update(after=list(parents), experiment=experiment)
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    for key, value in info.items():
        if value is None or value == []:
            continue
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        click.echo(f"{key:>17}: {value}")


@jobs.command("logs")
@click.argument("job_id", type=ID)
@listing
def jobs_logs(job_id: int, as_json: bool, as_csv: bool) -> None:
    """A job's events: enqueued, claims, retries, logs, how it ended."""
    engine = open_store()
    with transaction(engine) as session:
        _get_job(session, job_id)
        rows = [{"at": e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], "event": e.event, "attempt": e.attempt,
                 "runner": e.runner, "message": e.message}
                for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]
    emit(rows, ["at", "event", "attempt", "runner", "message"], as_json, as_csv)


@jobs.command("cancel")
@click.argument("job_id", type=ID)
def jobs_cancel(job_id: int) -> None:
    """Cancel a queued job, or ask a running one to stop at its next check."""
    outcome = queue_of(open_store()).cancel(job_id)
    click.echo(f"job {job_id}: {outcome}")


@jobs.command("retry")
@click.argument("job_id", type=ID)
def jobs_retry(job_id: int) -> None:
    """Queue a failed or cancelled job again (with the descendants its end cancelled)."""
    ids = queue_of(open_store()).retry(job_id)
    click.echo(f"queued again: {', '.join(map(str, ids))}")



# --- runner and status ----------------------------------------------------------------------------


@click.command()
@click.option("--kinds", default=None, help="comma-separated job kinds to take (default: all)")
@click.option("--once", is_flag=True, help="exit as soon as no job is claimable (drain the queue)")
@click.option("--until-done", is_flag=True,
              help="exit when no job it could run is left: waits out retry backoffs and jobs running elsewhere")
@click.option("--max-jobs", default=None, type=click.IntRange(1), help="exit after this many jobs")
@click.option("--lease-seconds", default=60.0, show_default=True, type=Finite(0.2, 86_400))
@click.option("--poll-seconds", default=1.0, show_default=True, type=Finite(0.01, 3_600))
@click.option("--name", default=None, type=HOST, help="runner name (default host:pid:random)")
@click.option("--host", default=None, type=HOST,
              help="machine name for jobs enqueued with --host (default: the host name)")
@click.option("--gpus", default=None, metavar="IDS",
              help="comma-separated device ids to give jobs, or `none` (default: the visible CUDA devices)")
@click.option("--slots", default=1, show_default=True, type=click.IntRange(1, MAX_SLOTS),
              help="jobs run at once, each in its own process with its own devices")
@click.option("--max-idle", default=None, type=Finite(0, 30 * 86_400), metavar="S",
              help="exit after S seconds with nothing claimable and no job running (a Slurm runner's way out)")
@click.option("--quiet", is_flag=True, help="print nothing per job (no progress lines either)")
def runner(kinds: str | None, once: bool, until_done: bool, max_jobs: int | None, lease_seconds: float,
           poll_seconds: float, name: str | None, host: str | None, gpus: str | None, slots: int,
           max_idle: float | None, quiet: bool) -> None:
    """Claim and run jobs until stopped (SIGTERM releases the running jobs for other runners)."""
    from rplat.runners.framework.runner import Runner, RunnerOptions, parse_devices

    settings = get_settings()
    devices = parse_devices(gpus, "--gpus") if gpus is not None else None
    if devices is not None and len(devices) > MAX_GPUS:
        raise UserError(f"--gpus lists {len(devices)} devices, at most {MAX_GPUS}; list the devices this runner "
                        "gives jobs, e.g. --gpus 0,1.")
    engine = open_store()
    kind_list = [k.strip() for k in kinds.split(",") if k.strip()] if kinds else None
    options = RunnerOptions(kinds=kind_list, once=once, until_done=until_done, max_jobs=max_jobs,
                            lease_seconds=lease_seconds, poll_seconds=poll_seconds, name=name, host=host,
                            gpus=devices, slots=slots, max_idle=max_idle, progress=not quiet)
    echo = (lambda _m: None) if quiet else (lambda m: click.echo(f"[runner] {m}", err=True))
    done = Runner(queue_of(engine), settings.home, options, echo=echo).run()
    echo(f"stopped after {done} job(s)")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Queue depth per kind and status, live runners with their devices and the jobs on them, running jobs."""
    engine = open_store()
    now = utcnow()
    with transaction(engine) as session:
        depth = [{"kind": k, "status": s, "jobs": n} for k, s, n in session.execute(
            select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status).order_by(Job.kind, Job.status))]
        running_jobs = list(session.scalars(select(Job).where(Job.status == "running").order_by(Job.id)))
        owners = {j.lease_owner for j in running_jobs}
        slurm_of = dict(session.execute(select(Runner.name, Runner.slurm_job).where(Runner.name.in_(owners))).all())
        running = [{**job_row(j), "devices": j.devices or [], "slurm_job": slurm_of.get(j.lease_owner)}
                   for j in running_jobs]
        on: dict[str | None, list[dict[str, Any]]] = {}
        for j in running_jobs:
            on.setdefault(j.lease_owner, []).append({"id": j.id, "kind": j.kind, "devices": j.devices or []})
        runners = [{"runner": r.name, "host": r.host, "pid": r.pid, "gpus": r.gpus or [], "slots": r.slots,
                    "slurm_job": r.slurm_job, "jobs": on.get(r.name, []), "done": r.jobs_done,
                    "seen_s_ago": round((now - r.heartbeat_at).total_seconds(), 1)}
                   for r in session.scalars(select(Runner).where(Runner.stopped_at.is_(None))
                                            .order_by(Runner.heartbeat_at.desc()).limit(50))
                   if (now - r.heartbeat_at).total_seconds() < 300]
    from rplat.slurm import demand_by_gpus

    ready = [{"gpus": g, "jobs": d.ready} for g, d in demand_by_gpus(engine).items() if d.ready]
    if as_json:
        click.echo(json.dumps({"queue": depth, "ready": ready, "runners": runners, "running": running}, default=str))
        return
    click.echo("queue:")
    click.echo(table(depth, ["kind", "status", "jobs"]))
    click.echo("\nready jobs (every parent succeeded) by GPUs needed:")
    click.echo(table(ready, ["gpus", "jobs"]))
    slurm = any(r["slurm_job"] for r in runners)  # the column only where some runner runs under Slurm
    click.echo("\nrunners (heartbeat in the last 5 minutes):")
    click.echo(table([{**r, "gpus": ",".join(r["gpus"]) or "-",
                       "jobs": " ".join(f"{j['id']}[{','.join(j['devices'])}]" if j["devices"] else str(j["id"])
                                        for j in r["jobs"])} for r in runners],
                     ["runner", "host", "pid", "gpus", "slots", *(["slurm_job"] if slurm else []), "jobs", "done",
                      "seen_s_ago"]))
    click.echo("\nrunning jobs:")
    click.echo(table([{**r, "devices": ",".join(r["devices"])} for r in running],
                     ["id", "kind", "attempts", "progress", "devices", "owner",
                      *(["slurm_job"] if any(r["slurm_job"] for r in running) else [])]))
