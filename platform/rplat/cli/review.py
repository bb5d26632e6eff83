"""`rplat review`: people's corrections of machine values, append-only, with who, when and why (rplat.reviews)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rplat.cli._common import COUNT, ID, Text, emit, listing, open_store

REASON = click.option("--reason", required=True, type=Text(2000),
                      help="why the machine value is wrong (kept in the audit trail)")
REVIEWER = click.option("--reviewer", default=None, type=Text(200),
                        help="who reviews  [default: $RPLAT_REVIEWER, else the login name]")
JSON = click.option("--json", "as_json", is_flag=True, help="print the review as JSON")
COLUMNS = ["id", "target", "target_id", "field", "machine_value", "new_value", "reviewer", "reason", "undoes",
           "created_at"]


@click.group()
def review() -> None:
    """Correct a chain's label, a rationale's keep decision or a problem's gold answer; every later job reads it."""


def _echo(outcome: object, as_json: bool) -> None:
    from rplat.reviews import Outcome

    assert isinstance(outcome, Outcome)
    if as_json:
        click.echo(json.dumps({"review": outcome.review.as_dict() if outcome.review else None,
                               "target": outcome.target, "target_id": outcome.target_id, "value": outcome.value,
                               "source": outcome.source}))
    else:
        click.echo(outcome.describe())


@review.command("chain")
@click.argument("chain_id", type=ID)
@click.option("--label", type=click.Choice(["pos", "neg"]), required=True, help="the chain's right label")
@REASON
@REVIEWER
@JSON
def chain(chain_id: int, label: str, reason: str, reviewer: str | None, as_json: bool) -> None:
    """Label teacher chain CHAIN_ID positive or negative, whatever its labeler said."""
    from rplat.reviews import add

    _echo(add(open_store(), "chain", chain_id, label, reviewer=reviewer, reason=reason), as_json)


@review.command("rationale")
@click.argument("rationale_id", type=ID)
@click.option("--keep/--drop", "keep", default=None, help="train on the rationale (--keep) or leave it out (--drop, "
              "e.g. a leak)")
@REASON
@REVIEWER
@JSON
def rationale(rationale_id: int, keep: bool | None, reason: str, reviewer: str | None, as_json: bool) -> None:
    """Keep or drop scored rationale RATIONALE_ID, whatever its loss delta said."""
    from rplat.errors import UserError
    from rplat.reviews import add

    if keep is None:
        raise UserError("say what to do with the rationale: --keep or --drop.")
    _echo(add(open_store(), "rationale", rationale_id, keep, reviewer=reviewer, reason=reason), as_json)


@review.command("problem")
@click.argument("problem_id", type=ID)
@click.option("--gold", required=True, type=Text(1000), help="the right gold answer (the final answer only)")
@REASON
@REVIEWER
@JSON
def problem(problem_id: int, gold: str, reason: str, reviewer: str | None, as_json: bool) -> None:
    """Set the gold answer of problem PROBLEM_ID."""
    from rplat.reviews import add

    _echo(add(open_store(), "problem", problem_id, gold, reviewer=reviewer, reason=reason), as_json)


@review.command("undo")
@click.argument("review_id", type=ID)
@REASON
@REVIEWER
@JSON
def undo(review_id: int, reason: str, reviewer: str | None, as_json: bool) -> None:
    """Undo review REVIEW_ID with a new review that puts back the value before it (nothing is deleted)."""
    from rplat.reviews import undo as undo_review

    _echo(undo_review(open_store(), review_id, reviewer=reviewer, reason=reason), as_json)


@review.command("apply")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@REVIEWER
@click.option("--json", "as_json", is_flag=True, help="print the outcomes as JSON lines")
def apply(path: Path, reviewer: str | None, as_json: bool) -> None:
    """Apply a JSONL file of reviews, all or none: each line {"chain": ID, "label": "pos", "reason": "..."},
    {"rationale": ID, "keep": false, ...}, {"problem": ID, "gold": "42", ...} or {"undo": REVIEW_ID, ...}."""
    from rplat.reviews import apply_file

    outcomes = apply_file(open_store(), path, reviewer=reviewer)
    for outcome in outcomes:
        _echo(outcome, as_json)
    if not as_json:
        added = sum(o.review is not None for o in outcomes)
        click.echo(f"{added} reviews added, {len(outcomes) - added} already in effect.")


@review.command("ls")
@click.option("--chain", "chain_id", type=ID, default=None, help="only the reviews of this chain")
@click.option("--rationale", "rationale_id", type=ID, default=None, help="only the reviews of this rationale")
@click.option("--problem", "problem_id", type=ID, default=None, help="only the reviews of this problem")
@click.option("--limit", type=COUNT, default=100, show_default=True, help="newest reviews to list")
@listing
def ls(chain_id: int | None, rationale_id: int | None, problem_id: int | None, limit: int, as_json: bool,
       as_csv: bool) -> None:
    """List reviews, newest first."""
    from sqlalchemy.orm import Session

    from rplat.errors import UserError
    from rplat.reviews import listing as review_listing

    named = [(t, i) for t, i in (("chain", chain_id), ("rationale", rationale_id), ("problem", problem_id))
             if i is not None]
    if len(named) > 1:
        raise UserError("list the reviews of one target at a time: give one of --chain, --rationale, --problem.")
    target, target_id = named[0] if named else (None, None)
    with Session(open_store()) as session:
        rows = review_listing(session, target, target_id, limit)
    emit([r.as_dict() for r in rows], COLUMNS, as_json, as_csv)
