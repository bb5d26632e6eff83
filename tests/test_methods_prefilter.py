"""RATIONALYST A1's pure prefilter methods against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rplat.methods.prefilter import (
    NLTK_ENGLISH_STOPWORDS,
    centroid,
    cosine_to,
    keep,
    preprocess,
    reference_text,
)


def test_preprocess_lowercases_and_drops_stopwords() -> None:
    assert preprocess("The Cat sat ON the Mat") == "cat sat mat"


def test_preprocess_strips_every_ascii_punctuation_mark() -> None:
    assert preprocess("x=3.5; y=(a+b)/2! #### 42") == "x35 yab2 42"


def test_preprocess_collapses_whitespace_of_any_kind() -> None:
    assert preprocess("  apples\t\tpears\n\n  plums  ") == "apples pears plums"


def test_preprocess_drops_contracted_stopwords_after_their_apostrophe_is_stripped() -> None:
    assert preprocess("Don't stop: it's 3 dollars, isn't it?") == "stop 3 dollars"


def test_preprocess_of_only_stopwords_and_punctuation_is_empty() -> None:
    assert preprocess("It is, and was, what it is!") == ""
    assert preprocess("") == ""


def test_stopword_list_is_nltks_english_list() -> None:
    assert len(NLTK_ENGLISH_STOPWORDS) == 179
    assert {"the", "ourselves", "wouldn't", "ma"} <= NLTK_ENGLISH_STOPWORDS


def test_reference_text_joins_question_and_solution_with_a_newline() -> None:
    assert reference_text("What is 2+2?", "2+2 = 4\n#### 4") == "What is 2+2?\n2+2 = 4\n#### 4"


@pytest.mark.parametrize("solution", [None, ""])
def test_reference_text_without_a_solution_is_the_question(solution: str | None) -> None:
    assert reference_text("What is 2+2?", solution) == "What is 2+2?"


def test_centroid_is_the_mean_of_the_rows() -> None:
    c = centroid(torch.tensor([[1.0, 2.0, 0.0], [3.0, 6.0, -3.0]]))
    assert c.tolist() == [2.0, 4.0, -1.5]


def test_centroid_of_integer_rows_is_a_float_vector() -> None:
    c = centroid(torch.tensor([[1, 2], [2, 2]]))
    assert c.dtype == torch.float32
    assert c.tolist() == [1.5, 2.0]


@pytest.mark.parametrize("embeddings", [torch.zeros((0, 4)), torch.zeros(4)])
def test_centroid_of_an_empty_reference_set_raises(embeddings: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="reference set is empty"):
        centroid(embeddings)


def test_cosine_to_a_center_on_hand_made_vectors() -> None:
    center = torch.tensor([1.0, 0.0])
    cos = cosine_to(center, torch.tensor([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0], [-3.0, 0.0]]))
    assert cos.tolist() == pytest.approx([1.0, 0.0, 1 / math.sqrt(2), -1.0], abs=1e-6)


def test_cosine_ignores_vector_length() -> None:
    cos = cosine_to(torch.tensor([4.0, 3.0]), torch.tensor([[3.0, 4.0], [30.0, 40.0]]))
    assert cos.tolist() == pytest.approx([24 / 25, 24 / 25], abs=1e-6)


def test_cosine_to_the_centroid_of_two_orthogonal_unit_vectors() -> None:
    refs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cos = cosine_to(centroid(refs), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))
    assert cos.tolist() == pytest.approx([1 / math.sqrt(2), 0.0, 1.0], abs=1e-6)


def test_keep_applies_the_threshold_inclusively_and_the_length_limit() -> None:
    cos = torch.tensor([0.5, 0.3, 0.29, 0.9, 0.9])
    n_chars = torch.tensor([100, 2000, 10, 2001, 1999])
    assert keep(cos, n_chars, threshold=0.3, max_chars=2000).tolist() == [True, True, False, False, True]


def test_keep_without_a_length_limit_uses_only_the_threshold() -> None:
    cos = torch.tensor([0.5, 0.29, 0.9])
    n_chars = torch.tensor([100, 10, 1_000_000])
    assert keep(cos, n_chars, threshold=0.3, max_chars=None).tolist() == [True, False, True]


def test_keep_with_a_negative_threshold_keeps_dissimilar_documents() -> None:
    cos = torch.tensor([-0.5, -0.1, 0.0])
    assert keep(cos, torch.tensor([1, 1, 1]), threshold=-0.2, max_chars=None).tolist() == [False, True, True]
