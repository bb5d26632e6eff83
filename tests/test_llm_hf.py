"""The `hf` backend: batched, padded scoring and generation agree with plain unpadded forward passes."""

from __future__ import annotations

import pytest
import torch

from rplat.llm import Completion, Sampling, hf
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


@pytest.mark.parametrize(("kv_heads", "pack_tokens"), [(2, None), (4, None), (2, 24)],
                         ids=["grouped-kv-heads", "one-kv-head-per-head", "several-packs"])
def test_rationales_of_one_document_share_the_document_prefix_and_score_as_if_alone(
        kv_heads: int, pack_tokens: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loss-delta shape: every rationale of a document, each without and with it, in shuffled order, plus
    a foreign item; the document is encoded once, yet every item scores as if it were alone: with grouped or
    one-per-head KV heads (both attend per packed member), and with the members spread over several packs."""
    if pack_tokens is not None:
        monkeypatch.setattr(hf, "PACK_TOKENS", pack_tokens)
    backend = HFBackend(tiny_model(kv_heads=kv_heads), tiny_tokenizer(), fingerprint=f"tiny-kv{kv_heads}", batch_size=3)
    system = "<|im_start|>system\nYour task is to generate future text given preceeding text<|im_end|>\n"
    units = ["Tom has 3 apples.", "He buys 4 more apples at the market.", "Then he eats 2 of them.",
             "So he has 5 apples left.", "The answer is 5."]
    contexts, continuations = [], []
    for k in range(1, len(units)):
        preceding = " ".join(units[:k])
        for user in (preceding, f"{preceding}. Count what he has after each event"):
            contexts.append(f"{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
            continuations.append(units[k])
    contexts.insert(3, "The cat")
    continuations.insert(3, " sat on the mat")
    order = [5, 0, 8, 3, 2, 7, 1, 6, 4]
    encoded: list[int] = []
    forward = backend.model.forward

    def counting(*args, **kwargs):
        encoded.append(int(kwargs["input_ids"].ne(backend.tokenizer.pad_token_id).sum()))
        return forward(*args, **kwargs)

    backend.model.forward = counting
    try:
        scored = backend.score([contexts[i] for i in order], [continuations[i] for i in order])
    finally:
        del backend.model.forward
    for i, got in zip(order, scored, strict=True):
        assert got == pytest.approx(_reference_logprobs(backend, contexts[i], continuations[i]), abs=1e-4)
    alone = sum(len(backend.encode(c)) + len(backend.encode_continuation(k)) for c, k in zip(contexts, continuations, strict=True))
    assert sum(encoded) < alone * 0.6





def test_a_base_encoded_by_an_earlier_call_is_reused_not_encoded_again() -> None:
    """A document whose rationales fall into two score calls (two batches of the job): the second call copies
    the document's stored KV instead of encoding it, and still scores every item as if it were alone."""
    backend = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-reuse", batch_size=3)
    system = "<|im_start|>system\nYour task is to generate future text given preceeding text<|im_end|>\n"
    units = ["Tom has 3 apples.", "He buys 4 more apples at the market.", "Then he eats 2 of them.",
             "So he has 5 apples left."]
    pairs = [(f"{system}<|im_start|>user\n{' '.join(units[:k])}{extra}<|im_end|>\n<|im_start|>assistant\n", units[k])
             for k in (3, 2, 1) for extra in ("", ". Count what he has after each event")]
    encoded: list[int] = []
    forward = backend.model.forward

    def counting(*args, **kwargs):
        encoded.append(int(kwargs["input_ids"].shape[1]))
        return forward(*args, **kwargs)

    backend.model.forward = counting
    try:
        first = backend.score([c for c, _ in pairs[:2]], [k for _, k in pairs[:2]])
        base_calls = len(encoded)
        second = backend.score([c for c, _ in pairs[2:]], [k for _, k in pairs[2:]])
        calls = len(encoded)
        again = backend.score([c for c, _ in pairs[2:]], [k for _, k in pairs[2:]])
    finally:
        del backend.model.forward
    for (context, continuation), got in zip(pairs, first + second, strict=True):
        assert got == pytest.approx(_reference_logprobs(backend, context, continuation), abs=1e-4)
    # the second call's base (the document up to its second unit, and its rationale) is the first call's prefix
    # plus a few tokens: only those are encoded before the packed rows
    second_base = encoded[base_calls]
    assert 0 < second_base < len(backend.encode(pairs[3][0])) - len(backend.encode(system))
    # the same base once more: all of it is stored, nothing is encoded before the packed rows
    assert len(encoded) == calls
    for a, b in zip(again, second, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("block", [7, 64, 4096], ids=["partial-last-block", "several-blocks", "one-block"])
def test_blockwise_token_logprobs_equal_a_full_log_softmax(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf, "VOCAB_BLOCK", block)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 16, generator=generator) * 3
    weight = torch.randn(200, 16, generator=generator)
    targets = torch.tensor([0, 199, 6, 7, 63, 64, 128, 150, 3])
    expected = torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert hf._token_logprobs(hidden, weight, targets).tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_models_whose_logits_are_not_a_plain_projection_score_through_the_full_logits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Soft-capped or scaled logits (Gemma 2, Cohere) cannot be computed block by block: the full head is used."""
    backend = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-capped", batch_size=3)
    assert backend._plain_head() is not None
    backend.model.config.logit_scale = 0.5
    assert backend._plain_head() is None
    del backend.model.config.logit_scale
    calls = []
    blockwise_logprobs = hf._token_logprobs
    monkeypatch.setattr(hf, "_token_logprobs", lambda *args: calls.append(1) or blockwise_logprobs(*args))
    blockwise = backend.score(["Tom has 3 apples. He buys 4", "Tom has 3 apples. He eats 1"], [" more.", " of them."])
    assert calls  # the two share their context's prefix: one packed row, scored block by block
    monkeypatch.setattr(HFBackend, "_plain_head", lambda self: None)
    full = backend.score(["Tom has 3 apples. He buys 4", "Tom has 3 apples. He eats 1"], [" more.", " of them."])
    assert len(calls) == 1
    for a, b in zip(blockwise, full, strict=True):
        assert a == pytest.approx(b, abs=1e-5)

# --- generation: one encoding per distinct prompt, stored prefixes reused ------------------------------------

GEN_PROMPTS = [
    "<|im_start|>system\nQuestion: Tom has 3 apples and buys 4 more.<|im_end|>\n<|im_start|>user\nHow many?",
    "<|im_start|>system\nQuestion: Tom has 3 apples and buys 4 more.<|im_end|>\n<|im_start|>user\nThe cat sat",
    "Problem: compute 12 * 3. Solution:",
    "A",
]


def _plain_path(backend: HFBackend, monkeypatch: pytest.MonkeyPatch, *args: object) -> list[list[Completion]]:
    """The generation path without prefix reuse: HF generate expands every prompt n-fold and encodes it n times."""
    with monkeypatch.context() as m:
        m.setattr(HFBackend, "_can_reuse_prefixes", lambda self: False)
        return backend.generate(*args)  # type: ignore[arg-type]


def _same(got: list[list[Completion]], expected: list[list[Completion]]) -> None:
    assert [[c.token_ids for c in cs] for cs in got] == [[c.token_ids for c in cs] for cs in expected]
    assert [[c.text for c in cs] for cs in got] == [[c.text for c in cs] for cs in expected]
    assert [[c.finish_reason for c in cs] for cs in got] == [[c.finish_reason for c in cs] for cs in expected]
    for cs, es in zip(got, expected, strict=True):
        for c, e in zip(cs, es, strict=True):
            assert list(c.token_logprobs) == pytest.approx(list(e.token_logprobs), abs=1e-4)


def test_greedy_n_copies_equal_single_greedy_and_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=3)
    sampling = Sampling(max_tokens=8)
    three = backend.generate(GEN_PROMPTS, sampling, n=3)
    single = backend.generate(GEN_PROMPTS, sampling)
    assert all(len(cs) == 3 and all(c == cs[0] for c in cs) for cs in three)
    _same([cs[:1] for cs in three], single)
    _same(single, _plain_path(backend, monkeypatch, GEN_PROMPTS, sampling))
    for prompt, [completion] in zip(GEN_PROMPTS, single, strict=True):  # each prompt alone, unpadded
        ids = torch.tensor([backend.encode(prompt)])
        with torch.no_grad():
            alone = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                           do_sample=False, pad_token_id=backend.tokenizer.pad_token_id)
        tokens = alone[0, ids.shape[1]:].tolist()
        eos = backend.tokenizer.eos_token_id
        assert list(completion.token_ids) == (tokens[:tokens.index(eos)] if eos in tokens else tokens)


def test_seeded_sampling_is_reproducible_and_matches_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    sampling = Sampling(temperature=1.0, max_tokens=8, seed=7)
    first = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=3)
    out = first.generate(GEN_PROMPTS, sampling, n=3)
    assert [len(cs) for cs in out] == [3] * len(GEN_PROMPTS)
    assert len({c.token_ids for c in out[0]}) > 1  # the n samples of a prompt are not copies
    _same(first.generate(GEN_PROMPTS, sampling, n=3), out)  # again, now from stored prefixes
    fresh = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=3)
    _same(fresh.generate(GEN_PROMPTS, sampling, n=3), out)
    _same(_plain_path(fresh, monkeypatch, GEN_PROMPTS, sampling, 3), out)


def test_stop_strings_cut_samples_as_on_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=3)
    sampling = Sampling(temperature=1.0, max_tokens=12, seed=3, stop=(" ", "."))
    out = backend.generate(GEN_PROMPTS, sampling, n=3)
    completions = [c for cs in out for c in cs]
    assert all(" " not in c.text and "." not in c.text for c in completions)
    assert any(c.finish_reason == "stop" for c in completions)
    assert all(len(c.token_ids) == len(c.token_logprobs) for c in completions)
    _same(out, _plain_path(backend, monkeypatch, GEN_PROMPTS, sampling, 3))


def test_a_prompt_extending_an_earlier_one_encodes_only_its_new_tokens() -> None:
    """The next step's prompt of a trajectory starts with the previous step's prompt: that part is not encoded
    again, and the output is what a fresh backend generates for it."""
    backend = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=3)
    step_one = [GEN_PROMPTS[0], GEN_PROMPTS[2]]
    step_two = [step_one[0] + " 7 apples.<|im_end|>\n<|im_start|>assistant\n", step_one[1] + " 36"]
    sampling = Sampling(temperature=0.7, max_tokens=5, seed=1)
    backend.generate(step_one, sampling, n=3)
    encoded: list[int] = []

    def counting(module, args, kwargs):  # type: ignore[no-untyped-def]
        ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        if ids.shape[1] > 1:  # encoding prompts, not decoding one token per row
            encoded.append(int(mask[:, -ids.shape[1]:].sum()) if mask is not None else ids.numel())

    hook = backend.model.register_forward_pre_hook(counting, with_kwargs=True)
    try:
        got = backend.generate(step_two, sampling, n=3)
    finally:
        hook.remove()
    new_tokens = sum(len(backend.encode(b)) - len(backend.encode(a)) for a, b in zip(step_one, step_two, strict=True))
    assert 0 < sum(encoded) <= new_tokens + 2
    fresh = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=3)
    _same(got, fresh.generate(step_two, sampling, n=3))
