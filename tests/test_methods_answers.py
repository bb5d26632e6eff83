"""Answer extraction and checking: boxed, GSM8K ####, "The answer is", math-verify."""

from __future__ import annotations

import pytest

from rplat.methods.answers import extract_answer, has_final_answer, is_correct, normalize


@pytest.mark.parametrize(("text", "answer"), [
    ("12 * 3 = 36\n#### 36", "36"),
    ("So x = \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("He ends with 44 pebbles. The answer is: 44", "44"),
    ("The answer is $28,080.", "$28,080"),
    ("The correct answer is indeed 7.", "7"),
    ("First \\boxed{1} then \\boxed{2}", "2"),
])
def test_extract_answer_finds_the_stated_final_answer(text: str, answer: str) -> None:
    assert extract_answer(text) == answer


def test_no_final_answer_until_one_is_stated() -> None:
    assert extract_answer("He has 3 apples and buys 4.") is None
    assert not has_final_answer("The answer is")
    assert has_final_answer("The answer is 7")


@pytest.mark.parametrize(("predicted", "gold", "expected"), [
    ("28,080", "28080", True), ("1/2", "0.5", True), ("\\frac{1}{2}", "0.5", True), ("8", "7", False),
    (None, "7", False), ("7", None, False),
])
def test_is_correct_uses_math_verify_equivalence(predicted: str | None, gold: str | None, expected: bool) -> None:
    assert is_correct(predicted, gold) is expected


def test_normalize_makes_votes_for_equal_numbers_equal() -> None:
    assert normalize("$1,200.0") == normalize("1200") == "1200"
    assert normalize("2.50") == "2.5"
    assert normalize(" Paris. ") == "paris"


@pytest.mark.parametrize(("predicted", "gold"), [
    ("\\frac12", "\\frac{1}{2}"), ("2\\sqrt{3}", "\\sqrt{12}"), ("Monday", "\\text{Monday}"), ("[1,2)", "[1,2)"),
])
def test_bare_latex_answers_are_compared_as_mathematics(predicted: str, gold: str) -> None:
    assert is_correct(predicted, gold)


@pytest.mark.parametrize(("answer", "canonical"), [
    ("inf", "inf"), ("infinity", "inf"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("+inf", "inf"),
    ("1e400", "inf"), ("-1e99999", "-inf"), ("9" * 400, "9" * 400), ("-007", "-7"), ("-0", "0"), ("+5", "5"),
    ("nan", "nan"), ("NaN", "nan"), ("-nan", "nan"),
    ("inf%", "inf%"), ("1e-400", "0"), ("1e300", str(int(1e300))),
])
def test_normalize_of_non_finite_numbers_is_a_canonical_string(answer: str, canonical: str) -> None:
    assert normalize(answer) == canonical


def test_is_correct_of_non_finite_answers_does_not_raise() -> None:
    assert is_correct("inf", "inf") is True
    assert is_correct("1e400", "7") is False
    assert is_correct("nan", "nan") is True
    assert is_correct("inf", "-inf") is False
