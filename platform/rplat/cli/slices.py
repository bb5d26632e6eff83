"""`rplat slice`: named slices, filters over the predictions saved with their metric and measured on any run
(rplat.slices)."""

from __future__ import annotations

import json
from typing import Any

import click

from rplat.cli._common import NAME, Text, emit, listing, open_store

METRICS = ("accuracy", "n")  # rplat.models.SLICE_METRICS, named here so that the help imports no SQLAlchemy


@click.group("slice")
def slice_() -> None:
    """Named slices of the predictions: save a filter with its metric (`add`), list them (`ls`), measure one on
    every run (`show`)."""


def _stores() -> tuple[Any, Any]:
    """The store's engine and its read-only DuckDB connection (the views a predicate runs on)."""
    from rplat import analytics

    engine = open_store()
    return engine, analytics.connect(engine.url.render_as_string(hide_password=False))


@slice_.command("add")
@click.argument("name", type=NAME)
@click.option("--where", "predicate", required=True,
              help="one read-only condition over the predictions view's columns, e.g. \"subject = 'Algebra'\"")
@click.option("--metric", type=click.Choice(METRICS), default="accuracy", show_default=True,
              help="accuracy: the mean credit of the slice's predictions; n: how many there are")
@click.option("--description", type=Text(2000), default=None, help="what the slice is for, in words")
@click.option("--created-by", type=Text(200), default=None,
              help="who saves it  [default: $RPLAT_REVIEWER, else the login name]")
@click.option("--json", "as_json", is_flag=True, help="print the slice as JSON")
def add(name: str, predicate: str, metric: str, description: str | None, created_by: str | None,
        as_json: bool) -> None:
    """Save the predictions that a condition keeps as slice NAME, with its metric.

    The condition is checked as `rplat export --where` checks it (one expression over the predictions view's
    columns, read-only, no function that reaches a file) and must run on the view: a name it does not know is
    refused and nothing is saved.

    \b
    rplat slice add hard-algebra --where "subject = 'Algebra' AND level IN ('Level 4', 'Level 5')"
    rplat slice add ties --where "tie_size > 1" --metric n --description "answers that tied"
    """
    from rplat import slices

    engine, con = _stores()
    try:
        row = slices.add(engine, con, name, predicate, metric=metric, description=description,
                         created_by=created_by)
    finally:
        con.close()
    if as_json:
        click.echo(json.dumps(slices.as_dict(row), default=str))
    else:
        click.echo(f"saved slice {row.name} ({row.metric} of the predictions where {row.predicate}); measure it "
                   f"with `rplat slice show {row.name}`.")


@slice_.command("ls")
@listing
def ls(as_json: bool, as_csv: bool) -> None:
    """List the saved slices, by name."""
    from rplat import slices

    emit([slices.as_dict(r) for r in slices.listing(open_store())], slices.COLUMNS, as_json, as_csv)


@slice_.command("show")
@click.argument("name", type=NAME)
@click.option("--run", "runs", multiple=True, type=Text(400),
              help="only this run: its name (`method / model / job N`) or its job's id; repeatable  "
                   "[default: every run]")
@listing
def show(name: str, runs: tuple[str, ...], as_json: bool, as_csv: bool) -> None:
    """Measure slice NAME on every evaluated run (or the runs given): its predictions' count, credit and metric,
    an accuracy with its 95% Wilson interval."""
    from rplat import slices

    engine, con = _stores()
    try:
        row = slices.get(engine, name)
        measures = slices.measure(con, row.predicate, row.metric, runs)
    finally:
        con.close()
    rows = [m.as_dict() for m in measures]
    if not as_json and not as_csv:
        click.echo(f"slice {row.name}: {row.metric} of the predictions where {row.predicate}")
        rows = [{**r, **{k: None if r[k] is None else f"{r[k]:.4f}" for k in ("value", "ci_low", "ci_high")},
                 "value": r["n"] if row.metric == "n" else (None if r["value"] is None else f"{r['value']:.4f}")}
                for r in rows]
    emit(rows, slices.RESULT_COLUMNS, as_json, as_csv)
