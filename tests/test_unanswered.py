"""Unanswered samples in a vote (issue 18 item 2): `unanswered="vote"` against a literal transcription of the
authors' ASC vote, where a sample without an answer is the bucket None, and "drop" against the same vote
without that bucket (rplat's behaviour before the setting existed)."""

from __future__ import annotations

import numpy as np
import pytest

from rplat.methods.votes import NO_ANSWER, asc_votes, self_consistency, vote_weights

WEIGHTS = {"f0": lambda s: 1.0, "f1": lambda s: 1 + 2 * s, "f2": lambda s: 1 + s, "f3": lambda s: s}


def authors_vote(answers: list[int | None], scores: list[float], correct: list[bool], f: str,
                 count_none: bool) -> tuple[int | None, float, int, float] | None:
    """One problem, as ASC.py votes: a dict of answer -> summed weight, None a key like any answer (or left out),
    the maximum, the answers at it (a tie; the credit is the share of them that are right, None never right).
    Returns (prediction, mass, tie size, credit), the prediction the first tied answer in sorted order and None
    only when None ties alone; None when nothing voted."""
    mass: dict[int | None, float] = {}
    first: dict[int | None, int] = {}
    for i, (answer, score) in enumerate(zip(answers, scores, strict=True)):
        if answer is None and not count_none:
            continue
        mass[answer] = mass.get(answer, 0.0) + WEIGHTS[f](score)
        first.setdefault(answer, i)
    if not mass:
        return None
    top = max(mass.values())
    tied = [a for a, m in mass.items() if m == top]
    right = [a for a in tied if a is not None and correct[first[a]]]
    answered = sorted(a for a in tied if a is not None)
    return (answered[0] if answered else None), top, len(tied), len(right) / len(tied)


def _batch(rng: np.random.Generator, n_problems: int, n_samples: int, n_answers: int, dyadic: bool
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    answers = rng.integers(-1, n_answers, size=(n_problems, n_samples))
    # quarters sum exactly in any order, so ties are common and exact; uniform scores almost never tie
    scores = (rng.integers(0, 5, size=answers.shape) / 4 if dyadic else rng.random(answers.shape)).astype(np.float64)
    return answers, scores, rng.random(answers.shape) < 0.4


@pytest.mark.parametrize("unanswered", ["vote", "drop"])
@pytest.mark.parametrize("seed", range(6))
def test_asc_votes_match_the_authors_vote_with_none_as_an_answer(unanswered: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    compared = 0
    for n_problems, n_samples, n_answers in [(1, 1, 1), (7, 2, 2), (40, 4, 2), (30, 8, 4), (25, 16, 6), (5, 32, 3)]:
        for dyadic in (True, False):
            answers, scores, correct = _batch(rng, n_problems, n_samples, n_answers, dyadic)
            got = asc_votes(answers, scores, list(WEIGHTS), correct, unanswered)  # type: ignore[arg-type]
            for f, votes in got.items():
                assert votes.credit is not None
                for i in range(n_problems):
                    row = [None if a == NO_ANSWER else int(a) for a in answers[i]]
                    want = authors_vote(row, scores[i].tolist(), correct[i].tolist(), f, unanswered == "vote")
                    if want is None:  # only under drop, when no sample answered
                        assert (votes.winner[i], votes.mass[i], votes.tie_size[i], votes.credit[i]) == (
                            NO_ANSWER, 0.0, 0, 0.0)
                        continue
                    winner, mass, tie_size, credit = want
                    assert votes.winner[i] == (NO_ANSWER if winner is None else winner), (f, row)
                    assert votes.mass[i] == pytest.approx(mass, rel=1e-12)
                    assert votes.tie_size[i] == tie_size, (f, row, scores[i])
                    assert votes.credit[i] == pytest.approx(credit, rel=1e-12)
                    compared += 1
    assert compared > 500  # most problems have an answer or, under "vote", the no-answer bucket


def test_the_no_answer_bucket_wins_and_ties_only_when_it_votes() -> None:
    # problem 0: two unanswered samples outvote one each for answers 0 and 1; problem 1: it ties with 0 and 1
    answers = np.array([[NO_ANSWER, NO_ANSWER, 0, 1], [NO_ANSWER, 0, 1, 2]])
    correct = np.array([[False, False, True, False], [False, True, False, False]])
    scores = np.full(answers.shape, 0.5)
    weights = vote_weights("f3", scores, answers.shape)
    assert weights.tolist() == scores.tolist()
    vote = asc_votes(answers, scores, ["f3"], correct, "vote")["f3"]
    assert vote.winner.tolist() == [NO_ANSWER, 0] and vote.tie_size.tolist() == [1, 4]
    assert vote.credit is not None and vote.credit.tolist() == [0.0, 0.25]
    drop = asc_votes(answers, scores, ["f3"], correct, "drop")["f3"]
    assert drop.winner.tolist() == [0, 0] and drop.tie_size.tolist() == [2, 3]
    assert drop.credit is not None and drop.credit.tolist() == [0.5, 1 / 3]


@pytest.mark.parametrize("unanswered", ["vote", "drop"])
def test_self_consistency_over_strings_matches_the_authors_count_with_ragged_rows(unanswered: str) -> None:
    """Rows of different lengths are padded inside; padding never votes, whatever `unanswered` says."""
    rng = np.random.default_rng(11)
    vocabulary = ["1", "2", "10", "x", None]
    for _ in range(300):
        rows = [[vocabulary[k] for k in rng.integers(0, len(vocabulary), size=rng.integers(1, 9))]
                for _ in range(int(rng.integers(1, 6)))]
        correct = [[a == "2" for a in row] for row in rows]
        got = self_consistency(rows, correct, unanswered)  # type: ignore[arg-type]
        for row, right, c in zip(rows, correct, got, strict=True):
            codes = [None if a is None else sorted(set(x for r in rows for x in r if x is not None)).index(a)
                     for a in row]
            want = authors_vote(codes, [0.0] * len(row), right, "f0", unanswered == "vote")
            if want is None:
                assert (c.winner, c.mass, c.tied, c.credit) == (None, 0.0, (), 0.0)
                continue
            winner, mass, tie_size, credit = want
            names = sorted(set(x for r in rows for x in r if x is not None))
            assert c.winner == (None if winner is None else names[winner])
            assert (c.mass, len(c.tied), c.credit) == (mass, tie_size, pytest.approx(credit))
            assert (None in c.tied) == (unanswered == "vote" and row.count(None) == mass)


def test_an_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown unanswered setting 'keep'"):
        asc_votes(np.array([[0]]), None, ["f0"], None, "keep")  # type: ignore[arg-type]
