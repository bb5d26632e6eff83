"""The two chain labelers: boxes, the Hendrycks MATH normalisation step by step, math-verify, verdicts."""

from __future__ import annotations

import pytest

from rplat.methods.labelers import (
    LABELERS,
    Verdict,
    chain_answer,
    gold_answer,
    is_equiv_hendrycks,
    label_chain,
    last_boxed,
    math_verify_equiv,
    remove_boxed,
    strip_math,
)


@pytest.mark.parametrize(("text", "boxed", "inner"), [
    ("so the answer is $\\boxed{\\frac{1}{2}}$.", "\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("nested $\\boxed{\\sqrt{x^{2}+\\frac{1}{y}}}$", "\\boxed{\\sqrt{x^{2}+\\frac{1}{y}}}",
     "\\sqrt{x^{2}+\\frac{1}{y}}"),
    ("first \\boxed{3}, then corrected: \\boxed{4}", "\\boxed{4}", "4"),
    ("old style $\\fbox{7}$", "\\fbox{7}", "7"),
    ("\\boxed{2} and later \\fbox{9}", "\\fbox{9}", "9"),
    ("brace-less $\\boxed 5$ done", "\\boxed 5", "5"),
    ("spaced $\\boxed {12}$", "\\boxed {12}", "12"),
    ("empty \\boxed{}", "\\boxed{}", ""),
])
def test_last_boxed_finds_the_last_box_with_matched_braces(text: str, boxed: str, inner: str) -> None:
    assert last_boxed(text) == boxed
    assert remove_boxed(boxed) == inner
    assert chain_answer(text) == inner


@pytest.mark.parametrize("text", [
    "The answer is 5.",  # no box at all
    "so it is \\boxed{12",  # cut off inside the box
    "",
    "\\boxedfoo is not a box",
])
def test_no_box_means_no_answer(text: str) -> None:
    assert last_boxed(text) is None
    assert chain_answer(text) is None


def test_remove_boxed_refuses_what_is_not_a_box() -> None:
    assert remove_boxed(None) is None
    assert remove_boxed("5") is None
    assert remove_boxed("\\boxed{5") is None


@pytest.mark.parametrize(("raw", "normalised"), [
    ("\\dfrac{3}{4}", "\\frac{3}{4}"),  # dfrac -> frac
    ("\\tfrac12", "\\frac{1}{2}"),  # tfrac -> frac, then \fracAB -> \frac{A}{B}
    ("\\frac34", "\\frac{3}{4}"),
    ("\\frac3{4}", "\\frac{3}{4}"),  # \fracA{..} -> \frac{A}{..}
    ("\\frac{10}{3}", "\\frac{10}{3}"),
    ("0.5", "\\frac{1}{2}"),
    (".5", "\\frac{1}{2}"),  # leading "." gets a 0, then 0.5 -> \frac{1}{2}
    ("0.50", "0.50"),  # only the exact string 0.5 is rewritten
    ("{.5}", "{0.5}"),
    ("x + .5", "x+0.5"),  # " ." -> " 0." before the spaces go
    ("1/2", "\\frac{1}{2}"),  # A/B of two integers
    ("x/2", "x/2"),
    ("1/2/3", "1/2/3"),
    ("5\\text{ cm}", "5"),  # units cut at "\text{ "
    ("5 \\text{ cm}^2", "5"),
    ("\\text{Monday}", "\\text{Monday}"),  # no space after the brace: not units, kept
    ("\\left( 3, 4 \\right)", "(3,4)"),
    ("30^\\circ", "30"),
    ("30^{\\circ}", "30"),
    ("\\$18", "18"),
    ("10\\%", "10"),
    ("10%", "10"),
    ("x = 3", "3"),  # left side of at most 2 characters dropped
    ("xy = 3", "xy=3"),  # 3 characters ("xy "): kept
    ("a=b=c", "a=b=c"),
    ("\\sqrt3", "\\sqrt{3}"),
    ("2\\sqrt{3}", "2\\sqrt{3}"),
    ("1\\!000", "1000"),
    ("\\\\frac{1}{2}", "\\frac{1}{2}"),  # \\ -> \
    ("1\n2", "12"),
    ("", ""),
])
def test_strip_math_follows_the_reference_steps(raw: str, normalised: str) -> None:
    assert strip_math(raw) == normalised


