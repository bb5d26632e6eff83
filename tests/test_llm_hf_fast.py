"""The `hf` fast paths give the plain path's numbers: packing, prefixes, generation, LoRA.

Log-probs agree within 1e-4 (float32), greedy tokens are identical, seeded samples are the same tokens. When
transformers no longer has an internal they rely on, the backend says so and takes the plain path."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from rplat.llm import Completion, Sampling
from rplat.llm.hf import FAST_ENV, PREFIX_CACHE_ENV, HFBackend
from rplat.llm.hf_fast import internals, packed
from rplat.llm.hf_fast.prefix import PrefixStore

from tiny_lm import tiny_model, tiny_tokenizer

SYSTEM = "<|im_start|>system\nYour task is to generate future text given preceeding text<|im_end|>\n"
UNITS = ["Tom has 3 apples.", "He buys 4 more apples at the market.", "Then he eats 2 of them.",
         "So he has 5 apples left.", "The answer is 5."]
GEN_PROMPTS = [
    "<|im_start|>system\nQuestion: Tom has 3 apples and buys 4 more.<|im_end|>\n<|im_start|>user\nHow many?",
    "<|im_start|>system\nQuestion: Tom has 3 apples and buys 4 more.<|im_end|>\n<|im_start|>user\nThe cat sat",
    "Problem: compute 12 * 3. Solution:",
    "A",
]


@pytest.fixture(autouse=True)
def _no_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAST_ENV, raising=False)
    monkeypatch.delenv(PREFIX_CACHE_ENV, raising=False)


def _pair(model: Any = None, **options: Any) -> tuple[HFBackend, HFBackend]:
    """(fast, plain) backends over the same weights."""
    model = model if model is not None else tiny_model()
    fast = HFBackend(model, tiny_tokenizer(), fingerprint="tiny", batch_size=3, **options)
    plain = HFBackend(model, tiny_tokenizer(), fingerprint="tiny", batch_size=3, fast=False)
    assert fast.fast and not plain.fast
    return fast, plain


def _close(got: list[list[float]], expected: list[list[float]], tol: float = 1e-4) -> None:
    assert [len(r) for r in got] == [len(r) for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a == pytest.approx(b, abs=tol)


def _same(got: list[list[Completion]], expected: list[list[Completion]]) -> None:
    assert [[c.token_ids for c in cs] for cs in got] == [[c.token_ids for c in cs] for cs in expected]
    assert [[c.text for c in cs] for cs in got] == [[c.text for c in cs] for cs in expected]
    assert [[c.finish_reason for c in cs] for cs in got] == [[c.finish_reason for c in cs] for cs in expected]
    for cs, es in zip(got, expected, strict=True):
        for c, e in zip(cs, es, strict=True):
            assert list(c.token_logprobs) == pytest.approx(list(e.token_logprobs), abs=1e-4)


def _document_items(units: list[str] = UNITS) -> tuple[list[str], list[str]]:
    """The loss-delta shape: every rationale position of a document, each prompt without and with a rationale."""
    contexts, continuations = [], []
    for k in range(1, len(units)):
        preceding = " ".join(units[:k])
        for user in (preceding, f"{preceding}. Count what he has after each event"):
            contexts.append(f"{SYSTEM}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
            continuations.append(units[k])
    return contexts, continuations


class _Counting:
    """Records (width, unpadded tokens) of every pass through the model's decoder: prompt and base encodings,
    packed rows, padded batches and decoding steps alike."""

    def __init__(self, model: Any) -> None:
        self.passes: list[tuple[int, int]] = []
        self.decoder = model.get_decoder()

    def __enter__(self) -> _Counting:
        def count(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
            width = ids.shape[1]
            self.passes.append((width, int(mask[:, -width:].sum()) if mask is not None and mask.dim() == 2
                                else ids.numel()))

        self.hook = self.decoder.register_forward_pre_hook(count, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.hook.remove()

    @property
    def tokens(self) -> int:
        return sum(tokens for _, tokens in self.passes)


# --- the internals check ---------------------------------------------------------------------------------------

def test_the_transformers_internals_the_fast_paths_rely_on_are_all_present() -> None:
    import transformers

    found = internals.problems()
    assert not found, (f"transformers {transformers.__version__} broke rplat's hf fast paths: {'; '.join(found)}. "
                       "Adapt platform/rplat/llm/hf_fast/ to it (until then HFBackend warns and takes the plain path).")


@pytest.fixture
def fresh_check() -> Any:
    internals.problems.cache_clear()
    yield
    internals.problems.cache_clear()


@pytest.mark.parametrize("breakage", ["missing-method", "crop-copies"])
def test_a_changed_internal_turns_the_fast_paths_off_with_a_warning_and_the_plain_numbers(
        breakage: str, monkeypatch: pytest.MonkeyPatch, fresh_check: None) -> None:
    from transformers import GenerationMixin
    from transformers.cache_utils import DynamicLayer

    if breakage == "missing-method":
        monkeypatch.delattr(GenerationMixin, "_supports_default_dynamic_cache")
        expected = "GenerationMixin._supports_default_dynamic_cache is gone"
    else:
        crop = DynamicLayer.crop

        def copying_crop(self: Any, n: int) -> None:
            crop(self, n)
            self.keys, self.values = self.keys.clone(), self.values.clone()

        monkeypatch.setattr(DynamicLayer, "crop", copying_crop)
        expected = "DynamicLayer.crop(-n) no longer keeps a view"
    model = tiny_model()
    with pytest.warns(RuntimeWarning, match="hf fast paths are off: transformers .* changed internals") as caught:
        backend = HFBackend(model, tiny_tokenizer(), fingerprint="tiny", batch_size=3)
    assert expected in str(caught[0].message)
    assert not backend.fast
    contexts, continuations = _document_items()
    monkeypatch.undo()  # the plain path's reference numbers, computed with transformers as it is
    _close(backend.score(contexts, continuations),
           HFBackend(model, tiny_tokenizer(), fingerprint="tiny", fast=False).score(contexts, continuations))


def test_a_model_whose_cache_is_not_a_plain_growing_one_takes_the_plain_path() -> None:
    model = tiny_model()
    model.generation_config.cache_implementation = "static"
    backend = HFBackend(model, tiny_tokenizer(), fingerprint="tiny", batch_size=3)
    assert not backend.fast
    model.generation_config.cache_implementation = None
    backend.model = tiny_model(seed=1)  # a new model is looked at afresh
    assert backend.fast


# --- scoring ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kv_heads", "pack_tokens"), [(2, None), (4, None), (2, 24)],
                         ids=["grouped-kv-heads", "one-kv-head-per-head", "several-packs"])
def test_rationales_of_one_document_share_one_encoding_of_it_and_score_as_on_the_plain_path(
        kv_heads: int, pack_tokens: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rationale of a document, each without and with it, in shuffled order, plus a foreign item: the
    document is encoded once, yet every item scores as on the plain path, with grouped or one-per-head KV heads
    (both attend per packed member), and with the members spread over several packs."""
    if pack_tokens is not None:
        monkeypatch.setattr(packed, "PACK_TOKENS", pack_tokens)
    fast, plain = _pair(tiny_model(kv_heads=kv_heads))
    contexts, continuations = _document_items()
    contexts.insert(3, "The cat")
    continuations.insert(3, " sat on the mat")
    order = [5, 0, 8, 3, 2, 7, 1, 6, 4]
    contexts, continuations = [contexts[i] for i in order], [continuations[i] for i in order]
    with _Counting(fast.model) as counted:
        scored = fast.score(contexts, continuations)
    _close(scored, plain.score(contexts, continuations))
    alone = sum(len(fast.encode(c)) + len(fast.encode_continuation(k)) for c, k in zip(contexts, continuations,
                                                                                        strict=True))
    assert counted.tokens < alone * 0.6


