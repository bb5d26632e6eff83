"""The `hf` backend's CPU fast paths behind one switch (`fast=True`; RPLAT_HF_FAST=0: off).

- `prefix`: the prefix KV store (generation and scoring reuse what a backend encoded lately) and a KV cache
  that grows in place;
- `packed`: items sharing a base context scored against one encoding of it, their rests packed into one
  row, log-probs block by block over the vocabulary;
- `attention`: grouped-KV SDPA under a padding mask and per-member attention for packed rows;
- `internals`: the one check of the transformers internals all of these rely on.

Each gives the plain path's numbers (tests/test_llm_hf_fast.py). `HFBackend` imports this package only after
`internals.unavailable()` found nothing missing.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from rplat.llm.hf_fast import packed
from rplat.llm.hf_fast.attention import gqa_attention
from rplat.llm.hf_fast.prefix import PrefixStore, plain_layers, prefilled


class Owner(Protocol):
    """The backend the fast paths serve (an `HFBackend`), read at every call: the loader replaces its `model`
    when the first adapter wraps the shared base."""

    model: Any
    tokenizer: Any


def adapters(model: Any) -> tuple[str, ...]:
    """The peft adapters active on `model` (empty for a plain transformers model, and inside peft's
    `disable_adapter()`, where the base runs alone): KV caches encoded under one adapter are not another's."""
    # peft keeps naming the last adapter while disable_adapter() runs the bare base; without its flag (a peft
    # upgrade) the base's calls key on that adapter: right numbers, only less reuse.
    return _peft_adapters(model) + _nat_adapter(model)


def _peft_adapters(model: Any) -> tuple[str, ...]:
    if not getattr(model, "peft_config", None) or getattr(model, "_adapters_disabled", False):
        return ()
    active = model.active_adapters
    return tuple(active() if callable(active) else active)


def _nat_adapter(model: Any) -> tuple[str, ...]:
    """The active NAT adapter and its mode (mix, or neg: the negative LoRA alone), which change every layer's
    output as an adapter does; the first NAT layer speaks for all (they switch together)."""
    from rplat.methods.nat import NATLinear

    for module in model.modules():
        if isinstance(module, NATLinear):
            return () if module.active_adapter is None else (f"nat:{module.active_adapter}:{module.mode}",)
    return ()


def _suits(model: Any) -> bool:
    """A plain growing KV cache in every layer, and no active adapter that rewrites the prompt (prompt tuning,
    prefix tuning): LoRA-style adapters change weights only, so the same KV reuse holds."""
    configs = getattr(model, "peft_config", None) or {}
    return plain_layers(model) and not any(getattr(configs[name], "is_prompt_learning", False)
                                           for name in _peft_adapters(model))


class FastPaths:
    """The fast paths of one `HFBackend`: its prefix store holds KV caches of its current model and adapter only
    (a new model or another active adapter starts an empty store)."""

    def __init__(self, backend: Owner, budget: int) -> None:
        self.backend = backend
        self.budget = budget
        self._model: weakref.ref[Any] | None = None  # weak: a replaced model must not stay in memory for this
        self._adapters: tuple[str, ...] = ()
        self._suits = False
        self._store = PrefixStore(budget)

    def _current(self) -> None:
        model = self.backend.model
        active = adapters(model)
        if self._model is None or self._model() is not model or active != self._adapters:
            self._model, self._adapters = weakref.ref(model), active
            self._suits, self._store = _suits(model), PrefixStore(self.budget)

    def applies(self) -> bool:
        self._current()
        return self._suits

    def store(self) -> PrefixStore:
        self._current()
        return self._store

    def score_shared(self, ctx_ids: Sequence[list[int]], cont_ids: Sequence[list[int]], items: list[int],
                     out: list[list[float]]) -> list[int]:
        """Score the `items` that share a base context with others into `out`; return the others."""
        return packed.score_shared(self.backend.model, self.store(), ctx_ids, cont_ids, items, out)

    def generate(self, seqs: list[list[int]], n: int, options: dict[str, Any], seed: int | None
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """What `HFBackend._generate_bucket` returns, from prefilled KV caches (one encoding per distinct prompt,
        stored prefixes reused) and grouped-KV attention."""
        model = self.backend.model
        with gqa_attention(model):
            ids, mask, cache = prefilled(model, self.store(), seqs, n, self.backend.tokenizer.pad_token_id)
            if seed is not None:
                torch.manual_seed(seed)
            gen = model.generate(input_ids=ids, attention_mask=mask, past_key_values=cache, **options)
        return gen.sequences[:, ids.shape[1]:], gen.logits
