"""`rplat export`: a view's rows with their lineage columns, ready for other tools (JSONL, Parquet, CSV)."""

from __future__ import annotations

from pathlib import Path

import click

from rplat.cli._common import open_store, option


@click.command("export")
@click.argument("view")
@click.option("--where", default=None, help="a read-only SQL predicate over the view's columns, e.g. kept")
@option("--file-type", old="--format", type=click.Choice(["jsonl", "parquet", "csv"]), default=None,
        help="what to write (default: the suffix of --out)")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="the file to write")
@click.option("--timeout", type=float, default=3600.0, show_default=True, metavar="SECONDS",
              help="stop the export (writing nothing) if it runs longer")
def export(view: str, where: str | None, file_type: str | None, out: Path, timeout: float) -> None:
    """Write the rows of VIEW (rationales, chains, samples, predictions, ...) to a file, each with the job that
    made it: its kind, model, prompt template and params as JSON.

    The predicate is one condition over the view's columns, parsed by DuckDB: nothing can follow it (no second
    query, UNION, ORDER BY or LIMIT), and it may call nothing `rplat sql` refuses; subqueries over the views and
    `store` tables are allowed. The rows stream to the file in batches (memory does not grow with the view), with
    progress on stderr; the file appears whole or not at all.

    \b
    rplat export rationales --where "kept" --out kept.parquet
    rplat export chains --where "label = 'pos' AND NOT labelers_disagree" --file-type jsonl --out pos.jsonl
    rplat export predictions --where "job_id = 12" --out preds.csv
    rplat export prefilter_scores --where "job_id = 3 AND passed" --out kept-documents.parquet
    """
    from rplat.analytics import Interrupted, check_timeout
    from rplat.export import export_view
    from rplat.progress import Progress

    check_timeout(timeout)
    try:
        engine = open_store()
        url = engine.url.render_as_string(hide_password=False)
        engine.dispose()
        with Progress(f"export {view}", unit="rows") as progress:
            rows = export_view(url, view, out, file_type=file_type, where=where, progress=progress, timeout=timeout)
    except KeyboardInterrupt:
        raise Interrupted("the export was stopped by Ctrl-C before it finished.") from None
    click.echo(f"wrote {rows} rows of {view} to {out}")
