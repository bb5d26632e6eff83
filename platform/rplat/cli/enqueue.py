"""`rplat enqueue`: queue one job of a kind, or one per line of a JSONL file of params, all or none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rplat.cli._common import (
    GPUS,
    HOST,
    ID,
    MAX_ATTEMPTS,
    NAME,
    PRIORITY,
    Text,
    load_params_file,
    open_store,
    parse_param,
    queue_of,
    warn_old_params,
)
from rplat.errors import UserError

if TYPE_CHECKING:
    from rplat.queue import JobOptions


def _jsonl_params(source: str, shared: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each line's params over the shared ones, named by file and line for the queue's errors (`-`: stdin)."""
    from rplat.imports.datasets import jsonl_records

    if source != "-" and not Path(source).is_file():
        raise UserError(f"--params-jsonl {source} does not exist or is not a file.")
    name = "stdin" if source == "-" else source
    with click.open_file(source, "rb") as lines:
        jobs = [(f"{name} line {number}", {**shared, **params}) for number, params in jsonl_records(lines, name)]
    if not jobs:
        raise UserError(f"--params-jsonl {name} holds no lines of params; write one JSON object per job.")
    return jobs


def _check_made_names(kind: str, jobs: list[tuple[str, dict[str, Any]]]) -> None:
    """The name each job would register its model under (an `adapter_name`) is a name (`rplat.boundary`): it
    becomes a directory under RPLAT_HOME, so it is checked here, before anything is queued."""
    from rplat import kinds
    from rplat.boundary import check_name
    from rplat.references import Makes

    known = kinds.all_kinds().get(kind)
    if known is None:
        return  # an unknown kind is worded where the params are validated
    fields = [name for name, field in known.params.model_fields.items()
              if any(isinstance(meta, Makes) for meta in field.metadata)]
    for where, params in jobs:
        for name in fields:
            if isinstance(params.get(name), str):
                check_name(params[name], f"parameter {name!r} of {kind}{where}:")


def _created(created: bool) -> str:
    return "queued" if created else "already exists (identical job)"


@click.command()
@click.argument("kind")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="a job parameter (repeatable; with --params-jsonl, one every line shares)")
@click.option("--params-file", default=None, help="JSON object of parameters (--param overrides it)")
@click.option("--params-jsonl", default=None, metavar="FILE",
              help="one job per line, each line a JSON object of its parameters over --param and --params-file "
                   "(`-`: stdin); the options below apply to every job")
@click.option("--experiment", default=None, type=NAME, help="experiment the job belongs to")
@click.option("--after", multiple=True, type=ID, metavar="JOB", help="run only after this job succeeded")
@click.option("--priority", default=0, show_default=True, type=PRIORITY, help="higher runs first")
@click.option("--max-attempts", default=3, show_default=True, type=MAX_ATTEMPTS)
@click.option("--dedupe-key", default=None, type=Text(128),
              help="jobs with the same key are one job (default: kind+params)")
@click.option("--no-dedupe", is_flag=True, help="always create a new job, even if an identical one exists")
@click.option("--host", default=None, type=HOST,
              help="only a runner on this machine (host name, or runner --host) takes it")
@click.option("--gpus", default=None, type=GPUS, metavar="N",
              help="GPUs the job needs: only a runner with N free devices takes it (default: the kind's, often 0)")
@click.option("--json", "as_json", is_flag=True,
              help="print JSON for scripts: {id, created}; with --params-jsonl a list of them, one per line")
def enqueue(kind: str, params: tuple[str, ...], params_file: str | None, params_jsonl: str | None,
            experiment: str | None, after: tuple[int, ...], priority: int, max_attempts: int, dedupe_key: str | None,
            no_dedupe: bool, host: str | None, gpus: int | None, as_json: bool) -> None:
    """Queue a job of KIND, or one per line of a JSONL file.

    KIND is one of `rplat kinds`. With --params-jsonl FILE every line is checked before anything is written and
    all jobs are queued in one transaction: a bad line queues none. Each is de-duplicated as a single job would be.

    \b
    rplat enqueue probe --param tag=first
    rplat enqueue probe --param devices=false --params-jsonl tags.jsonl --experiment smoke
    """
    raw: dict[str, Any] = load_params_file(params_file) if params_file else {}
    raw.update(dict(parse_param(p) for p in params))
    options: JobOptions = {"experiment": experiment, "priority": priority, "max_attempts": max_attempts,
                           "after": after, "dedupe_key": dedupe_key, "dedupe": not no_dedupe, "host": host,
                           "gpus": gpus}
    if params_jsonl is None:
        from rplat import kinds

        warn_old_params(kind, [raw])
        kinds.validate_params(kind, raw)  # before the store is opened: a typo needs no database
        _check_made_names(kind, [("", raw)])
        job_id, created = queue_of(open_store()).enqueue(kind, raw, **options)
        click.echo(json.dumps({"id": job_id, "created": created}) if as_json else f"job {job_id} {_created(created)}")
        return
    if dedupe_key is not None:
        raise UserError("--dedupe-key makes every line one job; leave it out to de-duplicate each line by its params, "
                        "or add --no-dedupe.")
    jobs = _jsonl_params(params_jsonl, raw)
    warn_old_params(kind, [params for _, params in jobs])
    _check_made_names(kind, [(f" ({where})", params) for where, params in jobs])
    results = queue_of(open_store()).enqueue_many(kind, jobs, **options)
    if as_json:
        click.echo(json.dumps([{"id": job_id, "created": created} for job_id, created in results]))
        return
    for job_id, created in results:
        click.echo(f"job {job_id} {_created(created)}")
    new = sum(created for _, created in results)
    click.echo(f"{len(results)} jobs of kind {kind}: {new} queued, {len(results) - new} already existed")
