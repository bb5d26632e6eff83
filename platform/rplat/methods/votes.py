"""Votes over sampled answers (self-consistency; ASC adds weights) and micro accuracy per subject.

A vote gives every answer its weight (1 for self-consistency) and returns the answers with the most mass.
When several answers tie, a problem earns the fraction of the tied answers that are correct: the expected
accuracy of breaking the tie at random, which is what the papers' tables report.

`asc_vote` is the rule over a batch of problems x samples of integer answer codes (-1: no answer, -2: padding;
`answer_codes` makes them), with ASC's vote functions (B4) f0 = 1 (plain self-consistency), f1 = 1 + 2s,
f2 = 1 + s, f3 = s of each sample's ranker score s; `asc_votes` runs several of them on one grouping of the
answers. `self_consistency` is its f0 over answer strings, the one self-consistency every job uses, so SC and
ASC's f0 cannot drift apart. Every vote takes `unanswered`: "vote" (the authors' protocol) makes the samples
without an answer one bucket that can win or tie, "drop" gives them no vote. `accuracy_curve` is the paper's
accuracy against the number of samples k, by repeated subsampling of k of the n samples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

OVERALL = "all"
NO_ANSWER = -1
# The code of a padding slot (a problem with fewer samples than the batch's width): no sample, never a vote.
PADDING = -2
# What a sample without an extracted answer does in a vote: "vote" (the authors' ASC protocol, B4) makes the
# unanswered samples one bucket of their own, which can win (the prediction is then no answer, credit 0) or join
# a tie (counted in its size, never right); "drop" (common self-consistency practice) gives them no vote.
Unanswered = Literal["vote", "drop"]
UNANSWERED: tuple[Unanswered, ...] = ("vote", "drop")
VOTE_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "f0": np.ones_like,
    "f1": lambda s: 1 + 2 * s,
    "f2": lambda s: 1 + s,
    "f3": lambda s: s,
}
# Masses summed in another order differ in the last bits; answers within this relative distance tie, so a tie
# does not depend on summation order (integer counts, f0, never come this close without being equal).
TIE_TOLERANCE = 1e-9


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


def answer_codes(answers: Sequence[Sequence[str | None]], width: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Integer codes of problems' answers (NO_ANSWER for None), a row per problem padded with PADDING to `width`
    (default: the longest row), and the vocabulary they index. Codes follow the answers' sorted order, so the
    winner of a tie, its smallest code, is the first of the tied answers in sorted order."""
    lengths = np.fromiter((len(row) for row in answers), dtype=np.int64, count=len(answers))
    longest = int(lengths.max(initial=0))
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width {width} is less than the longest row's {longest} answers")
    # One pass numbers the answers in order of appearance; a lookup table then turns those numbers into ranks.
    seen: dict[str | None, int] = {None: 0}
    order = np.fromiter((seen.setdefault(a, len(seen)) for row in answers for a in row), dtype=np.int64,
                        count=int(lengths.sum()))
    vocabulary = sorted(a for a in seen if a is not None)
    rank = np.full(len(seen), NO_ANSWER, dtype=np.int64)
    rank[[seen[a] for a in vocabulary]] = np.arange(len(vocabulary))
    codes = np.full((len(answers), width), PADDING, dtype=np.int64)
    codes[np.arange(width) < lengths[:, None]] = rank[order]
    return codes, vocabulary