def test_a_base_encoded_by_an_earlier_call_is_reused_not_encoded_again() -> None:
    """A document whose rationales fall into two score calls (two batches of the job): the second call copies
    the document's stored KV instead of encoding it, and still scores every item as on the plain path."""
    fast, plain = _pair()
    contexts, continuations = _document_items(UNITS[:4])
    contexts, continuations = contexts[::-1], continuations[::-1]  # the longest document prefix first
    with _Counting(fast.model) as first_passes:
        first = fast.score(contexts[:2], continuations[:2])
    with _Counting(fast.model) as second_passes:
        second = fast.score(contexts[2:], continuations[2:])
    with _Counting(fast.model) as again_passes:
        again = fast.score(contexts[2:], continuations[2:])
    _close(first + second, plain.score(contexts, continuations))
    assert len(first_passes.passes) == len(second_passes.passes) == 2  # each: its base, then one packed row
    # the second call's base (the document up to its second unit, and its rationale) extends a prefix of the
    # first call's base: only its own last tokens are encoded
    _, second_base = second_passes.passes[0]
    assert 0 < second_base < len(fast.encode(contexts[2])) - len(fast.encode(SYSTEM))
    assert again_passes.passes == second_passes.passes[1:]  # the same base once more: all of it is stored
    _close(again, second, tol=1e-5)


