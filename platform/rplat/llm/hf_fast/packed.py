"""Packed scoring: a shared base context encoded once, the members' rests in one row.

All rationales of one document share the system prompt and the document's text up to each of them, a
rationale's two prompts share everything before it, a step's candidates share their whole context. The base
is encoded once (from the longest prefix of it in the prefix store); then the members' own rests (context
tail + continuation) are packed into one row against the base's KV cache, each seeing only the part of the
base it shares, and log-probs are computed only where a continuation token is scored, vocabulary block by
vocabulary block. Memory scales with continuation length, not vocabulary times sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from rplat.llm.hf_fast.attention import Segments, gqa_attention
from rplat.llm.hf_fast.prefix import MIN_SHARED_PREFIX, PrefixStore, common_prefix, growing_cache

SHARE_WINDOW = 256  # items considered together when grouping by shared prefix
PACK_TOKENS = 512  # tokens of shared-prefix members encoded in one packed row
VOCAB_BLOCK = 2048  # vocabulary entries per block of the blockwise log-softmax


def share_groups(items: list[int], ctx_ids: Sequence[list[int]]) -> Iterator[tuple[int, list[int]]]:
    """(base, members): the longest remaining context is a base; every remaining item that shares at least half
    of its context (and MIN_SHARED_PREFIX tokens) with it joins it. Candidates come from a window of the items
    in token order, where contexts that share prefixes sit together."""
    order = sorted(items, key=lambda i: ctx_ids[i])
    for start in range(0, len(order), SHARE_WINDOW):
        left = order[start:start + SHARE_WINDOW]
        while left:
            base = max(left, key=lambda i: len(ctx_ids[i]))
            members, rest = [], []
            for i in left:
                lcp = common_prefix(ctx_ids[base], ctx_ids[i])
                (members if i == base or (lcp >= MIN_SHARED_PREFIX and 2 * lcp >= len(ctx_ids[i]))
                 else rest).append(i)
            yield base, members
            left = rest


def score_shared(model: Any, store: PrefixStore, ctx_ids: Sequence[list[int]], cont_ids: Sequence[list[int]],
                 items: list[int], out: list[list[float]]) -> list[int]:
    """Score the `items` that share a base with others into `out`; return the rest (they share nothing)."""
    singles: list[int] = []
    for base, members in share_groups(items, ctx_ids):
        if len(members) == 1:
            singles += members
            continue
        scored = _score_group(model, store, ctx_ids[base], [ctx_ids[i] for i in members],
                              [cont_ids[i] for i in members])
        for i, lps in zip(members, scored, strict=True):
            out[i] = lps
    return singles


def _score_group(model: Any, store: PrefixStore, base: list[int], ctxs: list[list[int]], conts: list[list[int]]
                 ) -> list[list[float]]:
    # Each member reuses the base's first `shared[i]` tokens; at least its last context token is encoded,
    # since its logits predict the continuation's first token.
    shared = [min(common_prefix(base, c), len(c) - 1) for c in ctxs]
    width = max(shared)
    # The packs' tokens are appended to the base's cache in place, not concatenated with it, and cropped off.
    cache = growing_cache(model)
    _encode_base(model, store, base[:width], cache)
    # A tail ends before its continuation's last token: that token is only a target, and no later token of its
    # member (none) reads it, so encoding it would be wasted.
    tails = [list(c[s:]) + list(k[:-1]) for c, s, k in zip(ctxs, shared, conts, strict=True)]
    results: list[list[float]] = [[] for _ in ctxs]
    # The members' tails are packed into one row, no padding: each token sees the base up to its member's
    # shared length and its own tail up to itself (a block-diagonal causal mask), at its own positions.
    pack: list[int] = []
    for r in sorted(range(len(tails)), key=lambda r: len(tails[r])):
        if pack and sum(len(tails[m]) for m in pack) + len(tails[r]) > PACK_TOKENS:
            _score_pack(model, cache, width, [shared[m] for m in pack], [tails[m] for m in pack],
                        [conts[m] for m in pack], results, pack)
            pack = []
        pack.append(r)
    _score_pack(model, cache, width, [shared[m] for m in pack], [tails[m] for m in pack], [conts[m] for m in pack],
                results, pack)
    return results


def _encode_base(model: Any, store: PrefixStore, base: list[int], cache: Any) -> None:
    """Fill `cache` with the KV of `base`: the longest stored prefix of it is copied in and only the rest encoded,
    and the base is stored in turn. The system prompt that every document's base begins with, a document whose
    rationales fall into two batches, or the scorer's context of a trajectory's previous step, which the next
    step's context extends, are encoded once."""
    device = next(model.parameters()).device
    start, stored = store.match(base)
    if stored is not None:
        for layer_idx, (keys, values) in enumerate(stored):
            cache.update(keys[None, :, :start], values[None, :, :start], layer_idx)
    if start < len(base):
        model(input_ids=torch.tensor([base[start:]], device=device), past_key_values=cache,
              position_ids=torch.arange(start, len(base), device=device)[None], use_cache=True, logits_to_keep=1)
        if len(base) >= MIN_SHARED_PREFIX:
            # copies: the packs are written into the cache's buffers after the base
            store.add(tuple(base), [(layer.keys[0].clone(), layer.values[0].clone()) for layer in cache.layers])