def vote_weights(f: str, scores: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """Each sample's vote under vote function `f` (f0..f3) of its ranker score; f0 needs no scores."""
    if f not in VOTE_FUNCTIONS:
        raise ValueError(f"unknown vote function {f!r}; one of {', '.join(VOTE_FUNCTIONS)}")
    if f == "f0":
        return np.ones(shape)
    if scores is None:
        raise ValueError(f"vote function {f} weighs samples by their ranker scores; none were given")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != shape:
        raise ValueError(f"scores of shape {scores.shape} for answers of shape {shape}")
    return VOTE_FUNCTIONS[f](scores)


@dataclass(frozen=True)
class Votes:
    """Per problem of a batch: the winner's code (NO_ANSWER when no sample answered or the no-answer bucket won),
    its mass, the size of the tie set (0 when nothing voted; the no-answer bucket counts in it when it votes),
    the margin (winner mass - best other answer's mass; 0 on a tie, the whole mass when one answer got votes),
    the tie set as a mask over samples (True on the first sample that gave
    each tied answer) and, when correctness was given, the credit |correct & tied| / |tied|."""

    winner: np.ndarray
    mass: np.ndarray
    tie_size: np.ndarray
    margin: np.ndarray
    tied: np.ndarray
    credit: np.ndarray | None


@dataclass(frozen=True)
class _Answers:
    """A batch's answers grouped once for any number of votes: per distinct answer of each problem (a group),
    its code, its problem, the flat index of the first sample that gave it, and where each problem's groups
    start."""

    shape: tuple[int, int]
    order: np.ndarray  # flat sample indexes, each problem's samples sorted by answer
    first: np.ndarray  # position in `order` of each group's first sample
    code: np.ndarray
    problem: np.ndarray
    sample: np.ndarray
    answered: np.ndarray
    problem_start: np.ndarray


def _group(answers: np.ndarray) -> _Answers:
    answers = np.asarray(answers, dtype=np.int64)
    if answers.ndim != 2 or answers.shape[1] == 0:
        raise ValueError(f"answers must be problems x samples with at least one sample, got shape {answers.shape}")
    n_problems, n_samples = answers.shape
    # Sorting each row makes every answer one run of equal codes; a stable sort puts the run's lowest sample
    # index first, which is the sample whose correctness the answer takes.
    order = (np.argsort(answers, axis=1, kind="stable") + np.arange(n_problems)[:, None] * n_samples).ravel()
    codes = answers.ravel()[order]
    starts = np.empty(codes.shape, dtype=bool)
    np.not_equal(codes[1:], codes[:-1], out=starts[1:])
    starts[::n_samples] = True
    first = np.flatnonzero(starts)
    code = codes[first]
    problem = first // n_samples
    return _Answers((n_problems, n_samples), order, first, code, problem, order[first], code >= 0,
                    np.flatnonzero(np.r_[True, problem[1:] != problem[:-1]]))


def check_unanswered(unanswered: str) -> None:
    if unanswered not in UNANSWERED:
        raise ValueError(f"unknown unanswered setting {unanswered!r}; one of {', '.join(UNANSWERED)}")


def _vote(g: _Answers, weights: np.ndarray, correct: np.ndarray | None, unanswered: Unanswered) -> Votes:
    n_groups = len(g.first)
    voting = g.answered if unanswered == "drop" else g.code != PADDING
    mass = np.where(voting, np.add.reduceat(weights.ravel()[g.order], g.first), -np.inf)
    top = np.maximum.reduceat(mass, g.problem_start)
    has = np.isfinite(top)
    in_tie = voting & (mass >= (top - TIE_TOLERANCE * np.maximum(1.0, np.abs(top)))[g.problem])
    tie_size = np.add.reduceat(in_tie.astype(np.int64), g.problem_start)
    # Codes ascend within a problem's groups, so its first tied answer holds the smallest tied code; the
    # no-answer bucket (a lower code) wins only when no answer ties with it.
    # One pass: a tied answer keys as its group, the tied no-answer bucket after every answer, the rest last.
    key = np.arange(n_groups) + np.where(in_tie, np.where(g.answered, 0, n_groups), 2 * n_groups)
    winner_group = np.minimum.reduceat(key, g.problem_start)
    winner_group = np.minimum(np.where(winner_group >= n_groups, winner_group - n_groups, winner_group),
                              n_groups - 1)
    others = mass.copy()
    others[winner_group[has]] = -np.inf
    second = np.maximum.reduceat(others, g.problem_start)
    top = np.where(has, top, 0.0)
    margin = np.where(tie_size > 1, 0.0, np.where(np.isfinite(second), top - second, top))
    tied = np.zeros(g.shape[0] * g.shape[1], dtype=bool)
    tied[g.sample[in_tie]] = True
    credit = None
    if correct is not None:
        right = (in_tie & g.answered & correct.ravel()[g.sample]).astype(np.float64)
        credit = np.add.reduceat(right, g.problem_start) / np.maximum(tie_size, 1)
    return Votes(np.where(has, g.code[winner_group], NO_ANSWER), top, tie_size, np.where(has, margin, 0.0),
                 tied.reshape(g.shape), credit)


def _correctness(correct: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if correct is None:
        return None
    correct = np.asarray(correct, dtype=bool)
    if correct.shape != shape:
        raise ValueError(f"correctness of shape {correct.shape} for answers of shape {shape}")
    return correct


def asc_votes(answers: np.ndarray, scores: np.ndarray | None, fs: Sequence[str],
              correct: np.ndarray | None = None, unanswered: Unanswered = "drop") -> dict[str, Votes]:
    """`asc_vote` under each vote function of `fs`, grouping the answers once for all of them."""
    check_unanswered(unanswered)
    g = _group(answers)
    right = _correctness(correct, g.shape)
    return {f: _vote(g, vote_weights(f, scores, g.shape), right, unanswered) for f in fs}


def asc_vote(answers: np.ndarray, scores: np.ndarray | None = None, f: str = "f0",
             correct: np.ndarray | None = None, unanswered: Unanswered = "drop") -> Votes:
    """The vote over a batch: answers (problems x samples, integer codes; PADDING casts no vote, NO_ANSWER as
    `unanswered` says: "drop" casts no vote, "vote" makes it a bucket of its own), scores in [0, 1] of the
    same shape (for f1..f3), and optionally each sample's correctness; an answer is as correct as the first
    sample that gave it, the no-answer bucket never."""
    return asc_votes(answers, scores, [f], correct, unanswered)[f]


class Consensus(NamedTuple):
    """One problem's self-consistency: the answer most samples gave (None when no sample answered, or when the
    no-answer bucket won a vote that counts it), its vote count, every answer with that count (sorted, the
    winner first, None last when the no-answer bucket ties; none without votes), the credit (the share of the
    tied answers that are right) and the margin over the next answer (0 on a tie, the whole count when one
    answer got votes)."""

    winner: str | None
    mass: float
    tied: tuple[str | None, ...]
    credit: float
    margin: float


def tied_answers(codes: np.ndarray, tied: np.ndarray, vocabulary: Sequence[str]) -> tuple[str | None, ...]:
    """One problem's tie set as answers, from its samples' codes and a vote's `tied` mask over them (`Votes.tied`):
    the tied answers in code order, then None when the no-answer bucket is among them."""
    found = sorted(np.asarray(codes)[np.asarray(tied, dtype=bool)].tolist())
    return tuple(vocabulary[c] for c in found if c >= 0) + ((None,) if found and found[0] == NO_ANSWER else ())


def self_consistency(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]],
                     unanswered: Unanswered = "drop") -> list[Consensus]:
    """Each problem's self-consistency over its samples' answers (None: none extracted; `unanswered` says
    whether those samples cast no vote or vote as one bucket), given each sample's correctness: an answer is as
    correct as the first sample that gave it. This is `asc_vote` with f0 = 1 on the answers' codes, so a vote
    of equal weights has one implementation."""
    if len(correct) != len(answers) or any(len(a) != len(c) for a, c in zip(answers, correct, strict=True)):
        raise ValueError("give one correctness per answer, problem by problem")
    if not answers:
        return []
    codes, vocabulary = answer_codes(answers, max(1, max(len(row) for row in answers)))
    right = np.zeros(codes.shape, dtype=bool)
    for i, row in enumerate(correct):
        right[i, :len(row)] = row
    votes = asc_vote(codes, None, "f0", right, unanswered)
    assert votes.credit is not None
    return [Consensus(None if winner == NO_ANSWER else vocabulary[winner], mass,
                      tied_answers(codes[i], votes.tied[i], vocabulary), credit, margin)
            for i, (winner, mass, credit, margin) in enumerate(zip(
                votes.winner.tolist(), votes.mass.tolist(), votes.credit.tolist(), votes.margin.tolist(),
                strict=True))]


