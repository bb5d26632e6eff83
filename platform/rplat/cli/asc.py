"""`rplat report asc`: SC and ASC accuracy against the number of samples k (TDG's ASC figure)."""

from __future__ import annotations

import click

from rplat.boundary import MAX_REPEATS
from rplat.cli._common import NAME, SEED, emit, listing, open_store

COLUMNS = ["model", "method", "k", "n", "accuracy", "ci_low", "ci_high", "aggregate_job", "sample_job", "unanswered"]


@click.command("asc")
@click.option("--experiment", required=True, type=NAME, help="the experiment whose aggregate jobs to draw the curve of")
@click.option("--repeats", type=click.IntRange(1, MAX_REPEATS), default=20, show_default=True,
              help="random subsets of k samples per problem and k (the same subsets for every method)")
@click.option("--seed", type=SEED, default=0, show_default=True, help="seed of the subsets")
@listing
def report_asc(experiment: str, repeats: int, seed: int, as_json: bool, as_csv: bool) -> None:
    """Accuracy of self-consistency and each ASC vote over k = 1..n of every problem's n samples, averaged over
    random subsets, with 95% Wilson intervals; one curve per aggregate job (model) of the experiment, samples
    without an answer voting or dropped as that job's `unanswered` says (column unanswered). The text output
    first gives each ranker's accuracy on its held-out pairs.

    \b
    rplat report asc --experiment math-asc
    rplat report asc --experiment math-asc --repeats 100 --seed 1 --csv
    """
    from rplat.asc import asc_curve, ranker_accuracy

    engine = open_store()
    rows = asc_curve(engine, experiment, repeats=repeats, seed=seed)
    if as_json or as_csv:
        emit(rows, COLUMNS, as_json, as_csv)
        return
    for r in ranker_accuracy(engine, experiment):
        click.echo(f"ranker {r['ranker']} (train-ranker job {r['train_ranker_job']}, encoder {r['encoder']}): "
                   f"{100 * r['accuracy']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] of "
                   f"{r['heldout_pairs']} held-out pairs ranked right (s_pos > s_neg)")
    click.echo(f"accuracy (%) [95% Wilson interval] against the number of samples k, experiment {experiment}, "
               f"{repeats} subsets per k (seed {seed})")
    emit([{**r, "accuracy %": f"{100 * r['accuracy']:.2f} [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"}
          for r in rows], ["model", "method", "k", "n", "accuracy %", "aggregate_job", "unanswered"], False)
