"""What every command group shares: the store, the queue, params from the command line, output as tables or JSON.

Imported by every command, so it imports only click and the standard library at the top: the store's libraries
load inside the functions that open it, when a command does.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from rplat import boundary
from rplat.config import get_settings
from rplat.errors import UserError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from rplat.models import Job
    from rplat.queue import Queue


# --- the parameter types of the input boundary (`rplat.boundary` holds the bounds) ------------------------------
# Every command checks its arguments and options with these before it opens the store: a failure is one sentence,
# exit 2, and nothing is read or written.


def _what(param: click.Parameter | None) -> str:
    """How a sentence names the parameter: `--dataset` for an option, its metavar (`NAME`) for an argument."""
    if isinstance(param, click.Option):
        return param.opts[0]
    return param.human_readable_name if param is not None else "the value"


class _Id(click.ParamType):
    """A row id (a job, a table's row): a whole number from 1 to 2^31-1, what both databases hold."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip(), 10)
            except ValueError:
                self.fail(f"{value!r} is not a valid integer", param, ctx)
        problem = boundary.id_problem(number)
        if problem is not None:
            self.fail(problem, param, ctx)
        return number


class _Name(click.ParamType):
    """A name (model, experiment, dataset, teacher, adapter): `rplat.boundary.NAME_RULE`, never a path."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return boundary.check_name(str(value), _what(param))


class _Host(click.ParamType):
    """A machine (or runner) name: not empty, no whitespace, at most 200 characters."""

    name = "host"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return boundary.check_host(str(value), _what(param))


class _Run(click.ParamType):
    """`rplat report compare`'s RUN: JOB or JOB:METHOD, the job an id (checked as `ID` is)."""

    name = "run"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        boundary.parse_run(str(value))  # one sentence for a bad spec or an id out of range
        return str(value).strip()


class Text(click.ParamType):
    """Free text for a column of `limit` characters: not empty, not longer than the column."""

    name = "text"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if not text.strip():
            raise UserError(f"{_what(param)} is empty; give a value or leave the option out.")
        if len(text) > self.limit:
            raise UserError(f"{_what(param)} is {len(text)} characters long, at most {self.limit}; give a shorter "
                            "one.")
        return text


class Finite(click.FloatRange):
    """A float in [min, max] that is a number: click's FloatRange lets `nan` and `inf` through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number: float = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        checked: float = super().convert(number, param, ctx)
        return checked


ID = _Id()
NAME = _Name()
HOST = _Host()
RUN = _Run()
PRIORITY = click.IntRange(boundary.INT32_MIN, boundary.INT32_MAX)
MAX_ATTEMPTS = click.IntRange(1, boundary.MAX_ATTEMPTS)
GPUS = click.IntRange(0, boundary.MAX_GPUS)
SEED = click.IntRange(0, boundary.SEED_MAX)
COUNT = click.IntRange(1, boundary.INT32_MAX)  # a cap stored in a job's params (--limit, --train-steps)


def open_store(*, at_head: bool = True, create: bool = False) -> Engine:
    """The store's engine, reachable (and at head unless `at_head` is false); a SQLite store that does not exist
    is created only with `create` (`rplat init`), else refused with what to run."""
    from rplat.store import check_reachable, get_engine

    engine = get_engine()
    check_reachable(engine, create=create)
    if at_head:
        from rplat.migrate import ensure_at_head

        ensure_at_head(engine)
    return engine


def queue_of(engine: Engine) -> Queue:
    from rplat.queue import Queue

    return Queue(engine, retry_base_seconds=get_settings().retry_base_seconds)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def listing(f: Any) -> Any:
    """`--json` and `--csv` for a command that lists rows (it takes `as_json` and `as_csv`)."""
    f = click.option("--csv", "as_csv", is_flag=True, help="print CSV for scripts")(f)
    return click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(f)


def emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool, as_csv: bool = False) -> None:
    """Rows as a table for people, or as JSON (a list of objects) or CSV (a header, then `columns`) for scripts."""
    if as_json and as_csv:
        raise UserError("choose one of --json and --csv, not both.")
    if as_json:
        click.echo(json.dumps(list(rows), default=str, indent=None))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if r.get(c) is None else r.get(c) for c in columns] for r in rows])
    else:
        click.echo(table(rows, columns))


_OLD_OPTIONS = "rplat.old_options"  # ctx.meta key: {new option's name: the value given under its old name}


def deprecated(old: str, new: str) -> None:
    """The one line on stderr that says a name is deprecated (the command goes on with the new name)."""
    click.echo(f"rplat: {old} is deprecated; use {new}", err=True)


def _both(old: str, new: str) -> click.UsageError:
    return click.UsageError(f"{new} and its old name {old} are both given; give {new} only")


class _Renamed(click.Option):
    """An option that was renamed: given under its old name (a hidden option of its own), the value arrives here as
    if given under the new name, so `required`, the type and the help are the new option's alone."""

    def __init__(self, *args: Any, old: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old = old

    def consume_value(self, ctx: click.Context, opts: Mapping[str, Any]) -> tuple[Any, ParameterSource]:
        value, source = super().consume_value(ctx, opts)
        given = ctx.meta.get(_OLD_OPTIONS, {})
        if self.name not in given:
            return value, source
        if source is ParameterSource.COMMANDLINE:
            raise _both(self.old, self.opts[0])
        return given[self.name], ParameterSource.COMMANDLINE


def option(*decls: str, old: str, **attrs: Any) -> Callable[[Any], Any]:
    """`click.option(*decls, **attrs)` that also takes its value under the deprecated name `old`: a hidden option
    that says on stderr that it is deprecated and hands its value to the new one (both given: a usage error)."""
    def decorate(f: Any) -> Any:
        f = click.option(*decls, cls=_Renamed, old=old, **attrs)(f)
        new: _Renamed = f.__click_params__[-1]

        def hand_over(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
            # The old name is processed before the new one unless the new one was given first (click processes
            # the options given in the order given): then the new one's source says so.
            if value is None:
                return
            deprecated(old, new.opts[0])
            if ctx.get_parameter_source(new.name or "") is ParameterSource.COMMANDLINE:
                raise _both(old, new.opts[0])
            ctx.meta.setdefault(_OLD_OPTIONS, {})[new.name] = value

        return click.option(old, f"old_{new.name}", hidden=True, expose_value=False, type=attrs.get("type"),
                            callback=hand_over)(f)

    return decorate


def warn_old_params(kind: str, raws: Iterable[Mapping[str, Any]]) -> None:
    """One deprecation line per old name of a renamed parameter of `kind` that any of `raws` uses (the job stores
    the new name); a kind that does not exist is left to the validation that words it."""
    from rplat import kinds

    known = kinds.all_kinds().get(kind)
    if known is None:
        return
    used = set().union(*(raw.keys() for raw in raws))
    for old, new in kinds.old_names(known.params).items():
        if old in used:
            deprecated(f"parameter {old} of {kind}", new)


def parse_param(raw: str) -> tuple[str, Any]:
    key, sep, value = raw.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--param {raw!r} is not of the form key=value; write e.g. --param threshold=0.3.")
    value = value.strip()
    if value[:1] in "[{":
        try:
            return key.strip(), json.loads(value)
        except json.JSONDecodeError as exc:
            raise UserError(f"--param {key.strip()} looks like JSON but is not valid ({exc.msg} at column "
                            f"{exc.colno}); write valid JSON in shell quotes, "
                            "e.g. --param 'reference=[\"gsm8k\"]'.") from None
    return key.strip(), value


def load_params_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--params-file {path} does not exist or is not a file.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"--params-file {path} is not UTF-8 text; save it as UTF-8 JSON.") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--params-file {path} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}); fix the file.") from None
    if not isinstance(data, dict):
        raise UserError(f"--params-file {path} must hold one JSON object of parameters.")
    return data


def job_row(job: Job) -> dict[str, Any]:
    total = job.progress_total
    progress = f"{job.progress_done}/{total}" if total else (str(job.progress_done) if job.progress_done else "")
    return {"id": job.id, "kind": job.kind, "status": job.status, "attempts": f"{job.attempts}/{job.max_attempts}",
            "priority": job.priority, "progress": progress, "owner": job.lease_owner,
            "created": job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else None,
            "error": (job.error or "").splitlines()[0][:80] if job.error else None}
