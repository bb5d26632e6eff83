"""ASC's vectorised votes (f0..f3) and the accuracy-against-k curve, on crafted answer sets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rplat.methods.votes import NO_ANSWER, PADDING, accuracy_curve, accuracy_curves, answer_codes, asc_vote

A, B, C, N = 0, 1, 2, NO_ANSWER


def test_a_tie_keeps_every_tied_answer_and_earns_the_share_of_right_ones() -> None:
    got = asc_vote(np.array([[B, A, C, A, B, C]]), correct=np.array([[True, False, False, False, True, False]]))
    assert got.winner.tolist() == [A] and got.mass.tolist() == [2.0] and got.tie_size.tolist() == [3]
    assert got.margin.tolist() == [0.0]
    # the tie set, marked on the first sample of each tied answer
    assert got.tied.tolist() == [[True, True, True, False, False, False]]
    assert got.credit is not None and got.credit.tolist() == pytest.approx([1 / 3])


def test_all_missing_answers_give_no_winner_and_no_credit() -> None:
    got = asc_vote(np.array([[N, N, N]]), np.array([[0.9, 0.5, 0.1]]), "f3", np.array([[True, True, True]]))
    assert got.winner.tolist() == [N] and got.mass.tolist() == [0.0] and got.tie_size.tolist() == [0]
    assert got.margin.tolist() == [0.0] and not got.tied.any()
    assert got.credit is not None and got.credit.tolist() == [0.0]


def test_one_sample_is_its_own_winner_with_its_whole_mass_as_margin() -> None:
    got = asc_vote(np.array([[C]]), np.array([[0.25]]), "f1", np.array([[True]]))
    assert got.winner.tolist() == [C] and got.mass.tolist() == [1.5] and got.tie_size.tolist() == [1]
    assert got.margin.tolist() == [1.5]
    assert got.credit is not None and got.credit.tolist() == [1.0]


def test_each_vote_function_weighs_the_scores_as_b4_says() -> None:
    # A: two samples scored 0.25 and 0.25; B: one scored 0.75. Counts favour A; s alone favours B.
    answers, scores = np.array([[A, A, B]]), np.array([[0.25, 0.25, 0.75]])
    votes = {f: asc_vote(answers, scores, f) for f in ("f0", "f1", "f2", "f3")}
    assert {f: (v.winner[0], v.mass[0], v.margin[0]) for f, v in votes.items()} == {
        "f0": (A, 2.0, 1.0), "f1": (A, 3.0, 0.5), "f2": (A, 2.5, 0.75), "f3": (B, 0.75, 0.25)}


def test_f3_lets_a_zero_score_cast_no_weight() -> None:
    got = asc_vote(np.array([[A, A, B], [A, B, B]]), np.array([[0.0, 0.0, 0.125], [0.0, 0.0, 0.0]]), "f3",
                   np.array([[True, True, False], [True, False, False]]))
    # problem 0: two zero-scored votes lose to one scored 0.125; problem 1: every answer weighs 0, so all tie
    assert got.winner.tolist() == [B, A] and got.mass.tolist() == [0.125, 0.0]
    assert got.tie_size.tolist() == [1, 2] and got.margin.tolist() == [0.125, 0.0]
    assert got.credit is not None and got.credit.tolist() == [0.0, 0.5]


def test_an_answer_is_as_correct_as_the_first_sample_that_gave_it() -> None:
    got = asc_vote(np.array([[B, A, A]]), correct=np.array([[False, False, True]]))
    assert got.winner.tolist() == [A] and got.credit is not None and got.credit.tolist() == [0.0]


def test_f0_agrees_with_a_plain_count_on_random_answer_sets() -> None:
    rng = np.random.default_rng(3)
    answers = rng.integers(-1, 4, size=(300, 6))
    correct = rng.random((300, 6)) < 0.5
    got = asc_vote(answers, correct=correct)
    assert got.credit is not None
    for i, row in enumerate(answers.tolist()):
        counts = Counter(a for a in row if a != N)
        top = max(counts.values(), default=0)
        tied = sorted(a for a, count in counts.items() if count == top)
        assert (got.winner[i], got.mass[i], got.tie_size[i]) == (tied[0] if tied else N, top, len(tied))
        right = [a for a in tied if correct[i, row.index(a)]]  # an answer is as right as its first sample
        assert got.credit[i] == pytest.approx(len(right) / len(tied) if tied else 0.0)


def test_answer_codes_follow_sorted_answers_and_pad_with_padding() -> None:
    codes, vocabulary = answer_codes([["7", None, "12"], ["12"]])
    assert vocabulary == ["12", "7"] and codes.tolist() == [[1, N, 0], [0, PADDING, PADDING]]


def test_scores_are_required_for_a_score_weighted_vote() -> None:
    with pytest.raises(ValueError, match="f2 weighs samples by their ranker scores"):
        asc_vote(np.array([[A]]), None, "f2")


# --- the accuracy-against-k curve ---------------------------------------------------------------------------

ANSWERS = np.array([[A, A, B, N], [B, A, A, C], [C, C, C, A]])
CORRECT = np.array([[A], [B], [A]]) == ANSWERS  # the gold answers A, B, A
SCORES = np.array([[0.25, 0.125, 0.875, 0.5], [0.875, 0.25, 0.125, 0.5], [0.125, 0.125, 0.25, 0.875]])


def test_the_curve_at_k_equal_n_is_the_vote_over_all_samples() -> None:
    for f in ("f0", "f3"):
        full = asc_vote(ANSWERS, SCORES, f, CORRECT)
        assert full.credit is not None
        assert accuracy_curve(ANSWERS, CORRECT, SCORES, [4], repeats=3, seed=1, f=f).tolist() == [full.credit.mean()]
    # f0: A wins problem 0 (1), A beats B on problem 1 (0), C wins problem 2 (0); f3: B, B, A win: 0, 1, 1
    assert accuracy_curve(ANSWERS, CORRECT, SCORES, [4], f="f0").tolist() == pytest.approx([1 / 3])
    assert accuracy_curve(ANSWERS, CORRECT, SCORES, [4], f="f3").tolist() == pytest.approx([2 / 3])


def test_one_sample_scores_the_same_under_every_vote_function_on_the_same_subsets() -> None:
    curves = accuracy_curves(ANSWERS, CORRECT, SCORES, [1], repeats=7, seed=5, fs=["f0", "f1", "f3"])
    assert curves["f0"].tolist() == curves["f1"].tolist() == curves["f3"].tolist()
    assert curves["f3"].tolist() == accuracy_curve(ANSWERS, CORRECT, SCORES, [1], repeats=7, seed=5, f="f3").tolist()


def test_the_curve_at_k_1_estimates_the_share_of_right_samples_and_is_seeded() -> None:
    first = accuracy_curve(ANSWERS, CORRECT, SCORES, [1], repeats=400, seed=2, f="f2")
    assert first.tolist() == accuracy_curve(ANSWERS, CORRECT, SCORES, [1], repeats=400, seed=2, f="f2").tolist()
    assert first[0] == pytest.approx(CORRECT.mean(), abs=0.05)  # (2/4 + 1/4 + 1/4) / 3


def test_a_k_beyond_the_samples_is_refused() -> None:
    with pytest.raises(ValueError, match=r"every k must lie in 1\.\.4"):
        accuracy_curve(ANSWERS, CORRECT, SCORES, [5])
