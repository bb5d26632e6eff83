"""The `hf` backend: batched, padded scoring and generation agree with plain unpadded forward passes."""

from __future__ import annotations

import pytest
import torch

from rplat.llm import Sampling
from rplat.llm.hf import HFBackend

from tiny_lm import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    return HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=3)


def _reference_logprobs(backend: HFBackend, context: str, continuation: str) -> list[float]:
    ctx = backend.encode(context)
    cont = backend.encode_continuation(continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[len(ctx) + j - 1, tok].item() for j, tok in enumerate(cont)]


def test_batched_scoring_matches_unpadded_forward_passes(backend: HFBackend) -> None:
    contexts = ["Question: Tom has 3 apples.", "The cat", "Problem: compute 12 * 3. Solution:", "A"]
    continuations = [" Answer: 7.", " sat on the mat because it was warm.", " 36", " river"]
    scored = backend.score(contexts, continuations)
    for ctx, cont, got in zip(contexts, continuations, scored, strict=True):
        assert got == pytest.approx(_reference_logprobs(backend, ctx, cont), abs=1e-4)


def test_empty_continuation_scores_to_no_tokens(backend: HFBackend) -> None:
    assert backend.score(["The cat"], [""]) == [[]]


def test_greedy_generation_logprobs_equal_the_score_of_the_generated_text(backend: HFBackend) -> None:
    prompts = ["Question: Tom has", "The cat sat on the mat because"]
    out = backend.generate(prompts, Sampling(max_tokens=6))
    for prompt, [completion] in zip(prompts, out, strict=True):
        assert completion.finish_reason in ("stop", "length")
        assert len(completion.token_ids) == len(completion.token_logprobs) > 0
        expected = backend.score_ids([backend.encode(prompt)], [list(completion.token_ids)])[0]
        assert list(completion.token_logprobs) == pytest.approx(expected, abs=1e-4)


def test_greedy_generation_is_deterministic_and_batch_independent(backend: HFBackend) -> None:
    alone = backend.generate(["The cat"], Sampling(max_tokens=5))[0][0]
    batched = backend.generate(["Question: Tom has 3 apples and", "The cat", "A"], Sampling(max_tokens=5))[1][0]
    assert alone.text == batched.text


def test_sampling_returns_n_completions_per_prompt(backend: HFBackend) -> None:
    out = backend.generate(["The cat", "Problem:"], Sampling(temperature=1.0, max_tokens=4, seed=3), n=3)
    assert [len(c) for c in out] == [3, 3]
    assert all(len(c.token_logprobs) <= 4 for cs in out for c in cs)


def test_chat_prompt_applies_the_template(backend: HFBackend) -> None:
    text = backend.chat_prompt([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_continuations_sharing_a_context_score_as_if_alone(backend: HFBackend) -> None:
    context = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?"
    continuations = [" Answer: 7.", " 3 + 4 = 7", " The cat sat on the mat because it was warm.", " A"]
    shared = backend.score([context] * 4 + ["The cat"], continuations + [" sat"])
    for cont, got in zip([*continuations, " sat"], shared, strict=True):
        ctx = context if cont != " sat" else "The cat"
        assert got == pytest.approx(_reference_logprobs(backend, ctx, cont), abs=1e-4)
