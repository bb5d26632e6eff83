"""Parsers and labelers never raise on what a model (or a data file) can hold (issue 18, item 3).

Every function that reads model output or an imported record is fed arbitrary text (any code point but a lone
surrogate, which a decoded str from a model or a UTF-8 file cannot hold; NUL included) and text assembled from
the fragments that broke or could break them: non-finite and huge numbers, unbalanced and deep braces, boxes,
the answer phrases, mixed scripts. Hypothesis runs a fixed, derandomized budget of examples, so CI is
deterministic; `deadline` bounds the time per example (math-verify's ones allow for its own 5 s timeouts). The
1 MB and 50-deep inputs are fed once each in plain tests.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rplat.imports import chains as chain_import
from rplat.imports import datasets as dataset_import
from rplat.methods import answers, labelers, leaks

FAST = settings(max_examples=1000, deadline=timedelta(seconds=2), derandomize=True, database=None)
# math-verify may spend its 5 s parsing timeout on each side and 5 s comparing: allow that, not more.
SLOW = settings(max_examples=200, deadline=timedelta(seconds=20), derandomize=True, database=None)

FRAGMENTS = [
    "inf", "-inf", "Infinity", "-Infinity", "nan", "NaN", "1e400", "-1e99999", "1e-400", "9" * 400, "0.", ".5",
    "\\boxed{", "\\boxed ", "\\fbox{", "\\boxed", "{", "}", "}}", "{{", "$", "\\$", "%", "\\%", ",", "=", "/", " ",
    "\n", "\x00", "#### ", "The answer is: ", "the correct answer is indeed ", "\\frac", "\\frac1", "\\sqrt",
    "\\text{ ", "\\text{", "\\left(", "\\right)", "^\\circ", "\\!", "\\\\", "tfrac", "1/2", "28,080", "-3",
    "x", "π", "日本語", "١٢٣", "Ω", "ﬁ", "²", "\u200b", "\ufeff", "😀", "'", "\u2019",
]
# What can reach a parser: any code point except lone surrogates (category Cs); NUL and controls included.
ANY_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200)
NASTY = st.lists(st.one_of(st.sampled_from(FRAGMENTS), ANY_TEXT), max_size=30).map("".join)
TEXT = st.one_of(ANY_TEXT, NASTY)
SHORT = st.one_of(st.sampled_from(FRAGMENTS), st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
                  st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20))

MEGABYTE_OF_DIGITS = "7" * 1_000_000
DEEP_BOXES = "\\boxed{" * 50 + "5" + "}" * 50
UNCLOSED_DEEP_BOXES = "\\boxed{" * 50 + "5"
HUGE_INPUTS = [MEGABYTE_OF_DIGITS, DEEP_BOXES, UNCLOSED_DEEP_BOXES, "{" * 100_000, "}" * 100_000,
               "\\boxed{" + MEGABYTE_OF_DIGITS + "}", "The answer is " + MEGABYTE_OF_DIGITS,
               "#### " + MEGABYTE_OF_DIGITS, "\x00" * 1000, "\\frac" * 10_000, "\\sqrt" * 10_000]


# --- answer extraction ---------------------------------------------------------------------------------------


@FAST
@given(TEXT)
def test_extraction_and_normalize_never_raise(text: str) -> None:
    answer = answers.extract_answer(text)
    assert answer is None or isinstance(answer, str)
    assert answers.has_final_answer(text) is (answer is not None)
    for value in (text, answer):
        canonical = answers.normalize(value)
        assert canonical is None or isinstance(canonical, str)


@SLOW
@given(SHORT, SHORT)
def test_is_correct_never_raises(predicted: str, gold: str) -> None:
    assert isinstance(answers.is_correct(predicted, gold), bool)


# --- boxes and the two labelers ------------------------------------------------------------------------------


@FAST
@given(TEXT)
def test_boxes_and_gold_answers_never_raise(text: str) -> None:
    boxed = labelers.last_boxed(text)
    assert boxed is None or boxed.startswith(labelers._BOX_COMMANDS)
    argument = labelers.remove_boxed(boxed)
    assert argument is None or isinstance(argument, str)
    assert labelers.chain_answer(text) == argument
    gold = labelers.gold_answer(text)
    assert gold is None or isinstance(gold, str)


@FAST
@given(TEXT, TEXT)
def test_hendrycks_equivalence_never_raises(a: str, b: str) -> None:
    assert isinstance(labelers.is_equiv_hendrycks(a, b), bool)
    assert labelers.is_equiv_hendrycks(a, a) is True


@SLOW
@given(TEXT, SHORT, st.sampled_from(labelers.LABELERS))
def test_label_chain_never_raises(text: str, gold: str, labeler: str) -> None:
    verdict = labelers.label_chain(text, gold, labeler)
    assert verdict.label in ("pos", "neg")


# --- the leak measure ----------------------------------------------------------------------------------------


@FAST
@given(TEXT, TEXT, TEXT)
def test_leak_overlap_never_raises(preceding: str, rationale: str, following: str) -> None:
    value = leaks.overlap(preceding, rationale, following)
    assert 0.0 <= value <= 1.0


# --- the importers' field parsing: a value is text or a one-sentence complaint, nothing else -------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
                    max_leaves=6)
VALUES = st.one_of(JSON, st.just(10 ** 5000), st.just([10 ** 5000]), st.just(float("nan")), st.just(float("inf")))
RECORD = st.dictionaries(st.sampled_from(["question", "answer", "generated_answer", "chain", "problem_id",
                                          "sample_idx", "type", "level", "x"]), VALUES, max_size=6)


@FAST
@given(RECORD, st.sampled_from(["question", "problem_id", "type"]), st.booleans(),
       st.sampled_from(["auto", "released", "flat"]))
def test_chain_import_fields_never_raise_but_say_what_is_wrong(record: dict, name: str, required: bool,
                                                             layout: str) -> None:
    try:
        value = chain_import._text(record, name, required=required, max_len=100)
        assert value is None or isinstance(value, str)
    except chain_import._Bad as exc:
        assert str(exc)
    try:
        assert chain_import._layout_of(record, layout) in chain_import.LAYOUTS
    except chain_import._Bad as exc:
        assert str(exc)


@FAST
@given(RECORD, st.sampled_from(["question", "answer", "x"]), st.booleans())
def test_dataset_import_fields_never_raise_but_say_what_is_wrong(record: dict, name: str, required: bool) -> None:
    source = dataset_import._Source("question", name, "--question-field", required, 100)
    try:
        value = dataset_import._value(record, source)
        assert value is None or isinstance(value, str)
    except dataset_import._BadField as exc:
        assert str(exc)


def test_a_problem_id_past_the_integer_conversion_limit_is_a_complaint() -> None:
    with pytest.raises(dataset_import._BadField, match="cannot be written as text"):
        dataset_import._value({"id": 10 ** 5000}, dataset_import._Source("external_id", "id", "--id-field", True,
                                                                          None))


# --- the huge inputs, once each ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", HUGE_INPUTS, ids=range(len(HUGE_INPUTS)))
def test_huge_inputs_never_raise(text: str) -> None:
    answers.normalize(answers.extract_answer(text))
    answers.normalize(text)
    assert answers.is_correct(text, "7") is False
    labelers.is_equiv_hendrycks(text, "7")
    labelers.gold_answer(text)
    for labeler in labelers.LABELERS:
        labelers.label_chain(text, "7", labeler)
    verdict, timed_out = labelers.math_verify_check(text, text + "1")
    assert isinstance(verdict, bool) and isinstance(timed_out, bool)
    leaks.overlap(text, text, text)


def test_deep_boxes_give_the_innermost_argument() -> None:
    # Both take the last `\\boxed{` of the text, which is the innermost one.
    assert answers.extract_answer(DEEP_BOXES) == "5"
    assert labelers.chain_answer(DEEP_BOXES) == "5"
    assert labelers.label_chain(DEEP_BOXES, "7").label == "neg"
    assert labelers.chain_answer(UNCLOSED_DEEP_BOXES) is None


def test_answers_past_the_verify_limit_are_compared_as_normalized_strings() -> None:
    long_number = "1" * (answers.MAX_VERIFY_CHARS + 1)
    assert answers.is_correct(long_number, long_number) is True
    assert answers.is_correct(long_number, long_number[:600] + "," + long_number[600:]) is True
    assert answers.is_correct(long_number, long_number + "1") is False  # both past float range, yet not equal


# --- math-verify off the main thread and in the labelling pool ---------------------------------------------------

NON_FINITE_CHAINS = [("So \\boxed{inf}.", "inf"), ("The answer is nan", "7"), ("#### 1e400", "1e400"),
                     ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{" * 50, "7"), ("\x00\\boxed{-Infinity}", "7")]


def test_is_correct_off_the_main_thread_does_not_raise() -> None:
    results: list[object] = []

    def judge() -> None:
        try:
            results.append([answers.is_correct(a, g) for a, g in (("1e400", "inf"), ("nan", "nan"), ("8", "7"))])
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            results.append(exc)

    thread = threading.Thread(target=judge)
    thread.start()
    thread.join()
    # math-verify's SIGALRM cannot be set there, so the normalized strings decide: "1e400" and "inf" are both inf.
    assert results == [[True, True, False]]


def test_the_labelling_pool_judges_non_finite_answers_as_one_process_does() -> None:
    alone = labelers.label_chains(NON_FINITE_CHAINS, "math-verify", workers=1)
    pooled = labelers.label_chains(NON_FINITE_CHAINS, "math-verify", workers=2, chunk=1)
    assert pooled.verdicts == alone.verdicts
    assert [v.answer for v in pooled.verdicts][:3] == ["inf", "nan", "1e400"]
    assert pooled.verdicts[3].math_verify is True


def test_a_jsonl_number_past_the_integer_conversion_limit_is_one_sentence() -> None:
    from rplat.errors import UserError
    from rplat.imports.readers import jsonl_records

    with pytest.raises(UserError, match="chains.jsonl line 2 cannot be read"):
        list(jsonl_records([b'{"problem_id": 1}', b'{"problem_id": 1' + b"0" * 5000 + b"}"], "chains.jsonl"))
