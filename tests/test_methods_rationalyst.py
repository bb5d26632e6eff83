"""RATIONALYST's pure methods (A3 parsing and fidelity, A4 loss delta) by hand."""

from __future__ import annotations

import math

import pytest

from rplat.methods.loss_delta import discounted_sum, loss_delta, scoring_contexts, spans_nonempty
from rplat.methods.rationales import Triple, fidelity, parse_triples, strip_rationales

WELL_FORMED = "A cat sat. <BOT>cats like mats<EOT> It purred. <BOT>it is content<EOT> The end."


def test_triples_take_all_earlier_text_as_preceding_and_one_span_as_following() -> None:
    assert parse_triples(WELL_FORMED) == [
        Triple(1, "A cat sat.", "cats like mats", "It purred.", 2),
        Triple(2, "A cat sat. It purred.", "it is content", "The end.", 1),
    ]


def test_rationale_without_end_marker_is_dropped() -> None:
    triples = parse_triples("One. <BOT>closed<EOT> Two. <BOT>never closed")
    assert [t.rationale for t in triples] == ["closed"]
    assert triples[0].following == "Two."


def test_nested_begin_marker_abandons_the_open_rationale() -> None:
    triples = parse_triples("x <BOT> outer <BOT> inner <EOT> y")
    assert triples == [Triple(1, "x", "inner", "y", 1)]


def test_stray_end_marker_is_ignored_as_text() -> None:
    assert strip_rationales("a <EOT>b") == "a b"
    assert parse_triples("a <EOT>b") == []


def test_empty_spans_are_kept_as_empty_strings() -> None:
    triples = parse_triples("<BOT><EOT><BOT>r<EOT>")
    assert triples == [Triple(1, "", "", "", 2), Triple(2, "", "r", "", 1)]


def test_fidelity_ignores_spaces_newlines_and_rationales() -> None:
    assert fidelity("A cat sat.\nIt purred. The end.", WELL_FORMED) == 1.0


def test_fidelity_is_one_minus_edit_distance_over_original_length() -> None:
    original = "abcdefghij"  # 10 characters; the output changes one and drops one
    assert fidelity(original, "abcXefghi<BOT>r<EOT>") == pytest.approx(1 - 2 / 10)


def test_discounted_sum_weights_tokens_by_powers_of_gamma_from_zero() -> None:
    assert discounted_sum([-1.0, -2.0, -3.0], gamma=0.9) == pytest.approx(-1.0 - 0.9 * 2.0 - 0.81 * 3.0)
    assert discounted_sum([-1.0], gamma=0.9, start=1) == pytest.approx(-0.9)


def test_loss_delta_keeps_a_rationale_that_raises_the_likelihood_by_at_least_tau() -> None:
    without = [math.log(0.2), math.log(0.1)]
    with_ = [math.log(0.4), math.log(0.3)]
    expected = (math.log(0.4) - math.log(0.2)) + 0.9 * (math.log(0.3) - math.log(0.1))
    result = loss_delta(without, with_, tau=1.2)
    assert result.delta == pytest.approx(expected)
    assert result.kept == (expected >= 1.2)
    assert loss_delta(without, with_, tau=expected + 1e-9).kept is False
    assert loss_delta(without, with_, tau=expected - 1e-9).kept is True


def test_loss_delta_never_keeps_empty_spans() -> None:
    assert loss_delta([-1.0], [-0.1], spans_nonempty=False).kept is False
    assert loss_delta([], []).kept is False


def test_loss_delta_refuses_scorings_of_different_tokens() -> None:
    with pytest.raises(ValueError, match="different tokens"):
        loss_delta([-1.0], [-1.0, -2.0])


def test_the_following_text_is_scored_after_the_preceding_text_without_then_with_the_rationale() -> None:
    without, with_ = scoring_contexts("Predict the text.", "Tom has 3 apples", "he will count them")
    assert without == [{"role": "system", "content": "Predict the text."},
                       {"role": "user", "content": "Tom has 3 apples"}]
    assert with_ == [{"role": "system", "content": "Predict the text."},
                     {"role": "user", "content": "Tom has 3 apples. he will count them"}]


def test_a_span_of_only_white_space_counts_as_empty() -> None:
    assert spans_nonempty("Tom has 3.", "count", "He buys 4.")
    assert not spans_nonempty("Tom has 3.", " \n", "He buys 4.")
    assert not spans_nonempty("", "count", "He buys 4.")
    assert not spans_nonempty("Tom has 3.", "count", "")
