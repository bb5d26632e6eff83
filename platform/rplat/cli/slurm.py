"""`rplat slurm submit` and `rplat slurm scale`: runners as Slurm job arrays, by hand or matched to the queue."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import click

from rplat.boundary import MAX_SLURM_RUNNERS
from rplat.cli._common import GPUS, Finite, open_store
from rplat.config import get_settings
from rplat.slurm import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_MAX_IDLE_SECONDS,
    ArraySpec,
    SlurmCommands,
    demand_by_gpus,
    runner_script,
    scale_once,
    where_here,
)


@click.group()
def slurm() -> None:
    """Runners as Slurm job arrays: submit them (`submit`), or keep them matched to the queue (`scale`)."""


def _array_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options every submitted array takes: where it runs and how its runners run."""
    for decorate in reversed([
        click.option("--partition", default=None, help="Slurm partition (default: the cluster's default)"),
        click.option("--time", "time_limit", default=None, metavar="T",
                     help="Slurm time limit per runner, e.g. 4:00:00 (default: the partition's)"),
        click.option("--kinds", default=None, help="comma-separated job kinds the runners take (default: all)"),
        click.option("--max-idle", default=DEFAULT_MAX_IDLE_SECONDS, show_default=True, type=Finite(0, 30 * 86_400),
                     help="a runner leaves after this many seconds with nothing to claim"),
        click.option("--grace", default=DEFAULT_GRACE_SECONDS, show_default=True, type=click.IntRange(1, 86_400),
                     help="seconds before the time limit that Slurm sends the runner SIGTERM (it releases its job)"),
        click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="OPTION",
                     help="an extra sbatch option, e.g. --sbatch-arg=--account=lab (repeatable)"),
        click.option("--runner-arg", "runner_args", multiple=True, metavar="ARG",
                     help="an extra `rplat runner` argument, e.g. --runner-arg=--lease-seconds=120 (repeatable)"),
    ]):
        f = decorate(f)
    return f


def _kinds(kinds: str | None) -> tuple[str, ...] | None:
    if kinds is None:
        return None
    names = tuple(k.strip() for k in kinds.split(",") if k.strip())
    from rplat import kinds as registry

    for name in names:
        registry.get(name)  # an unknown kind is one sentence now, not a failed runner in every task
    return names


def _template(runners: int, gpus: int, partition: str | None, time_limit: str | None, kinds: str | None,
              max_idle: float, grace: int, sbatch_args: tuple[str, ...], runner_args: tuple[str, ...]) -> ArraySpec:
    return ArraySpec(runners=runners, gpus=gpus, partition=partition, time=time_limit, kinds=_kinds(kinds),
                     max_idle=max_idle, grace_seconds=grace, sbatch_args=sbatch_args, runner_args=runner_args)


@slurm.command("submit")
@click.option("--runners", required=True, type=click.IntRange(1, MAX_SLURM_RUNNERS),
              help="array tasks, one runner each")
@click.option("--gpus-per-runner", default=1, show_default=True, type=GPUS,
              help="GPUs Slurm allocates to each runner (--gres=gpu:G); 0: CPU runners")
@_array_options
@click.option("--dry-run", is_flag=True, help="print the batch script instead of submitting it")
def submit(runners: int, gpus_per_runner: int, partition: str | None, time_limit: str | None, kinds: str | None,
           max_idle: float, grace: int, sbatch_args: tuple[str, ...], runner_args: tuple[str, ...],
           dry_run: bool) -> None:
    """Submit one Slurm job array of `rplat runner` tasks, each on the GPUs Slurm allocates to it."""
    settings = get_settings()
    where = where_here(settings.database_url, settings.home)
    spec = _template(runners, gpus_per_runner, partition, time_limit, kinds, max_idle, grace, sbatch_args,
                     runner_args)
    if dry_run:
        click.echo(runner_script(spec, where), nl=False)
        return
    open_store()  # runners would fail on a store that is unreachable or not at head: say so here, once
    array = SlurmCommands(where).submit(spec)
    each = f"{gpus_per_runner} GPU{'s' if gpus_per_runner != 1 else ''} each" if gpus_per_runner else "no GPU"
    click.echo(f"submitted runner array {array}: {runners} runner(s), {each}; logs in {where.log_dir}")


@slurm.command("scale")
@click.option("--max-runners", default=8, show_default=True, type=click.IntRange(1, MAX_SLURM_RUNNERS),
              help="never more runner tasks than this, pending and running together")
@click.option("--once", is_flag=True, help="one pass, then exit")
@click.option("--every", default=30.0, show_default=True, type=Finite(0.1, 86_400), metavar="S",
              help="seconds between passes (until SIGTERM or Ctrl-C)")
@_array_options
@click.option("--dry-run", is_flag=True, help="print what a pass would submit and cancel, and do neither")
def scale(max_runners: int, once: bool, every: float, partition: str | None, time_limit: str | None,
          kinds: str | None, max_idle: float, grace: int, sbatch_args: tuple[str, ...], runner_args: tuple[str, ...],
          dry_run: bool) -> None:
    """Keep runner arrays matched to the ready jobs per GPU count: submit or cancel, never above --max-runners."""
    settings = get_settings()
    where = where_here(settings.database_url, settings.home)
    template = _template(1, 0, partition, time_limit, kinds, max_idle, grace, sbatch_args, runner_args)
    commands = SlurmCommands(where)
    engine = open_store()
    stop = threading.Event()
    if not once and threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _s, _f: stop.set())
    while True:
        demand = {g: (d.ready, d.running) for g, d in demand_by_gpus(engine, template.kinds).items()}
        outcome = scale_once(demand, commands, template, max_runners, dry_run=dry_run)
        click.echo(("would: " if dry_run else "") + outcome.summary())
        if once or stop.wait(every):
            return
