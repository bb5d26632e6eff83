"""`rplat export`: a view's rows with their lineage columns, ready for other tools (JSONL, Parquet, CSV, a Hugging
Face dataset), as they are or shaped for a trainer (SFT, DPO, KTO, PRM)."""

from __future__ import annotations

from pathlib import Path

import click

from rplat.cli._common import SEED, open_store, option


@click.command("export")
@click.argument("view")
@click.option("--where", default=None, help="a read-only SQL predicate over the view's columns, e.g. kept")
@option("--file-type", old="--format", type=click.Choice(["jsonl", "parquet", "csv", "hf"]), default=None,
        help="what to write; hf: a Hugging Face save_to_disk directory with a README card (default: the suffix of "
             "--out)")
@click.option("--shape", type=click.Choice(["sft", "dpo", "kto", "prm"]), default=None,
              help="write a trainer's rows made from the view's: sft (chains, rationales, problems), dpo, kto, prm "
                   "(chains, step_candidates)")
@click.option("--pairing", default=None, metavar="per-negative|all|sample:N",
              help="--shape dpo: how a problem's positive and negative chains pair  [default: per-negative]")
@click.option("--seed", type=SEED, default=None, help="--pairing sample:N: the seed of the sample  [default: 0]")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="the file to write (--file-type hf: the directory)")
@click.option("--timeout", type=float, default=3600.0, show_default=True, metavar="SECONDS",
              help="stop the export (writing nothing) if it runs longer")
def export(view: str, where: str | None, file_type: str | None, shape: str | None, pairing: str | None,
           seed: int | None, out: Path, timeout: float) -> None:
    """Write the rows of VIEW (rationales, chains, samples, predictions, problems, ...) to a file, each with the job
    that made it: its kind, model, prompt template and params as JSON.

    The predicate is one condition over the view's columns, parsed by DuckDB: nothing can follow it (no second
    query, UNION, ORDER BY or LIMIT), and it may call nothing `rplat sql` refuses; subqueries over the views and
    `store` tables are allowed. The rows stream to the file in batches (memory does not grow with the view), with
    progress on stderr; the file appears whole or not at all.

    With --shape the rows written are a trainer's (TRL's formats), made from the view's rows the predicate keeps,
    each carrying the ids of the rows it came from: sft (prompt, completion: positive chains, kept rationales,
    worked solutions), dpo (prompt, chosen, rejected: a problem's positive and negative chains), kto (prompt,
    completion, label: labelled chains), prm (prompt, completions, labels: chains split into steps, solve
    trajectories' chosen steps). Labels and kept flags are the ones in effect after review.

    \b
    rplat export rationales --where "kept" --out kept.parquet
    rplat export chains --where "label = 'pos' AND NOT labelers_disagree" --file-type jsonl --out pos.jsonl
    rplat export predictions --where "job_id = 12" --out preds.csv
    rplat export prefilter_scores --where "job_id = 3 AND passed" --out kept-documents.parquet
    rplat export chains --shape dpo --pairing sample:4 --seed 1 --file-type hf --out dpo-pairs
    rplat export problems --where "dataset = 'math-train'" --shape sft --out solutions.jsonl
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
            rows = export_view(url, view, out, file_type=file_type, where=where, shape=shape, pairing=pairing,
                               seed=seed, progress=progress, timeout=timeout)
    except KeyboardInterrupt:
        raise Interrupted("the export was stopped by Ctrl-C before it finished.") from None
    what = f"{shape} rows from {view}" if shape else f"rows of {view}"
    click.echo(f"wrote {rows} {what} to {out}")
