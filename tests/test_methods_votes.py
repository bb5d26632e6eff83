"""Votes over sampled answers and micro accuracy, checked against hand-computed numbers."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pytest

from rplat.methods.votes import OVERALL, Accuracy, Consensus, asc_vote, micro_accuracy, self_consistency


def sc(answers: list[str | None], right: Collection[str] = ()) -> Consensus:
    """Self-consistency of one problem whose right answers are `right`."""
    (got,) = self_consistency([answers], [[a in right for a in answers]])
    return got


def test_the_majority_answer_wins_and_a_missing_answer_casts_no_vote() -> None:
    assert sc(["7", "8", "7", None], {"7"}) == Consensus("7", 2.0, ("7",), 1.0, 1.0)


def test_one_sample_is_its_own_winner() -> None:
    assert sc(["42"]) == Consensus("42", 1.0, ("42",), 0.0, 1.0)


def test_all_missing_answers_give_no_winner_and_no_credit() -> None:
    assert self_consistency([[None, None, None]], [[True, True, True]]) == [Consensus(None, 0.0, (), 0.0, 0.0)]


def test_a_four_way_tie_with_two_correct_answers_earns_half_a_problem() -> None:
    result = sc(["7", "8", "9", "10", "10", "9", "8", "7"], {"7", "9"})
    assert result.mass == 2.0 and result.tied == ("10", "7", "8", "9") and result.winner == "10"
    assert result.credit == 0.5 and result.margin == 0.0


def test_a_tied_answer_is_as_correct_as_the_first_sample_that_gave_it() -> None:
    # "3" ties "4"; the first "3" is labelled wrong, the second right: the answer counts as wrong.
    assert self_consistency([["3", "4", "3", "4"]], [[False, True, True, True]])[0].credit == 0.5


def test_a_three_way_tie_earns_a_third_and_each_problem_votes_alone() -> None:
    got = self_consistency([["a", "b", "c"], ["x", "x", None]], [[True, False, False], [False, False, False]])
    assert got[0] == Consensus("a", 1.0, ("a", "b", "c"), 1 / 3, 0.0)
    assert got[1] == Consensus("x", 2.0, ("x",), 0.0, 2.0)
    assert self_consistency([], []) == []


def test_correctness_must_match_the_answers() -> None:
    with pytest.raises(ValueError, match="one correctness per answer"):
        self_consistency([["a", "b", "c"]], [[True, True]])


def test_weights_decide_the_winner_over_counts() -> None:
    # "a" (code 0) has one vote of weight 0.9; "b" (code 1) has two votes weighing 0.3 + 0.4 = 0.7.
    got = asc_vote(np.array([[0, 1, 1]]), np.array([[0.9, 0.3, 0.4]]), "f3")
    assert (got.winner.tolist(), got.mass.tolist(), got.tie_size.tolist()) == ([0], [0.9], [1])


def test_weights_must_match_the_answers() -> None:
    with pytest.raises(ValueError, match=r"scores of shape \(1, 2\) for answers of shape \(1, 3\)"):
        asc_vote(np.array([[0, 1, 2]]), np.array([[1.0, 1.0]]), "f3")


def test_accuracy_is_micro_averaged_over_uneven_subjects() -> None:
    got = micro_accuracy([("algebra", 1.0), ("algebra", 1.0), ("algebra", 0.0), ("geometry", 0.5)])
    assert set(got) == {"algebra", "geometry", OVERALL}
    assert got["algebra"] == Accuracy(3, 2.0) and got["algebra"].accuracy == pytest.approx(2 / 3)
    assert got["geometry"] == Accuracy(1, 0.5) and got["geometry"].accuracy == 0.5
    # Micro: 2.5 credits over 4 problems = 0.625; the macro mean of the subjects would be (2/3 + 1/2) / 2 = 0.583.
    assert got[OVERALL] == Accuracy(4, 2.5) and got[OVERALL].accuracy == 0.625


def test_a_problem_without_a_subject_counts_only_overall() -> None:
    got = micro_accuracy([("algebra", 1.0), (None, 0.0)])
    assert got == {"algebra": Accuracy(1, 1.0), OVERALL: Accuracy(2, 1.0)}


def test_no_problems_give_no_accuracy() -> None:
    assert micro_accuracy([]) == {}
    assert Accuracy(0, 0.0).accuracy == 0.0
