"""`rplat chains`: operations on a stored chain set (a teacher's chains on a problem dataset)."""

from __future__ import annotations

import json

import click

from rplat.cli._common import NAME, open_store


@click.group()
def chains() -> None:
    """Operations on stored teacher chains: relabel a chain set with the other labeler."""


@chains.command("relabel")
@click.option("--teacher", required=True, type=NAME, help="the chain set's teacher name (as imported or collected)")
@click.option("--dataset", default="math-train", show_default=True, type=NAME,
              help="problem dataset the chains belong to")
@click.option("--labeler", type=click.Choice(["hendrycks", "math-verify"]), required=True,
              help="whose stored verdict becomes every chain's label")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def relabel(teacher: str, dataset: str, labeler: str, as_json: bool) -> None:
    """Make LABELER's stored verdict the label of every chain of TEACHER on DATASET: one transaction, recorded as a
    relabel-chains job; nothing is judged again."""
    from rplat.chainsets import relabel_chains, relabel_line

    summary = relabel_chains(open_store(), teacher=teacher, dataset=dataset, labeler=labeler)
    click.echo(json.dumps(summary) if as_json else relabel_line(summary))
