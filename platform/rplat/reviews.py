"""People in the loop: reviews, the append-only corrections of machine values, and the values in effect.

A person can say "this chain is positive" (a teacher chain's `label`), "this rationale is a leak" (a rationale's
`kept`: drop it from training, or keep one the filter dropped) and "this problem's gold answer is wrong" (a
problem's `answer`). Each says so with a row in `reviews` (who, when, why, the machine's value, the new one);
machine rows are never edited, and no review is ever changed or deleted: an undo is a new review that puts back
the value in effect before the one it undoes.

The value in effect of a (target, id, field) is the `new_value` of its latest review, or the machine's own value
when there is none or when the latest one's `new_value` is NULL (an undo back to the machine value). Everything
that reads these values reads the effective ones: the jobs through the expressions below (`chain_label`,
`rationale_kept`, `problem_answer`), the DuckDB views (`label`, `machine_label`, `label_source`...), so `rplat
sql`, export and the dashboard agree.

A job reads them as of the last review it saw (`Job.reviews_seen`, pinned by `seen` when it first reads one), so
a resumed attempt reads what the first one read and an old result stays explainable; a job of a kind that reads
reviews, enqueued again after new reviews, is a new job (its dedupe key holds the latest review id).
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, case, func, select, update
from sqlalchemy.orm import Session

from rplat.boundary import ID_MAX, check_id
from rplat.errors import UserError
from rplat.models import Job, Problem, Rationale, RationaleScore, Review, TeacherChain
from rplat.store import transaction

MAX_REASON = 2_000
MAX_GOLD = 1_000  # the longest gold answer a review may set (answers past this are never verified)
LABELS = ("pos", "neg")


@dataclass(frozen=True)
class Target:
    """What can be reviewed: a kind of row (`chain`, `rationale`, `problem`) and the one field of it a person
    corrects, with how its value is written in `reviews` (text) and shown."""

    noun: str
    table: str
    field: str
    option: str  # how the CLI names the new value


TARGETS: dict[str, Target] = {
    "chain": Target("chain", "teacher_chains", "label", "--label"),
    "rationale": Target("rationale", "rationales", "kept", "--keep/--drop"),
    "problem": Target("problem", "problems", "answer", "--gold"),
}
BY_TABLE = {t.table: t for t in TARGETS.values()}


@dataclass(frozen=True)
class ReviewRow:
    """One review as people and scripts see it (`rplat review ls`)."""

    id: int
    target: str  # chain | rationale | problem
    target_id: int
    field: str
    machine_value: str | None
    new_value: str | None  # None: back to the machine value
    reviewer: str
    reason: str
    undoes: int | None
    created_at: Any

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "created_at": str(self.created_at)}


def _row(review: Review) -> ReviewRow:
    return ReviewRow(review.id, BY_TABLE[review.target_table].noun, review.target_id, review.field,
                     review.machine_value, review.new_value, review.reviewer, review.reason, review.undoes,
                     review.created_at)


# --- checks -----------------------------------------------------------------------------------------


def reviewer_name(given: str | None) -> str:
    """The reviewer: `given` (`--reviewer`), else the login name; one printable line of at most 200 characters."""
    name = given if given is not None else (os.environ.get("RPLAT_REVIEWER") or _login())
    name = name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise UserError("a reviewer is named by 1 to 200 printable characters on one line; give one with "
                        "--reviewer NAME.")
    return name


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return ""


def _reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise UserError("a review needs its reason (the audit trail says why a value was changed); give one "
                        "with --reason TEXT.")
    if len(text) > MAX_REASON:
        raise UserError(f"a review's reason is at most {MAX_REASON} characters, not {len(text)}; shorten --reason.")
    return text


def _value(target: Target, value: Any) -> str:
    """The new value as stored in `reviews` (checked): a label, "true"/"false", or a gold answer."""
    if target.field == "label":
        if value not in LABELS:
            raise UserError(f"a chain's label is pos or neg, not {value!r}; give --label pos or --label neg.")
        return str(value)
    if target.field == "kept":
        if not isinstance(value, bool):
            raise UserError(f"a rationale is kept or dropped (true or false), not {value!r}; give --keep or --drop.")
        return "true" if value else "false"
    if not isinstance(value, str) or not value.strip():
        raise UserError("a gold answer is a non-empty string; give it with --gold ANSWER.")
    if len(value) > MAX_GOLD:
        raise UserError(f"a gold answer is at most {MAX_GOLD} characters, not {len(value)}; give the final answer "
                        "only (e.g. the content of its \\boxed{}).")
    if "\x00" in value or any(not c.isprintable() and c not in "\n\t" for c in value):
        raise UserError("a gold answer holds only printable characters; remove the control characters from --gold.")
    return value.strip()


def _machine_value(session: Session, target: Target, target_id: int) -> str | None:
    """The machine's own value of the target (raises if there is no such row)."""
    check_id(target_id, f"the {target.noun} id")
    if target.table == "teacher_chains":
        label = session.scalar(select(TeacherChain.label).where(TeacherChain.id == target_id))
        if label is None:
            raise UserError(f"there is no chain with id {target_id}; find one with `rplat sql \"SELECT chain_id, "
                            "problem, teacher, label FROM chains LIMIT 10\"`.")
        return str(label)
    if target.table == "rationales":
        if session.scalar(select(Rationale.id).where(Rationale.id == target_id)) is None:
            raise UserError(f"there is no rationale with id {target_id}; find one with `rplat sql \"SELECT "
                            "rationale_id, kept, rationale FROM rationales LIMIT 10\"`.")
        kept = session.execute(select(RationaleScore.kept).where(RationaleScore.rationale_id == target_id)
                               .order_by(RationaleScore.id.desc()).limit(1)).first()
        if kept is None:
            raise UserError(f"rationale {target_id} has not been scored yet, so nothing keeps or drops it; run a "
                            "score-rationales job on its extraction first.")
        return "true" if kept[0] else "false"
    found = session.execute(select(Problem.answer).where(Problem.id == target_id)).first()
    if found is None:
        raise UserError(f"there is no problem with id {target_id}; find one with `rplat sql \"SELECT problem_id, "
                        "problem, gold FROM problems LIMIT 10\"`.")
    return found[0]


