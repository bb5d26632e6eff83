"""The prefix KV store and a growing KV cache: a prompt extending an earlier one is not re-encoded.

Generation encodes each distinct prompt once however many samples it gets (its KV cache is copied n-fold),
reusing the KV cache of the longest prefix of it encoded lately: a trajectory's previous step, the system
message and demonstrations a batch shares. Scoring reuses the same store for the bases it encodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

MIN_SHARED_PREFIX = 8  # shorter shared prefixes are not worth a copy

KV = list[tuple[torch.Tensor, torch.Tensor]]  # one (keys, values) pair per layer, without the batch dimension


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


class PrefixStore:
    """KV caches of recently encoded token sequences of one model (and adapter), evicted least recently used
    first beyond a byte budget. A sequence that extends a stored one (the next step's prompt of a trajectory)
    replaces it; any sequence can reuse the longest stored prefix."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: dict[tuple[int, ...], KV] = {}  # oldest use first
        self.nbytes = 0

    def match(self, seq: Sequence[int]) -> tuple[int, KV | None]:
        """(length, layers) of the stored sequence sharing the longest prefix with `seq`, (0, None) below
        MIN_SHARED_PREFIX tokens."""
        best, found = 0, None
        for tokens in self.entries if seq else ():
            if tokens[0] == seq[0] and (k := common_prefix(tokens, seq)) > best:
                best, found = k, tokens
        if found is None or best < MIN_SHARED_PREFIX:
            return 0, None
        self.entries[found] = self.entries.pop(found)  # most recently used
        return best, self.entries[found]

    def add(self, tokens: tuple[int, ...], layers: KV) -> None:
        size = self._size(layers)
        if size > self.budget:
            return
        for old in [t for t in self.entries if len(t) <= len(tokens) and tokens[:len(t)] == t]:
            self._drop(old)
        self.entries[tokens] = layers
        self.nbytes += size
        while self.nbytes > self.budget:
            self._drop(next(iter(self.entries)))

    def _drop(self, tokens: tuple[int, ...]) -> None:
        self.nbytes -= self._size(self.entries.pop(tokens))

    @staticmethod
    def _size(layers: KV) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


class GrowingLayer(DynamicLayer):
    """`DynamicLayer` whose keys and values are views into buffers with room to spare: appending a decoding step
    writes in place instead of concatenating (copying) the whole cache of every row at every step."""

    buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        old = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        new = old + key_states.shape[-2]
        buf = self.buffers
        # The layer's tensors may have been replaced (batch_repeat_interleave, batch_select_indices): adopt them
        # into new buffers. A crop leaves a shorter view of the same buffer, overwritten from its end.
        if buf is None or buf[0].shape[-2] < new or self.keys.data_ptr() != buf[0].data_ptr() or \
                self.keys.shape[:2] != buf[0].shape[:2] or self.keys.stride() != buf[0].stride():
            shape = (*key_states.shape[:2], new + max(256, new // 4), key_states.shape[-1])
            buf = (key_states.new_empty(shape), value_states.new_empty(shape))
            if old:
                buf[0][:, :, :old] = self.keys
                buf[1][:, :, :old] = self.values
            self.buffers = buf
        buf[0][:, :, old:new] = key_states
        buf[1][:, :, old:new] = value_states
        self.keys, self.values = buf[0][:, :, :new], buf[1][:, :, :new]
        return self.keys, self.values


def growing_cache(model: Any) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def plain_layers(model: Any) -> bool:
    """Whether every layer of the model's default cache is a plain growing attention cache (not a sliding window,
    a recurrent state, an encoder-decoder): the stored KV caches can then be joined and extended."""
    config = model.config
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # an unusual config: leave it to the plain path
        return False
    return bool(layers) and model._supports_default_dynamic_cache() \
        and not getattr(config, "is_encoder_decoder", False) \
        and getattr(model.generation_config, "cache_implementation", None) is None \
        and all(type(layer) is DynamicLayer for layer in layers)


def prefilled(model: Any, store: PrefixStore, seqs: list[list[int]], n: int, pad_id: int
              ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
    """`model.generate`'s input ids and attention mask for a bucket, n rows per prompt, and a KV cache of all but
    each prompt's last token (so generate only feeds that token): the bucket's common prefix and each prompt's
    longest stored prefix are reused, only the rest is encoded, once per prompt, then copied n-fold."""
    heads = [s[:-1] for s in seqs]
    common = min(len(h) for h in heads)
    for h in heads[1:]:
        common = min(common, common_prefix(heads[0], h))
    if len(heads) > 1 and common >= MIN_SHARED_PREFIX and store.match(heads[0][:common])[0] < common:
        encode_prefixes(model, store, [heads[0][:common]], pad_id)  # e.g. the system message and demonstrations
    ids, mask, cache = encode_prefixes(model, store, heads, pad_id)
    last = torch.tensor([[s[-1]] for s in seqs], device=ids.device)
    ids = torch.cat([ids, last], dim=1).repeat_interleave(n, dim=0)
    mask = torch.cat([mask, torch.ones_like(last)], dim=1).repeat_interleave(n, dim=0)
    if n > 1 and cache.get_seq_length() > 0:
        cache.batch_repeat_interleave(n)
    return ids, mask, cache


def encode_prefixes(model: Any, store: PrefixStore, seqs: list[list[int]], pad_id: int
                    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
    """A KV cache of every token of `seqs` (one batch row each) with its ids and attention mask, stored for
    reuse. Row i is [pad, the stored prefix it reuses, pad, its rest, encoded now]: each part right-aligned at
    its own boundary, the mask hiding the padding; positions count unmasked tokens only, as generate does."""
    device = next(model.parameters()).device
    matches = [store.match(s) for s in seqs]
    width = max((m for m, _ in matches), default=0)
    tails = [s[m:] for s, (m, _) in zip(seqs, matches, strict=True)]
    rest = max((len(t) for t in tails), default=0)
    ids = torch.full((len(seqs), width + rest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, (seq, (m, _), tail) in enumerate(zip(seqs, matches, tails, strict=True)):
        if m:
            ids[row, width - m:width] = torch.tensor(seq[:m])
            mask[row, width - m:width] = 1
        if tail:
            ids[row, width + rest - len(tail):] = torch.tensor(tail)
            mask[row, width + rest - len(tail):] = 1
    cache = growing_cache(model)
    if width:
        reused = [kv for m, kv in matches if kv is not None]
        for layer_idx in range(len(reused[0])):
            k0, v0 = reused[0][layer_idx]
            keys = k0.new_zeros((len(seqs), k0.shape[0], width, k0.shape[2]))
            values = v0.new_zeros((len(seqs), v0.shape[0], width, v0.shape[2]))
            for row, (m, kv) in enumerate(matches):
                if kv is not None:
                    keys[row, :, width - m:] = kv[layer_idx][0][:, :m]
                    values[row, :, width - m:] = kv[layer_idx][1][:, :m]
            cache.update(keys, values, layer_idx)
    if rest:
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, width:]
        model(input_ids=ids[:, width:], attention_mask=mask, position_ids=positions, past_key_values=cache,
              use_cache=True, logits_to_keep=1)
        for row, (seq, tail) in enumerate(zip(seqs, tails, strict=True)):
            if tail and len(seq) >= MIN_SHARED_PREFIX:
                keep = mask[row].nonzero().squeeze(-1)
                store.add(tuple(seq), [(layer.keys[row][:, keep], layer.values[row][:, keep])
                                       for layer in cache.layers])
    return ids, mask, cache