def accuracy_curves(answers: np.ndarray, correct: np.ndarray, scores: np.ndarray | None = None,
                    ks: Sequence[int] | None = None, repeats: int = 20, seed: int = 0,
                    fs: Sequence[str] = ("f0",), unanswered: Unanswered = "drop") -> dict[str, np.ndarray]:
    """Mean accuracy (credit per problem, micro-averaged) of voting with each of `fs` over k of each problem's
    n samples, for each k in `ks` (default 1..n), averaged over `repeats` random subsets per problem drawn with
    `seed`.

    A repeat draws one random order of each problem's samples and its first k make the subset of every k, so
    the subsets are nested, and every vote function votes on the same subsets (paired curves; the same seed
    gives the same subsets in another call too)."""
    answers = np.asarray(answers, dtype=np.int64)
    n_problems, n_samples = answers.shape
    ks = list(range(1, n_samples + 1)) if ks is None else list(ks)
    if any(not 1 <= k <= n_samples for k in ks):
        raise ValueError(f"every k must lie in 1..{n_samples}, got {ks}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    correct = np.asarray(correct, dtype=bool)
    scores = None if scores is None else np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    total = {f: np.zeros(len(ks)) for f in fs}
    for _ in range(repeats):
        order = np.argsort(rng.random(answers.shape), axis=1)
        for i, k in enumerate(ks):
            # Sorted back into sample order, so "the first sample that gave an answer" means the same as in asc_vote.
            pick = np.sort(order[:, :k], axis=1)
            votes = asc_votes(np.take_along_axis(answers, pick, axis=1),
                              None if scores is None else np.take_along_axis(scores, pick, axis=1), fs,
                              np.take_along_axis(correct, pick, axis=1), unanswered)
            for f, result in votes.items():
                assert result.credit is not None
                total[f][i] += result.credit.mean() if n_problems else 0.0
    return {f: t / repeats for f, t in total.items()}


def accuracy_curve(answers: np.ndarray, correct: np.ndarray, scores: np.ndarray | None = None,
                   ks: Sequence[int] | None = None, repeats: int = 20, seed: int = 0, f: str = "f0",
                   unanswered: Unanswered = "drop") -> np.ndarray:
    """`accuracy_curves` of one vote function `f`."""
    return accuracy_curves(answers, correct, scores, ks, repeats, seed, [f], unanswered)[f]
