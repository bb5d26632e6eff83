"""Named slices: a filter over the predictions view saved under a name with its metric, listed, and measured on
any run (`rplat slice`, the dashboard's Slices page)."""

from __future__ import annotations

import getpass
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rplat import analytics, boundary
from rplat.errors import UserError
from rplat.export import export_query
from rplat.models import SLICE_METRICS, Slice
from rplat.stats import wilson
from rplat.store import transaction

VIEW = "predictions"
# A prediction's credit as every page counts it: a tie's share, else whether it was right.
CREDIT = "coalesce(credit, CAST(correct AS DOUBLE), 0.0)"
COLUMNS = ["slice_id", "name", "metric", "predicate", "description", "created_by", "created_at"]
RESULT_COLUMNS = ["run", "job_id", "n", "credit", "value", "ci_low", "ci_high"]
SHOW_TIMEOUT = 60.0
"""Seconds a slice's measurement may take on the command line and the dashboard."""


@dataclass(frozen=True)
class Measure:
    """A slice's metric on one run: `value` is the accuracy (mean credit, with its 95% Wilson interval) or n;
    a run with no prediction in the slice has n 0 and no accuracy."""

    run: str
    job_id: int
    n: int
    credit: float
    value: float | None
    ci_low: float | None
    ci_high: float | None

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in RESULT_COLUMNS}


def as_dict(row: Slice) -> dict[str, Any]:
    return {"slice_id": row.id, "name": row.name, "metric": row.metric, "predicate": row.predicate,
            "description": row.description, "created_by": row.created_by, "created_at": row.created_at}


def checked_query(con: duckdb.DuckDBPyConnection, predicate: str) -> str:
    """The predictions the predicate keeps, as checked SQL: the predicate is refused exactly as `rplat export
    --where` refuses one (one expression, read-only, nothing that reaches a file), and it must run on the view's
    columns (an unknown column is refused here, not when the slice is first measured)."""
    query = export_query(con, VIEW, predicate)
    try:
        con.execute(f"SELECT * FROM ({query}) AS kept LIMIT 0")
    except duckdb.Error as exc:
        raise UserError(f"the --where predicate {predicate!r} does not run on the view {VIEW} "
                        f"({analytics._first_line(exc)}); `rplat sql --views` lists its columns.") from None
    return query


def _creator(given: str | None) -> str:
    if given is None:
        try:
            given = os.environ.get("RPLAT_REVIEWER") or getpass.getuser()
        except (KeyError, OSError):  # no login name (a container without a passwd entry)
            given = ""
    name = given.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise UserError("a slice's creator is named by 1 to 200 printable characters on one line; give one with "
                        "--created-by NAME.")
    return name


def add(engine: Engine, con: duckdb.DuckDBPyConnection, name: str, predicate: str, *, metric: str = "accuracy",
        description: str | None = None, created_by: str | None = None) -> Slice:
    """Store the slice `name` after checking its predicate on `con` (the store's DuckDB connection); nothing is
    written when anything is refused."""
    boundary.check_name(name, "the slice name")
    if metric not in SLICE_METRICS:
        raise UserError(f"there is no metric {metric!r}; give --metric {' or '.join(SLICE_METRICS)}.")
    creator = _creator(created_by)
    checked_query(con, predicate)
    row = Slice(name=name, predicate=predicate, metric=metric, description=description, created_by=creator)
    try:
        with transaction(engine) as s:
            if s.scalar(select(Slice.id).where(Slice.name == name)) is not None:
                raise UserError(f"a slice named {name!r} already exists; choose another name (`rplat slice ls` "
                                "lists them).")
            s.add(row)
            s.flush()
            s.expunge(row)
    except IntegrityError:  # the same name added at the same moment by another command
        raise UserError(f"a slice named {name!r} already exists; choose another name (`rplat slice ls` lists "
                        "them).") from None
    return row


def listing(engine: Engine) -> list[Slice]:
    """Every stored slice, by name."""
    with Session(engine, expire_on_commit=False) as s:
        return list(s.scalars(select(Slice).order_by(Slice.name)))


def get(engine: Engine, name: str) -> Slice:
    with Session(engine, expire_on_commit=False) as s:
        row = s.scalar(select(Slice).where(Slice.name == name))
    if row is None:
        raise UserError(f"there is no slice named {name!r}; `rplat slice ls` lists them.")
    return row


def saved(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Every stored slice, by name, read through the `slices` view (the dashboard's read-only door)."""
    cursor = con.cursor().execute(f"SELECT {', '.join(COLUMNS)} FROM slices ORDER BY name")
    return [dict(zip(COLUMNS, row, strict=True)) for row in cursor.fetchall()]


def runs(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    """Every evaluated run and its job, newest first."""
    rows = con.cursor().execute(f"SELECT run, max(job_id) FROM {VIEW} GROUP BY run ORDER BY max(job_id) DESC, run")
    return [(str(run), int(job)) for run, job in rows.fetchall()]


def _chosen(con: duckdb.DuckDBPyConnection, wanted: Sequence[str]) -> list[str]:
    """The runs named in `wanted`, each by its name (`method / model / job N`) or its job's id (every run of it)."""
    known = runs(con)
    chosen: list[str] = []
    for want in wanted:
        found = [run for run, job in known if want.strip() in (run, str(job))]
        if not found:
            raise UserError(f"there is no evaluated run {want!r}; give a run's name (`method / model / job N`) or "
                            "its job's id, as `rplat slice show NAME` without --run lists them.")
        chosen += [run for run in found if run not in chosen]
    return chosen


def measure(con: duckdb.DuckDBPyConnection, predicate: str, metric: str, wanted: Sequence[str] = ()
            ) -> list[Measure]:
    """The slice's metric on every run (or the runs `wanted` names), newest first: each run's predictions the
    predicate keeps, their count and credit, and the accuracy with its 95% Wilson interval (metric `accuracy`) or
    the count (metric `n`)."""
    con = con.cursor()  # a connection of its own: the dashboard calls this from its sessions' threads
    query = checked_query(con, predicate)
    chosen = _chosen(con, wanted) if wanted else None
    only = (f"WHERE run IN ({', '.join(analytics._literal(r) for r in chosen)})" if chosen else "")
    sql = f"""
        WITH every_run AS (SELECT run, max(job_id) AS job_id FROM {VIEW} GROUP BY run),
             kept AS (SELECT run, count(*) AS n, sum({CREDIT}) AS credit FROM ({query}) AS kept GROUP BY run)
        SELECT every_run.run, every_run.job_id, coalesce(kept.n, 0), coalesce(kept.credit, 0.0)
        FROM every_run LEFT JOIN kept USING (run) {only}
        ORDER BY every_run.job_id DESC, every_run.run"""
    _, rows = analytics.run_query(con, sql, timeout=SHOW_TIMEOUT,
                                  remedy="narrow the slice's predicate, or measure fewer runs with --run")
    out = []
    for run, job_id, n, credit in rows:
        n, credit = int(n), float(credit)
        if metric == "n":
            value, low, high = float(n), None, None
        elif n:
            value, (low, high) = credit / n, wilson(credit, n)
        else:
            value, low, high = None, None, None
        out.append(Measure(str(run), int(job_id), n, credit, value, low, high))
    return out
