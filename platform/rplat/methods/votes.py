"""Votes over sampled answers (self-consistency; ASC adds weights) and micro accuracy per subject.

A vote gives every answer its weight (1 for self-consistency) and returns the answers with the most mass.
When several answers tie, a problem earns the fraction of the tied answers that are correct: the expected
accuracy of breaking the tie at random, which is what the papers' tables report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

OVERALL = "all"


class Vote(NamedTuple):
    winner: str | None
    mass: float
    tied: tuple[str, ...]


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> Vote:
    """The answer with the most mass; `tied` lists every answer with that mass (sorted, the winner first).
    A None answer (none extracted) casts no vote; no answers at all give (None, 0.0, ())."""
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    mass: dict[str, float] = defaultdict(float)
    for k, answer in enumerate(answers):
        if answer is not None:
            mass[answer] += 1.0 if weights is None else weights[k]
    if not mass:
        return Vote(None, 0.0, ())
    top = max(mass.values())
    tied = tuple(sorted(a for a, m in mass.items() if m == top))
    return Vote(tied[0], top, tied)


def tie_credit(tied: Sequence[str], correct: Callable[[str], bool]) -> float:
    """The fraction of the tied answers that are correct (0.0 when nothing was voted for)."""
    return sum(1 for a in tied if correct(a)) / len(tied) if tied else 0.0


@dataclass(frozen=True)
class Accuracy:
    n: int
    n_correct: float

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n if self.n else 0.0


def micro_accuracy(credits: Iterable[tuple[str | None, float]]) -> dict[str, Accuracy]:
    """Accuracy per subject and over every problem (key `OVERALL`) from (subject, credit) per problem.

    Micro averaged: the overall figure is total credit over total problems, so a subject counts by its
    size. A problem without a subject counts only in the overall figure."""
    n: dict[str, int] = defaultdict(int)
    correct: dict[str, float] = defaultdict(float)
    for subject, credit in credits:
        for key in (subject, OVERALL) if subject and subject != OVERALL else (OVERALL,):
            n[key] += 1
            correct[key] += credit
    return {key: Accuracy(n[key], correct[key]) for key in n}