def _latest(session: Session, target: Target, target_id: int) -> Review | None:
    return session.scalars(select(Review).where(Review.target_table == target.table, Review.target_id == target_id,
                                                Review.field == target.field)
                           .order_by(Review.id.desc()).limit(1)).first()


def in_effect(session: Session, target: str, target_id: int) -> tuple[str | None, str]:
    """(the value in effect, where it comes from: "machine" or "review #N") of one target."""
    t = TARGETS[target]
    machine = _machine_value(session, t, target_id)
    latest = _latest(session, t, target_id)
    if latest is None or latest.new_value is None:
        return machine, "machine"
    return latest.new_value, f"review #{latest.id}"


# --- writing reviews ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one review request did: the review it added, or None when the value was already in effect."""

    review: ReviewRow | None
    target: str
    target_id: int
    value: str | None  # the value now in effect
    source: str  # "machine" or "review #N"

    def describe(self) -> str:
        t = TARGETS[self.target]
        if self.review is None:
            return f"{self.target} {self.target_id}: {t.field} is already {self.value} ({self.source}); nothing added."
        if self.review.undoes is not None:
            back = "the machine's value" if self.source == "machine" else "an earlier review's value"
            return (f"review #{self.review.id} undoes review #{self.review.undoes}: {self.target} {self.target_id} "
                    f"{t.field} is {self.value} again ({back}), by {self.review.reviewer}.")
        return (f"review #{self.review.id}: {self.target} {self.target_id} {t.field} "
                f"{self.review.machine_value} (machine) -> {self.value}, by {self.review.reviewer}.")


def add_in(session: Session, target: str, target_id: int, value: Any, *, reviewer: str | None,
           reason: str | None) -> Outcome:
    """Review one target inside the caller's transaction: a new row in `reviews` unless `value` is already the
    value in effect (then nothing is added: a review file applied twice adds nothing the second time)."""
    if target not in TARGETS:
        raise UserError(f"there is nothing called {target!r} to review; review a chain, a rationale or a problem.")
    t = TARGETS[target]
    new = _value(t, value)
    who, why = reviewer_name(reviewer), _reason(reason)
    machine = _machine_value(session, t, target_id)
    latest = _latest(session, t, target_id)
    current = machine if latest is None or latest.new_value is None else latest.new_value
    if new == current:
        return Outcome(None, target, target_id, current, "machine" if latest is None or latest.new_value is None
                       else f"review #{latest.id}")
    review = Review(target_table=t.table, target_id=target_id, field=t.field, machine_value=machine,
                    new_value=new, reviewer=who, reason=why)
    session.add(review)
    session.flush()
    return Outcome(_row(review), target, target_id, new, f"review #{review.id}")