@pytest.mark.parametrize("raw", ["\\sqrt", "\\frac", "5\\text{ m}\\text{ s}"])
def test_strip_math_raises_where_the_reference_does(raw: str) -> None:
    with pytest.raises((IndexError, ValueError)):
        strip_math(raw)


@pytest.mark.parametrize(("a", "b", "equal"), [
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\frac12", "0.5", True),
    (".5", "\\frac{1}{2}", True),
    ("0.50", "\\frac{1}{2}", False),  # the rule is textual
    ("\\frac{2}{4}", "\\frac{1}{2}", False),
    ("5\\text{ cm}", "5", True),
    ("\\text{Monday}", "Monday", False),
    ("\\left(1,2\\right)", "(1, 2)", True),
    ("90^\\circ", "90", True),
    ("x = 3", "3", True),
    ("\\sqrt", "\\sqrt", True),  # normalising raises: raw strings compared
    ("\\sqrt", "\\sqrt{}", False),
    (None, "5", False),
    ("5", None, False),
    (None, None, False),
])
def test_is_equiv_hendrycks(a: str | None, b: str | None, equal: bool) -> None:
    assert is_equiv_hendrycks(a, b) is equal


@pytest.mark.parametrize(("a", "b", "equal"), [
    ("0.50", "\\frac{1}{2}", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("\\frac12", "0.5", True),
    ("[1,2)", "[1,2)", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    ("1,000", "1000", True),
    ("5", "6", False),
    ("", "5", False),
    (None, "5", False),
])
def test_math_verify_equiv(a: str | None, b: str | None, equal: bool) -> None:
    assert math_verify_equiv(a, b) is equal


@pytest.mark.parametrize(("solution", "gold"), [
    ("Add them: $2+3=5$, so the total is $\\boxed{5}$.", "5"),
    ("Hence $x = \\boxed{\\dfrac{3}{4}}$.", "\\dfrac{3}{4}"),
    ("She pays 3 * 4 = 12 dollars.\n#### 12", "12"),
    ("Adding gives 7. The answer is 7.", "7"),
    ("\\frac{1}{2}", "\\frac{1}{2}"),
    ("  42 ", "42"),
    ("A long worked solution\nwith two lines and no final answer", None),
    (None, None),
])
def test_gold_answer(solution: str | None, gold: str | None) -> None:
    assert gold_answer(solution) == gold


def test_label_chain_boxed_positive_and_negative() -> None:
    right = label_chain("We get $\\frac{6}{8} = \\boxed{\\dfrac{3}{4}}$.", "\\frac{3}{4}")
    assert right == Verdict("\\dfrac{3}{4}", True, True, "pos")
    wrong = label_chain("So the answer is $\\boxed{\\frac{4}{3}}$.", "\\frac{3}{4}", "math-verify")
    assert wrong == Verdict("\\frac{4}{3}", False, False, "neg")


def test_the_labelers_disagree_on_a_decimal_for_a_fraction() -> None:
    text = "Half of the marbles: $\\boxed{0.50}$."
    assert label_chain(text, "\\frac{1}{2}", "hendrycks") == Verdict("0.50", False, True, "neg")
    assert label_chain(text, "\\frac{1}{2}", "math-verify") == Verdict("0.50", False, True, "pos")


def test_a_chain_without_a_box_is_negative_for_hendrycks() -> None:
    text = "Adding, 2 + 3 = 5. The answer is 5."
    assert label_chain(text, "5", "hendrycks") == Verdict("5", False, True, "neg")
    assert label_chain(text, "5", "math-verify").label == "pos"
    assert label_chain("I am not sure.", "5", "math-verify") == Verdict(None, False, False, "neg")


def test_label_chain_without_gold_is_negative() -> None:
    assert label_chain("$\\boxed{5}$", None) == Verdict("5", False, False, "neg")


def test_label_chain_refuses_an_unknown_labeler() -> None:
    assert LABELERS == ("hendrycks", "math-verify")
    with pytest.raises(ValueError, match="unknown labeler"):
        label_chain("\\boxed{1}", "1", "exact")