@pytest.mark.parametrize("block", [7, 64, 4096], ids=["partial-last-block", "several-blocks", "one-block"])
def test_blockwise_token_logprobs_equal_a_full_log_softmax(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed, "VOCAB_BLOCK", block)
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 16, generator=generator) * 3
    weight = torch.randn(200, 16, generator=generator)
    targets = torch.tensor([0, 199, 6, 7, 63, 64, 128, 150, 3])
    expected = torch.log_softmax(hidden @ weight.T, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert packed.token_logprobs(hidden, weight, targets).tolist() == pytest.approx(expected.tolist(), abs=1e-5)


def test_models_whose_logits_are_not_a_plain_projection_score_through_the_full_logits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Soft-capped or scaled logits (Gemma 2, Cohere) cannot be computed block by block: the full head is used."""
    fast, plain = _pair()
    assert packed.plain_head(fast.model) is not None
    fast.model.config.logit_scale = 0.5
    assert packed.plain_head(fast.model) is None
    del fast.model.config.logit_scale
    calls = []
    blockwise = packed.token_logprobs
    monkeypatch.setattr(packed, "token_logprobs", lambda *args: calls.append(1) or blockwise(*args))
    contexts, continuations = ["Tom has 3 apples. He buys 4", "Tom has 3 apples. He eats 1"], [" more.", " of them."]
    by_blocks = fast.score(contexts, continuations)
    assert calls  # the two share their context's prefix: one packed row, scored block by block
    monkeypatch.setattr(packed, "plain_head", lambda model: None)
    full = fast.score(contexts, continuations)
    assert len(calls) == 1
    _close(by_blocks, full, tol=1e-5)
    _close(full, plain.score(contexts, continuations))


def test_the_prefix_store_keeps_within_its_budget_least_recently_used_out_first() -> None:
    def kv(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, tokens, 2), torch.zeros(1, tokens, 2))]  # 16 bytes per token

    store = PrefixStore(budget=16 * 40)
    a, b = tuple(range(10)), tuple(range(100, 115))
    store.add(a, kv(10))
    store.add(b, kv(15))
    assert store.match([*a, 7, 7])[0] == 10  # a is now the most recently used
    store.add(tuple(range(200, 220)), kv(20))  # over the budget: b goes
    assert store.match(list(b))[0] == 0 and store.match(list(a))[0] == 10
    assert store.nbytes == 16 * 30 <= store.budget
    store.add((*a, 1, 2), kv(12))  # extends a: replaces it
    assert list(store.entries) == [tuple(range(200, 220)), (*a, 1, 2)]
    store.add(tuple(range(300, 350)), kv(50))  # larger than the whole budget: not stored, nothing evicted
    assert len(store.entries) == 2 and store.nbytes == 16 * 32


def test_with_no_prefix_budget_nothing_is_stored_and_the_numbers_are_the_same() -> None:
    fast, plain = _pair(prefix_cache_bytes=0)
    contexts, continuations = _document_items()
    _close(fast.score(contexts, continuations), plain.score(contexts, continuations))
    _same(fast.generate(GEN_PROMPTS, Sampling(temperature=1.0, max_tokens=6, seed=2), n=2),
          plain.generate(GEN_PROMPTS, Sampling(temperature=1.0, max_tokens=6, seed=2), n=2))
    assert fast._fast is not None and not fast._fast.store().entries


# --- generation ------------------------------------------------------------------------------------------------

def test_greedy_generation_gives_the_plain_paths_tokens() -> None:
    fast, plain = _pair()
    sampling = Sampling(max_tokens=8)
    _same(fast.generate(GEN_PROMPTS, sampling), plain.generate(GEN_PROMPTS, sampling))
    _same(fast.generate(GEN_PROMPTS, sampling, n=3), plain.generate(GEN_PROMPTS, sampling, n=3))


def test_seeded_sampling_gives_the_plain_paths_tokens_from_fresh_and_from_stored_prefixes() -> None:
    fast, plain = _pair()
    sampling = Sampling(temperature=1.0, max_tokens=8, seed=7)
    expected = plain.generate(GEN_PROMPTS, sampling, n=3)
    assert len({c.token_ids for c in expected[0]}) > 1  # the n samples of a prompt are not copies
    _same(fast.generate(GEN_PROMPTS, sampling, n=3), expected)
    _same(fast.generate(GEN_PROMPTS, sampling, n=3), expected)  # again, now from stored prefixes


def test_stop_strings_cut_samples_as_on_the_plain_path() -> None:
    fast, plain = _pair()
    sampling = Sampling(temperature=1.0, max_tokens=12, seed=3, stop=(" ", "."))
    _same(fast.generate(GEN_PROMPTS, sampling, n=3), plain.generate(GEN_PROMPTS, sampling, n=3))


def test_a_prompt_extending_an_earlier_one_encodes_only_its_new_tokens() -> None:
    """The next step's prompt of a trajectory starts with the previous step's prompt: that part is not encoded
    again, and the output is what the plain path generates for it."""
    fast, plain = _pair()
    step_one = [GEN_PROMPTS[0], GEN_PROMPTS[2]]
    step_two = [step_one[0] + " 7 apples.<|im_end|>\n<|im_start|>assistant\n", step_one[1] + " 36"]
    sampling = Sampling(temperature=0.7, max_tokens=5, seed=1)
    fast.generate(step_one, sampling, n=3)
    with _Counting(fast.model) as counted:
        got = fast.generate(step_two, sampling, n=3)
    encoded = sum(tokens for width, tokens in counted.passes if width > 1)  # not the decoding steps
    new_tokens = sum(len(fast.encode(b)) - len(fast.encode(a)) for a, b in zip(step_one, step_two, strict=True))
    assert 0 < encoded <= new_tokens
    _same(got, plain.generate(step_two, sampling, n=3))


# --- peft: LoRA adapters loaded unmerged ------------------------------------------------------------------------

def _lora_model() -> Any:
    """The tiny model with two random (non-zero) LoRA adapters, unmerged, "first" active."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(5)
    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type="CAUSAL_LM",
                                                    target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "down_proj"]), adapter_name="first")
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=16, init_lora_weights=False, task_type="CAUSAL_LM",
                                           target_modules=["q_proj", "v_proj", "up_proj"]))
    model.set_adapter("first")
    return model.eval()