def add(engine: Engine, target: str, target_id: int, value: Any, *, reviewer: str | None = None,
        reason: str | None = None) -> Outcome:
    """Review one target (`rplat review chain|rationale|problem`, the dashboard's review form): one transaction."""
    with transaction(engine) as session:
        return add_in(session, target, target_id, value, reviewer=reviewer, reason=reason)


def undo_in(session: Session, review_id: int, *, reviewer: str | None, reason: str | None) -> Outcome:
    """Undo review `review_id` with a new review that puts back the value in effect before it. Only the latest
    review of its target can be undone (undo the later ones first): anything else would silently undo them too."""
    check_id(review_id, "the review id")
    who, why = reviewer_name(reviewer), _reason(reason)
    review = session.get(Review, review_id)
    if review is None:
        raise UserError(f"there is no review #{review_id}; see `rplat review ls`.")
    t = BY_TABLE[review.target_table]
    latest = _latest(session, t, review.target_id)
    assert latest is not None
    if latest.id != review.id:
        raise UserError(f"review #{review_id} is not the latest of {t.noun} {review.target_id}: review #{latest.id} "
                        f"came after it; undo #{latest.id} first (or review the {t.noun} again).")
    before = session.scalars(select(Review).where(Review.target_table == t.table,
                                                  Review.target_id == review.target_id, Review.field == t.field,
                                                  Review.id < review.id)
                             .order_by(Review.id.desc()).limit(1)).first()
    restored = before.new_value if before is not None else None
    machine = _machine_value(session, t, review.target_id)
    row = Review(target_table=t.table, target_id=review.target_id, field=t.field, machine_value=machine,
                 new_value=restored, reviewer=who, reason=why, undoes=review.id)
    session.add(row)
    session.flush()
    value = machine if restored is None else restored
    return Outcome(_row(row), t.noun, review.target_id, value, "machine" if restored is None else f"review #{row.id}")


def undo(engine: Engine, review_id: int, *, reviewer: str | None = None, reason: str | None = None) -> Outcome:
    with transaction(engine) as session:
        return undo_in(session, review_id, reviewer=reviewer, reason=reason)


# One line of a review file: {"chain": 12, "label": "pos", "reason": "..."}, {"rationale": 7, "keep": false,
# "reason": "..."}, {"problem": 3, "gold": "42", "reason": "..."} or {"undo": 5, "reason": "..."}; "reviewer" is
# optional on every line (else --reviewer, else the login name).
_VALUE_KEY = {"chain": "label", "rationale": "keep", "problem": "gold"}
_FILE_HELP = ('each line is one JSON object such as {"chain": 12, "label": "pos", "reason": "..."}, {"rationale": 7, '
              '"keep": false, "reason": "..."}, {"problem": 3, "gold": "42", "reason": "..."} or {"undo": 5, '
              '"reason": "..."}')


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read the review file {path}: {exc.strerror or exc}; check the path.") from None
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path} line {number}: not JSON ({exc.msg}); {_FILE_HELP}.") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path} line {number}: not a JSON object; {_FILE_HELP}.")
                yield number, record
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text; save the review file as UTF-8 JSON lines.") from None


def _id_of(record: dict[str, Any], key: str) -> int:
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ID_MAX:
        raise UserError(f"{key!r} must be an id (a whole number from 1 to {ID_MAX}), not {value!r}")
    return value


def _apply_record(session: Session, record: dict[str, Any], reviewer: str | None) -> Outcome:
    kinds = [k for k in (*_VALUE_KEY, "undo") if k in record]
    if len(kinds) != 1:
        raise UserError(f"name exactly one of chain, rationale, problem or undo, not {kinds or 'none'}; "
                        f"{_FILE_HELP}")
    (kind,) = kinds
    allowed = {kind, "reason", "reviewer", *([_VALUE_KEY[kind]] if kind in _VALUE_KEY else [])}
    extra = sorted(set(record) - allowed)
    if extra:
        raise UserError(f"unknown field {extra[0]!r}; {_FILE_HELP}")
    who = record.get("reviewer", reviewer)
    if who is not None and not isinstance(who, str):
        raise UserError(f"'reviewer' must be a string, not {who!r}")
    reason = record.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise UserError(f"'reason' must be a string, not {reason!r}")
    if kind == "undo":
        return undo_in(session, _id_of(record, "undo"), reviewer=who, reason=reason)
    key = _VALUE_KEY[kind]
    if key not in record:
        raise UserError(f"a {kind} review needs {key!r}; {_FILE_HELP}")
    return add_in(session, kind, _id_of(record, kind), record[key], reviewer=who, reason=reason)


