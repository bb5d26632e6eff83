"""Leak detection's overlap measure on crafted (preceding, rationale, following) triples."""

from __future__ import annotations

import pytest

from rplat.methods.leaks import LEAK_THRESHOLD, is_leak, overlap, words

PRECEDING = "The first season of Survivor was filmed in Borneo."
FOLLOWING = "Sonja Christopher, the first player voted off, received $2,500."
# Bigrams of FOLLOWING the preceding text does not hold ("the first" it does): 7.
COPY = "SONJA CHRISTOPHER - the first player voted off - received 2,500 dollars"
PARAPHRASE = "The earliest castaway sent home, Sonja, was paid 2500."
REAL = "Next the text will say what the eliminated players were paid."


def test_words_ignore_case_punctuation_and_number_formatting() -> None:
    assert words("Don't PAY $1,000.00 (or 1000)! 0.50; 12*3=36.") == [
        "dont", "pay", "1000", "or", "1000", "0.5", "12", "3", "36"]


def test_a_copy_with_other_case_punctuation_and_number_format_overlaps_fully() -> None:
    assert overlap(PRECEDING, COPY, FOLLOWING) == 1.0
    assert is_leak(overlap(PRECEDING, COPY, FOLLOWING), LEAK_THRESHOLD)


def test_one_changed_word_costs_the_two_bigrams_it_is_in() -> None:
    near_copy = "Sonja Christopher, the first player voted out, received $2,500."
    assert overlap(PRECEDING, near_copy, FOLLOWING) == pytest.approx(5 / 7)


def test_a_paraphrase_shares_no_bigram_and_is_not_a_leak() -> None:
    assert overlap(PRECEDING, PARAPHRASE, FOLLOWING) == 0.0
    assert not is_leak(overlap(PRECEDING, PARAPHRASE, FOLLOWING), LEAK_THRESHOLD)


def test_a_real_rationale_is_not_a_leak() -> None:
    assert overlap(PRECEDING, REAL, FOLLOWING) == 0.0
    assert not is_leak(overlap(PRECEDING, REAL, FOLLOWING), LEAK_THRESHOLD)


def test_bigrams_the_preceding_text_holds_are_no_leak() -> None:
    # The answer line restates a number the solution already computed: nothing came from the future.
    assert overlap("So he earns 2340 * 12 = 28080 a year.", "The answer is 28080.", "#### 28080") == 0.0
    assert overlap("So he earns 2340 * 12 a year.", "The answer is 28080.", "#### 28080") == 1.0


def test_repeated_bigrams_of_the_following_text_count_every_time() -> None:
    # 7 bigram occurrences, "nhl games" twice; the rationale says 3 distinct bigrams, 4 occurrences.
    assert overlap("", "play over 500 NHL games", "over 500 NHL games and 1000 NHL games") == pytest.approx(4 / 7)


def test_an_empty_following_text_has_no_overlap() -> None:
    assert overlap(PRECEDING, COPY, " ... ") == 0.0


def test_a_threshold_above_one_marks_no_leak() -> None:
    assert is_leak(1.0, 1.0) and not is_leak(1.0, 1.01) and not is_leak(0.39, 0.4)
