"""Export shapes: a view's rows turned into the rows a trainer reads (TRL's dataset formats), each carrying the ids
of the rows it came from.

- `sft` (prompt, completion): positive chains (question -> chain), kept rationales (preceding -> rationale), problems'
  worked solutions (question -> solution).
- `dpo` (prompt, chosen, rejected): a problem's positive and negative chains, paired by a pairing rule.
- `kto` (prompt, completion, label): labelled chains, label true for a positive.
- `prm` (prompt, completions, labels): TRL's stepwise format; a chain split into steps (`text_units`), each step
  labelled with the chain's label, or a solve trajectory's chosen steps, each labelled with whether the
  trajectory's answer was right (trajectories without a verdict are left out).

Every shape reads the views, so labels are the ones in effect (a review's, else the machine's). A shape's rows
stream, in a fixed order: the view is read ordered by problem and row id (a group, a problem's chains or a
trajectory's steps, is contiguous).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from rplat.errors import UserError
from rplat.methods.rationales import text_units

Row = dict[str, Any]

PAIRINGS = ("per-negative", "all", "sample:N")
_SAMPLE = re.compile(r"sample:([1-9][0-9]{0,5})")


@dataclass(frozen=True)
class Pairing:
    """How `dpo` pairs a problem's positive chains with its negative ones: `per-negative` (each negative with one
    positive, the positives taken in turn in chain order), `all` (every positive with every negative) or `sample`
    (`n` pairs drawn without replacement from all of them, seeded per problem by `seed`)."""

    rule: str = "per-negative"
    n: int | None = None
    seed: int = 0

    def __str__(self) -> str:
        return f"sample:{self.n} seed={self.seed}" if self.rule == "sample" else self.rule

    @property
    def options(self) -> str:
        """The rule as `rplat export` options."""
        return f"--pairing sample:{self.n} --seed {self.seed}" if self.rule == "sample" else f"--pairing {self.rule}"

    def pairs(self, problem_id: int, pos: list[Row], neg: list[Row]) -> list[tuple[Row, Row]]:
        if not pos or not neg:
            return []
        if self.rule == "per-negative":
            return [(pos[i % len(pos)], n) for i, n in enumerate(neg)]
        every = list(itertools.product(pos, neg))
        if self.rule == "all":
            return every
        assert self.n is not None
        rng = random.Random(f"{self.seed}:{problem_id}")  # the same pairs for a problem however --where slices
        return [every[i] for i in sorted(rng.sample(range(len(every)), min(self.n, len(every))))]


def parse_pairing(text: str | None, seed: int | None) -> Pairing:
    if text is None:
        text = "per-negative"
    if text in ("per-negative", "all"):
        if seed is not None:
            raise UserError(f"--seed only seeds --pairing sample:N, not --pairing {text}; leave --seed out.")
        return Pairing(text)
    match = _SAMPLE.fullmatch(text)
    if match is None:
        raise UserError(f"--pairing {text!r} is not a pairing rule; give per-negative, all, or sample:N with N a "
                        "number of pairs per problem from 1 to 999999, e.g. --pairing sample:4.")
    return Pairing("sample", int(match.group(1)), 0 if seed is None else seed)


def _ordered(*columns: str) -> Callable[[str], str]:
    """The export's query in a fixed order (the same rows come out in the same order; groups are contiguous)."""
    return lambda query: f"SELECT * FROM ({query}) AS shaped ORDER BY {', '.join(columns)}"


def _trajectories_query(query: str) -> str:
    # The trajectory's verdict and the problem's question are not columns of the view; read them beside it.
    return (f"SELECT shaped.*, p.question, CAST(t.correct AS BOOLEAN) AS trajectory_correct FROM ({query}) AS shaped "
            "JOIN store.solve_trajectories t ON t.id = shaped.trajectory_id "
            "JOIN store.problems p ON p.id = shaped.problem_id "
            "WHERE shaped.chosen ORDER BY shaped.trajectory_id, shaped.step_idx")


def _ids(row: Row, *names: str) -> Row:
    return {name: row[name] for name in names}


def _sft_chains(rows: Iterable[Row], _: Pairing) -> Iterator[Row]:
    for r in rows:
        if r["label"] == "pos":
            yield {"prompt": r["question"], "completion": r["text"], **_ids(r, "chain_id", "problem_id", "job_id")}


def _sft_rationales(rows: Iterable[Row], _: Pairing) -> Iterator[Row]:
    for r in rows:
        if r["kept"]:
            yield {"prompt": r["preceding"], "completion": r["rationale"],
                   **_ids(r, "rationale_id", "document_id", "problem_id", "extract_rationales_job_id",
                          "score_rationales_job_id")}


def _sft_problems(rows: Iterable[Row], _: Pairing) -> Iterator[Row]:
    for r in rows:
        if r["solution"] and r["solution"].strip():
            yield {"prompt": r["question"], "completion": r["solution"], **_ids(r, "problem_id", "job_id")}


