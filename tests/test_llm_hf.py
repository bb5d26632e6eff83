"""The `hf` backend: batched, padded scoring and generation match plain unpadded passes.

Every behaviour here is checked on the plain path and on the fast paths (`fast` parameter); that the two give
the same numbers on harder shapes is tests/test_llm_hf_fast.py's subject."""

from __future__ import annotations

import pytest
import torch

from rplat.errors import UserError
from rplat.llm import Sampling
from rplat.llm.hf import FAST_ENV, PREFIX_CACHE_BYTES, PREFIX_CACHE_ENV, HFBackend

from tiny_lm import tiny_model, tiny_tokenizer


@pytest.fixture(autouse=True)
def _no_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAST_ENV, raising=False)
    monkeypatch.delenv(PREFIX_CACHE_ENV, raising=False)


@pytest.fixture(params=[False, True], ids=["plain", "fast"])
def backend(request: pytest.FixtureRequest) -> HFBackend:
    made = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=3, fast=request.param)
    assert made.fast is request.param
    return made


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


def test_continuations_sharing_a_context_score_as_if_alone(backend: HFBackend) -> None:
    context = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?"
    continuations = [" Answer: 7.", " 3 + 4 = 7", " The cat sat on the mat because it was warm.", " A"]
    shared = backend.score([context] * 4 + ["The cat"], continuations + [" sat"])
    for cont, got in zip([*continuations, " sat"], shared, strict=True):
        ctx = context if cont != " sat" else "The cat"
        assert got == pytest.approx(_reference_logprobs(backend, ctx, cont), abs=1e-4)


def test_empty_continuation_scores_to_no_tokens(backend: HFBackend) -> None:
    assert backend.score(["The cat"], [""]) == [[]]


def test_a_continuation_without_context_is_refused(backend: HFBackend) -> None:
    with pytest.raises(ValueError, match="non-empty context"):
        backend.score_ids([[]], [[5, 6]])


def test_greedy_generation_logprobs_equal_the_score_of_the_generated_text(backend: HFBackend) -> None:
    prompts = ["Question: Tom has", "The cat sat on the mat because"]
    out = backend.generate(prompts, Sampling(max_tokens=6))
    for prompt, [completion] in zip(prompts, out, strict=True):
        assert completion.finish_reason in ("stop", "length")
        assert len(completion.token_ids) == len(completion.token_logprobs) > 0
        expected = backend.score_ids([backend.encode(prompt)], [list(completion.token_ids)])[0]
        assert list(completion.token_logprobs) == pytest.approx(expected, abs=1e-4)


def test_greedy_generation_equals_each_prompt_generated_alone_unpadded(backend: HFBackend) -> None:
    prompts = ["Question: Tom has 3 apples and", "The cat", "A", "Problem: compute 12 * 3. Solution:"]
    out = backend.generate(prompts, Sampling(max_tokens=8))
    eos = backend.tokenizer.eos_token_id
    for prompt, [completion] in zip(prompts, out, strict=True):
        ids = torch.tensor([backend.encode(prompt)])
        with torch.no_grad():
            alone = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                           do_sample=False, pad_token_id=backend.tokenizer.pad_token_id)
        tokens = alone[0, ids.shape[1]:].tolist()
        assert list(completion.token_ids) == (tokens[:tokens.index(eos)] if eos in tokens else tokens)


def test_greedy_n_copies_equal_a_single_greedy_completion(backend: HFBackend) -> None:
    three = backend.generate(["The cat", "Problem:"], Sampling(max_tokens=5), n=3)
    single = backend.generate(["The cat", "Problem:"], Sampling(max_tokens=5))
    assert three == [cs * 3 for cs in single]


def test_sampling_returns_n_distinct_completions_per_prompt_reproducibly(backend: HFBackend) -> None:
    sampling = Sampling(temperature=1.0, max_tokens=6, seed=3)
    out = backend.generate(["The cat", "Problem:"], sampling, n=3)
    assert [len(c) for c in out] == [3, 3]
    assert all(len(c.token_logprobs) == len(c.token_ids) <= 6 for cs in out for c in cs)
    assert len({c.token_ids for c in out[0]}) > 1
    assert backend.generate(["The cat", "Problem:"], sampling, n=3) == out


def test_stop_strings_cut_the_text_and_its_tokens(backend: HFBackend) -> None:
    out = backend.generate(["The cat", "Problem:", "A"], Sampling(temperature=1.0, max_tokens=12, seed=3,
                                                                  stop=(" ", ".")), n=3)
    completions = [c for cs in out for c in cs]
    assert all(" " not in c.text and "." not in c.text for c in completions)
    assert any(c.finish_reason == "stop" for c in completions)
    assert all(len(c.token_ids) == len(c.token_logprobs) for c in completions)


def test_chat_prompt_applies_the_template(backend: HFBackend) -> None:
    text = backend.chat_prompt([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# --- options ----------------------------------------------------------------------------------------------------

def test_rplat_hf_fast_0_forces_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAST_ENV, "0")
    assert not HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", fast=True).fast
    monkeypatch.setenv(FAST_ENV, "1")
    assert HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0").fast
    assert not HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", fast=False).fast


def test_a_misspelt_fast_switch_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAST_ENV, "no")
    with pytest.raises(UserError, match=f"{FAST_ENV}='no' is not understood; set it to 0"):
        HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0")


def test_prefix_cache_bytes_come_from_the_argument_then_the_environment_then_the_default(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="t").prefix_cache_bytes == PREFIX_CACHE_BYTES
    monkeypatch.setenv(PREFIX_CACHE_ENV, "4096")
    assert HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="t").prefix_cache_bytes == 4096
    assert HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="t", prefix_cache_bytes=0).prefix_cache_bytes == 0
    monkeypatch.setenv(PREFIX_CACHE_ENV, "512MB")
    with pytest.raises(UserError, match=f"{PREFIX_CACHE_ENV}='512MB' is not a byte count"):
        HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="t")
    with pytest.raises(UserError, match="prefix_cache_bytes=-1 is negative"):
        HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="t", prefix_cache_bytes=-1)
