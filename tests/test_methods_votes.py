"""Votes over sampled answers and micro accuracy, checked against hand-computed numbers."""

from __future__ import annotations

import pytest

from rplat.methods.votes import OVERALL, Accuracy, Vote, micro_accuracy, tie_credit, vote


def test_the_majority_answer_wins_and_a_missing_answer_casts_no_vote() -> None:
    assert vote(["7", "8", "7", None]) == Vote("7", 2.0, ("7",))


def test_one_sample_is_its_own_winner() -> None:
    assert vote(["42"]) == Vote("42", 1.0, ("42",))


def test_all_missing_answers_give_no_winner_and_no_credit() -> None:
    result = vote([None, None, None])
    assert result == Vote(None, 0.0, ())
    assert tie_credit(result.tied, lambda a: True) == 0.0


def test_a_four_way_tie_with_two_correct_answers_earns_half_a_problem() -> None:
    result = vote(["7", "8", "9", "10", "10", "9", "8", "7"])
    assert result.mass == 2.0 and result.tied == ("10", "7", "8", "9") and result.winner == "10"
    assert tie_credit(result.tied, lambda a: a in {"7", "9"}) == 0.5


def test_weights_decide_the_winner_over_counts() -> None:
    # "a" has one vote of weight 0.9; "b" has two votes weighing 0.3 + 0.4 = 0.7.
    assert vote(["a", "b", "b"], [0.9, 0.3, 0.4]) == Vote("a", 0.9, ("a",))


def test_weights_must_match_the_answers() -> None:
    with pytest.raises(ValueError, match="3 answers but 2 weights"):
        vote(["a", "b", "c"], [1.0, 1.0])


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