def _dpo_chains(rows: Iterable[Row], pairing: Pairing) -> Iterator[Row]:
    for problem_id, group in itertools.groupby(rows, key=lambda r: r["problem_id"]):
        chains = list(group)
        pos = [c for c in chains if c["label"] == "pos"]
        neg = [c for c in chains if c["label"] == "neg"]
        for p, n in pairing.pairs(problem_id, pos, neg):
            yield {"prompt": p["question"], "chosen": p["text"], "rejected": n["text"], "problem_id": problem_id,
                   "chosen_chain_id": p["chain_id"], "rejected_chain_id": n["chain_id"],
                   "chosen_job_id": p["job_id"], "rejected_job_id": n["job_id"], "pairing": str(pairing)}


def _kto_chains(rows: Iterable[Row], _: Pairing) -> Iterator[Row]:
    for r in rows:
        if r["label"] in ("pos", "neg"):
            yield {"prompt": r["question"], "completion": r["text"], "label": r["label"] == "pos",
                   **_ids(r, "chain_id", "problem_id", "job_id")}


def _prm_chains(rows: Iterable[Row], _: Pairing) -> Iterator[Row]:
    for r in rows:
        steps = text_units(r["text"])
        if r["label"] in ("pos", "neg") and steps:
            yield {"prompt": r["question"], "completions": steps, "labels": [r["label"] == "pos"] * len(steps),
                   **_ids(r, "chain_id", "problem_id", "job_id")}


def _prm_steps(rows: Iterable[Row], _: Pairing) -> Iterator[Row]:
    for trajectory_id, group in itertools.groupby(rows, key=lambda r: r["trajectory_id"]):
        steps = list(group)
        first = steps[0]
        if first["trajectory_correct"] is None:
            continue
        yield {"prompt": first["question"], "completions": [s["candidate"] for s in steps],
               "labels": [bool(first["trajectory_correct"])] * len(steps), "trajectory_id": trajectory_id,
               **_ids(first, "problem_id", "job_id")}


_TEXT, _ID, _BOOL = pa.string(), pa.int64(), pa.bool_()
_CHAIN_IDS = [("chain_id", _ID), ("problem_id", _ID), ("job_id", _ID)]
_PRM = [("prompt", _TEXT), ("completions", pa.list_(_TEXT)), ("labels", pa.list_(_BOOL))]


@dataclass(frozen=True)
class Shape:
    """How one shape reads one view: the query around the export's (ordering groups), the rows it makes and their
    schema, and what it keeps (said when nothing is kept)."""

    query: Callable[[str], str]
    rows: Callable[[Iterable[Row], Pairing], Iterator[Row]]
    schema: pa.Schema
    keeps: str


SHAPES: dict[str, dict[str, Shape]] = {
    "sft": {
        "chains": Shape(_ordered("problem_id", "chain_id"), _sft_chains,
                        pa.schema([("prompt", _TEXT), ("completion", _TEXT), *_CHAIN_IDS]),
                        "positive chains (label = 'pos')"),
        "rationales": Shape(_ordered("rationale_id"), _sft_rationales, pa.schema(
            [("prompt", _TEXT), ("completion", _TEXT), ("rationale_id", _ID), ("document_id", _ID),
             ("problem_id", _ID), ("extract_rationales_job_id", _ID), ("score_rationales_job_id", _ID)]),
            "kept rationales (kept)"),
        "problems": Shape(_ordered("problem_id"), _sft_problems, pa.schema(
            [("prompt", _TEXT), ("completion", _TEXT), ("problem_id", _ID), ("job_id", _ID)]),
            "problems with a worked solution"),
    },
    "dpo": {
        "chains": Shape(_ordered("problem_id", "chain_id"), _dpo_chains, pa.schema(
            [("prompt", _TEXT), ("chosen", _TEXT), ("rejected", _TEXT), ("problem_id", _ID),
             ("chosen_chain_id", _ID), ("rejected_chain_id", _ID), ("chosen_job_id", _ID), ("rejected_job_id", _ID),
             ("pairing", _TEXT)]),
            "pairs (problems with both a positive and a negative chain)"),
    },
    "kto": {
        "chains": Shape(_ordered("problem_id", "chain_id"), _kto_chains, pa.schema(
            [("prompt", _TEXT), ("completion", _TEXT), ("label", _BOOL), *_CHAIN_IDS]),
            "labelled chains (label 'pos' or 'neg')"),
    },
    "prm": {
        "chains": Shape(_ordered("problem_id", "chain_id"), _prm_chains, pa.schema([*_PRM, *_CHAIN_IDS]),
                        "labelled chains (label 'pos' or 'neg')"),
        "step_candidates": Shape(_trajectories_query, _prm_steps, pa.schema(
            [*_PRM, ("trajectory_id", _ID), ("problem_id", _ID), ("job_id", _ID)]),
            "solve trajectories with a verdict (correct true or false)"),
    },
}


def shape_of(shape: str, view: str) -> Shape:
    """The shape `shape` of `view`, or one sentence saying which views it takes."""
    if shape not in SHAPES:
        raise UserError(f"there is no shape {shape!r}; give --shape {', '.join(SHAPES)}.")
    views = SHAPES[shape]
    if view not in views:
        raise UserError(f"the {shape} shape cannot be made from {view}; it reads {' or '.join(views)}, "
                        f"e.g. rplat export {next(iter(views))} --shape {shape}.")
    return views[view]