def apply_file(engine: Engine, path: Path, *, reviewer: str | None = None) -> list[Outcome]:
    """Apply a JSONL review file, all or nothing (one transaction): a mistake on any line writes nothing and names
    the line. A line whose value is already in effect adds nothing, so applying a file twice adds nothing."""
    outcomes: list[Outcome] = []
    with transaction(engine) as session:
        for number, record in _lines(path):
            try:
                outcomes.append(_apply_record(session, record, reviewer))
            except UserError as exc:
                message = str(exc)
                raise UserError(f"{path} line {number}: {message[0].lower()}{message[1:]}"
                                + ("" if message.endswith(".") else ".")) from None
    if not outcomes:
        raise UserError(f"the review file {path} holds no reviews; {_FILE_HELP}.")
    return outcomes


# --- reading -------------------------------------------------------------------------------------------


def listing(session: Session, target: str | None = None, target_id: int | None = None,
            limit: int | None = None) -> list[ReviewRow]:
    """Reviews, newest first; of one kind of target, or of one target."""
    query = select(Review).order_by(Review.id.desc())
    if target is not None:
        query = query.where(Review.target_table == TARGETS[target].table)
        if target_id is not None:
            query = query.where(Review.target_id == target_id)
    if limit is not None:
        query = query.limit(limit)
    return [_row(r) for r in session.scalars(query)]


def of_row(session: Session, table: str, row_id: int) -> list[ReviewRow]:
    """The reviews of one stored row, oldest first (for `rplat explain`); none for a table people do not review."""
    if table not in BY_TABLE:
        return []
    return [_row(r) for r in session.scalars(select(Review).where(Review.target_table == table,
                                                                  Review.target_id == row_id).order_by(Review.id))]


def latest_id(session: Session) -> int:
    """The id of the newest review (0: none yet)."""
    return int(session.scalar(select(func.coalesce(func.max(Review.id), 0))) or 0)


def seen(session: Session, job_id: int) -> int:
    """The last review job `job_id` reads, pinned the first time it asks (inside its fenced transaction), so every
    later attempt of the job reads the same effective values."""
    session.execute(update(Job).where(Job.id == job_id, Job.reviews_seen.is_(None))
                    .values(reviews_seen=select(func.coalesce(func.max(Review.id), 0)).scalar_subquery()))
    return int(session.scalar(select(Job.reviews_seen).where(Job.id == job_id)) or 0)


def _reviewed(table: str, field: str, target_id: Any, through: int | None) -> Any:
    """The latest review's new value of (table, field, target_id), up to review `through` (NULL: none, or back to
    the machine value), as a correlated scalar subquery."""
    query = select(Review.new_value).where(Review.target_table == table, Review.field == field,
                                           Review.target_id == target_id)
    if through is not None:
        query = query.where(Review.id <= through)
    return query.order_by(Review.id.desc()).limit(1).correlate_except(Review).scalar_subquery()


def chain_label(through: int | None) -> ColumnElement[str]:
    """A teacher chain's label in effect (as of review `through`; None: every review)."""
    return func.coalesce(_reviewed("teacher_chains", "label", TeacherChain.id, through), TeacherChain.label)


def rationale_kept(through: int | None) -> ColumnElement[bool]:
    """Whether a scored rationale is kept, in effect (a rationale's review overrides every score of it)."""
    reviewed = _reviewed("rationales", "kept", RationaleScore.rationale_id, through)
    return case((reviewed == "true", True), (reviewed == "false", False), else_=RationaleScore.kept)


def problem_answer(through: int | None) -> ColumnElement[str]:
    """A problem's gold answer in effect."""
    return func.coalesce(_reviewed("problems", "answer", Problem.id, through), Problem.answer)


def effective_labels(session: Session, chain_ids: Iterable[int], through: int | None = None) -> dict[int, str]:
    """{chain id: label in effect} for the given chains."""
    ids = list(chain_ids)
    if not ids:
        return {}
    return dict(session.execute(select(TeacherChain.id, chain_label(through)).where(TeacherChain.id.in_(ids))).all())