def _score_pack(model: Any, cache: Any, width: int, shared: list[int], tails: list[list[int]],
                conts: list[list[int]], results: list[list[float]], slots: list[int]) -> None:
    device = next(model.parameters()).device
    total = sum(len(t) for t in tails)
    ids = torch.tensor([[tok for t in tails for tok in t]], device=device)
    positions = torch.empty((1, total), dtype=torch.long, device=device)
    mask = torch.zeros((1, 1, total, width + total), dtype=torch.bool, device=device)
    keep: list[int] = []
    starts: list[int] = []
    start = 0
    for s, tail, cont in zip(shared, tails, conts, strict=True):
        starts.append(start)
        end = start + len(tail)
        positions[0, start:end] = torch.arange(s, s + len(tail))
        mask[0, 0, start:end, :s] = True
        mask[0, 0, start:end, width + start:width + end] = torch.ones(len(tail), len(tail), dtype=torch.bool,
                                                                      device=device).tril()
        keep += range(end - len(cont), end)  # the positions predicting the continuation's tokens
        start = end
    keep_at = torch.tensor(keep, device=device)
    targets = torch.tensor([tok for cont in conts for tok in cont], device=device)
    head = plain_head(model)
    segments = Segments(width, total, list(zip(starts, shared, [len(t) for t in tails], strict=True)))
    with gqa_attention(model, segments):
        if head is None:
            logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache, position_ids=positions,
                           logits_to_keep=keep_at).logits[0]
        else:
            hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, past_key_values=cache,
                                         position_ids=positions).last_hidden_state[0, keep_at]
    cache.crop(-total)  # back to the base for the next pack
    if head is None:
        logits = logits.float()
        picked_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        # log p = logit - logsumexp(logits), computed in place: the logits are this call's own, fresh tensor
        top = logits.amax(dim=-1, keepdim=True)
        picked = (picked_logit - top.squeeze(-1) - logits.sub_(top).exp_().sum(dim=-1).log()).tolist()
    else:
        picked = token_logprobs(hidden, head, targets).tolist()
    at = 0
    for slot, cont in zip(slots, conts, strict=True):
        results[slot] = picked[at:at + len(cont)]
        at += len(cont)


def plain_head(model: Any) -> torch.Tensor | None:
    """The output projection's weight when the logits are exactly `hidden @ weight.T` (a bias-free linear head,
    no logit scaling or soft-capping, no adapter on it), so that log-probs can be computed block by block."""
    head = model.get_output_embeddings()
    config = model.config
    if type(head) is not torch.nn.Linear or head.bias is not None or not hasattr(model, "get_decoder") or \
            any(getattr(config, name, None) not in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale")):
        return None
    return head.weight


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(hidden @ weight.T)[i, targets[i]] for each row i, without the whole [rows, vocabulary] logits:
    block by block of VOCAB_BLOCK tokens, a running log-sum-exp (as flash attention keeps its softmax). Each block
    stays in cache between its product and its exponentials; the full logits of a pack would not."""
    rows = hidden.shape[0]
    top = torch.full((rows,), float("-inf"), device=hidden.device)
    total = torch.zeros(rows, device=hidden.device)
    picked = torch.empty(rows, device=hidden.device)
    for start in range(0, weight.shape[0], VOCAB_BLOCK):
        logits = (hidden @ weight[start:start + VOCAB_BLOCK].T).float()
        inside = ((targets >= start) & (targets < start + logits.shape[1])).nonzero().squeeze(-1)
        picked[inside] = logits[inside, targets[inside] - start]
        new_top = torch.maximum(top, logits.amax(dim=-1))
        total = total * (top - new_top).exp() + logits.sub_(new_top.unsqueeze(-1)).exp_().sum(dim=-1)
        top = new_top
    return picked - top - total.log()