def _merged(model: Any) -> HFBackend:
    return HFBackend(copy.deepcopy(model).merge_and_unload(), tiny_tokenizer(), fingerprint="merged", batch_size=3,
                     fast=False)


def test_a_lora_view_scores_as_the_plain_path_and_as_the_merged_model() -> None:
    model = _lora_model()
    fast, plain = _pair(model)
    contexts, continuations = _document_items()
    scored = fast.score(contexts, continuations)
    _close(scored, plain.score(contexts, continuations))
    _close(scored, _merged(model).score(contexts, continuations))
    base = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="base", fast=False).score(contexts, continuations)
    assert max(abs(a - b) for r, s in zip(scored, base, strict=True) for a, b in zip(r, s, strict=True)) > 0.05


def test_a_lora_view_generates_the_plain_paths_and_the_merged_models_tokens() -> None:
    model = _lora_model()
    fast, plain = _pair(model)
    merged = _merged(model)
    for sampling, n in ((Sampling(max_tokens=8), 1), (Sampling(temperature=1.0, max_tokens=8, seed=4), 3)):
        got = fast.generate(GEN_PROMPTS, sampling, n)
        _same(got, plain.generate(GEN_PROMPTS, sampling, n))
        _same(got, merged.generate(GEN_PROMPTS, sampling, n))


def test_switching_the_active_adapter_starts_an_empty_prefix_store() -> None:
    """One base module shared between adapters, switched per call: KV stored under one adapter is never reused
    under another, so each view scores as its own merged model."""
    model = _lora_model()
    fast = HFBackend(model, tiny_tokenizer(), fingerprint="first", batch_size=3)
    contexts, continuations = _document_items()
    fast.score(contexts, continuations)
    assert fast._fast is not None and fast._fast.store().entries
    model.set_adapter("second")
    assert not fast._fast.store().entries
    _close(fast.score(contexts, continuations), _merged(model).score(contexts, continuations))


def test_the_bare_base_under_disable_adapter_keys_its_store_as_no_adapter() -> None:
    """A base view's calls run inside peft's disable_adapter(): its KV is the bare base's, whichever adapter
    was switched on last, so its prefix store survives adapter switches in between."""
    from rplat.llm.hf_fast import adapters

    model = _lora_model()
    with model.disable_adapter():
        assert adapters(model) == ()
        model.set_adapter("second")
        assert adapters(model) == ()
    assert adapters(model) == ("second",)
    bare = HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="bare", fast=False)
    base_view = HFBackend(model, tiny_tokenizer(), fingerprint="base", batch_size=3)
    contexts, continuations = _document_items()
    with model.disable_adapter():
        _close(base_view.score(contexts, continuations), bare.score(contexts, continuations))
        assert base_view._fast is not None and base_view._fast.store().entries
