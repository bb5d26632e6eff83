"""The `hf` backend: a transformers causal LM in-process (CPU or GPU), batched and length-bucketed.

Generation encodes each prompt once for its n samples, reusing the KV cache of the longest earlier prompt it
extends (a trajectory's previous step, shared demonstrations), and left-pads each bucket of similar-length
prompts. Scoring encodes text that several items share
(a document's text before each of its rationales, a step's context before each candidate) once and scores
every item's own rest against its KV cache; it keeps logits only for the continuations, so memory scales
with continuation length, not vocabulary times sequence. Token log-probs are always the raw model's (log-softmax of the logits), whatever the
sampling temperature, so they agree with an OpenAI-compatible server's `logprobs`.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rplat.llm import Completion, Message, Sampling

MIN_SHARED_PREFIX = 8
SHARE_WINDOW = 256  # items considered together when grouping by shared prefix
PACK_TOKENS = 512  # tokens of shared-prefix members encoded in one packed row
VOCAB_BLOCK = 2048  # vocabulary entries per block of the blockwise log-softmax


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def _buckets(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


class HFBackend:
    def __init__(self, model: Any, tokenizer: Any, *, fingerprint: str, batch_size: int = 8) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.device = next(model.parameters()).device
        self._prefix_store: _PrefixCache | None = None  # KV caches of recent prompts (generation)

    @classmethod
    def load(cls, path: str | Path, *, fingerprint: str, device: str | None = None, batch_size: int = 8
             ) -> HFBackend:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype).to(device)
        return cls(model, tokenizer, fingerprint=fingerprint, batch_size=batch_size)

    # --- text <-> ids ------------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        """Prompt ids: the tokenizer's BOS is added unless the text (e.g. a rendered chat) already starts with it."""
        bos = self.tokenizer.bos_token
        add_special = bool(bos) and not text.startswith(bos)
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def encode_continuation(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _left_pad(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            if seq:
                ids[row, width - len(seq):] = torch.tensor(seq)
                mask[row, width - len(seq):] = 1
        return ids.to(self.device), mask.to(self.device)

    # --- scoring -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        if len(contexts) != len(continuations):
            raise ValueError("score() needs one continuation per context")
        ctx_ids = [self.encode(c) for c in contexts]
        cont_ids = [self.encode_continuation(c) for c in continuations]
        return self.score_ids(ctx_ids, cont_ids)

    @torch.inference_mode()
    def score_ids(self, ctx_ids: Sequence[list[int]], cont_ids: Sequence[list[int]]) -> list[list[float]]:
        """Per-token log-probs of each continuation. Items whose contexts share a long prefix with one base context
        are scored against a single encoding of it: all rationales of one document share the system prompt and
        the document's text up to each of them, a rationale's two prompts share everything before it, a step's
        candidates share their whole context. The base is encoded once; then the members' own rests (context
        tail + continuation) are packed into one row against the base's KV cache, each seeing only the part of
        the base it shares. Items that share nothing are scored in left-padded, length-bucketed batches."""
        if any(not c for c, k in zip(ctx_ids, cont_ids, strict=True) if k):
            raise ValueError("every scored continuation needs a non-empty context (its first token is predicted from it)")
        out: list[list[float]] = [[] for _ in ctx_ids]
        singles: list[int] = []
        for base, members in self._share_groups([i for i, c in enumerate(cont_ids) if c], ctx_ids):
            if len(members) == 1:
                singles += members
                continue
            for i, lps in zip(members, self._score_shared(ctx_ids[base], [ctx_ids[i] for i in members],
                                                          [cont_ids[i] for i in members]), strict=True):
                out[i] = lps
        lengths = [len(ctx_ids[i]) + len(cont_ids[i]) for i in singles]
        for batch in _buckets(lengths, self.batch_size):
            members = [singles[k] for k in batch]
            for g, lps in zip(members, self._score_batch([ctx_ids[g] for g in members],
                                                         [cont_ids[g] for g in members]), strict=True):
                out[g] = lps
        return out

    @staticmethod
    def _share_groups(items: list[int], ctx_ids: Sequence[list[int]]) -> Iterator[tuple[int, list[int]]]:
        """(base, members): the longest remaining context is a base; every remaining item that shares at least
        half of its context (and MIN_SHARED_PREFIX tokens) with it joins it. Candidates come from a window of
        the items in token order, where contexts that share prefixes sit together."""
        order = sorted(items, key=lambda i: ctx_ids[i])
        for start in range(0, len(order), SHARE_WINDOW):
            left = order[start:start + SHARE_WINDOW]
            while left:
                base = max(left, key=lambda i: len(ctx_ids[i]))
                members, rest = [], []
                for i in left:
                    lcp = _common_prefix(ctx_ids[base], ctx_ids[i])
                    (members if i == base or (lcp >= MIN_SHARED_PREFIX and 2 * lcp >= len(ctx_ids[i]))
                     else rest).append(i)
                yield base, members
                left = rest

    def _score_shared(self, base: list[int], ctxs: list[list[int]], conts: list[list[int]]) -> list[list[float]]:
        # Each member reuses the base's first `shared[i]` tokens; at least its last context token is encoded,
        # since its logits predict the continuation's first token.
        shared = [min(_common_prefix(base, c), len(c) - 1) for c in ctxs]
        width = max(shared)
        # The packs' tokens are appended to the base's cache in place, not concatenated with it, and cropped off.
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        cache.layers = [_growing_layer()() for _ in cache.layers]
        self._encode_base(base[:width], cache)
        # A tail ends before its continuation's last token: that token is only a target, and no later token of
        # its member (none) reads it, so encoding it would be wasted.
        tails = [list(c[s:]) + list(k[:-1]) for c, s, k in zip(ctxs, shared, conts, strict=True)]
        results: list[list[float]] = [[] for _ in ctxs]
        # The members' tails are packed into one row, no padding: each token sees the base up to its member's
        # shared length and its own tail up to itself (a block-diagonal causal mask), at its own positions.
        pack: list[int] = []
        for r in sorted(range(len(tails)), key=lambda r: len(tails[r])):
            if pack and sum(len(tails[m]) for m in pack) + len(tails[r]) > PACK_TOKENS:
                self._score_packed(cache, width, [shared[m] for m in pack], [tails[m] for m in pack],
                                   [conts[m] for m in pack], results, pack)
                pack = []
            pack.append(r)
        self._score_packed(cache, width, [shared[m] for m in pack], [tails[m] for m in pack],
                           [conts[m] for m in pack], results, pack)
        return results

    def _encode_base(self, base: list[int], cache: Any) -> None:
        """Fill `cache` with the KV of `base`. Where prefixes can be reused, the longest stored prefix of it is
        copied in and only the rest encoded, and the base is stored in turn: the system prompt that every
        document's base begins with, a document whose rationales fall into two batches, or the scorer's context
        of a trajectory's previous step, which the next step's context extends, are encoded once."""
        store = self._prefixes() if self._can_reuse_prefixes() else None
        start, stored = store.match(base) if store is not None else (0, None)
        if stored is not None:
            for layer_idx, (keys, values) in enumerate(stored):
                cache.update(keys[None, :, :start], values[None, :, :start], layer_idx)
        if start < len(base):
            self.model(input_ids=torch.tensor([base[start:]], device=self.device), past_key_values=cache,
                       position_ids=torch.arange(start, len(base), device=self.device)[None], use_cache=True,
                       logits_to_keep=1)
            if store is not None and len(base) >= MIN_SHARED_PREFIX:
                # copies: the packs are written into the cache's buffers after the base
                store.add(tuple(base), [(layer.keys[0].clone(), layer.values[0].clone()) for layer in cache.layers])

    def _score_packed(self, cache: Any, width: int, shared: list[int], tails: list[list[int]],
                      conts: list[list[int]], results: list[list[float]], slots: list[int]) -> None:
        total = sum(len(t) for t in tails)
        ids = torch.tensor([[tok for t in tails for tok in t]], device=self.device)
        positions = torch.empty((1, total), dtype=torch.long, device=self.device)
        mask = torch.zeros((1, 1, total, width + total), dtype=torch.bool, device=self.device)
        keep: list[int] = []
        starts: list[int] = []
        lengths = [len(t) for t in tails]
        start = 0
        for s, tail, cont in zip(shared, tails, conts, strict=True):
            starts.append(start)
            end = start + len(tail)
            positions[0, start:end] = torch.arange(s, s + len(tail))
            mask[0, 0, start:end, :s] = True
            mask[0, 0, start:end, width + start:width + end] = torch.ones(len(tail), len(tail), dtype=torch.bool,
                                                                          device=self.device).tril()
            keep += range(end - len(cont), end)  # the positions predicting the continuation's tokens
            start = end
        keep_at = torch.tensor(keep, device=self.device)
        targets = torch.tensor([tok for cont in conts for tok in cont], device=self.device)
        head = self._plain_head()
        with _gqa_attention(self.model, _Segments(width, total, list(zip(starts, shared, lengths, strict=True)))):
            if head is None:
                logits = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, position_ids=positions,
                                    logits_to_keep=keep_at).logits[0]
            else:
                hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask, past_key_values=cache,
                                                  position_ids=positions).last_hidden_state[0, keep_at]
        cache.crop(-total)  # back to the base for the next pack
        if head is None:
            logits = logits.float()
            picked_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            # log p = logit - logsumexp(logits), computed in place: the logits are this call's own, fresh tensor
            top = logits.amax(dim=-1, keepdim=True)
            picked = (picked_logit - top.squeeze(-1) - logits.sub_(top).exp_().sum(dim=-1).log()).tolist()
        else:
            picked = _token_logprobs(hidden, head, targets).tolist()
        at = 0
        for slot, cont in zip(slots, conts, strict=True):
            results[slot] = picked[at:at + len(cont)]
            at += len(cont)

    def _plain_head(self) -> torch.Tensor | None:
        """The output projection's weight when the logits are exactly `hidden @ weight.T` (a bias-free linear head,
        no logit scaling or soft-capping), so that log-probs can be computed vocabulary block by block."""
        head = self.model.get_output_embeddings()
        config = self.model.config
        if type(head) is not torch.nn.Linear or head.bias is not None or not hasattr(self.model, "get_decoder") or \
                any(getattr(config, name, None) not in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale")):
            return None
        return head.weight

    def _score_batch(self, ctxs: list[list[int]], conts: list[list[int]]) -> list[list[float]]:
        """Score unrelated items in one left-padded batch, keeping logits only where continuation tokens are."""
        seqs = [[*c, *k[:-1]] for c, k in zip(ctxs, conts, strict=True)]  # a last token is only a target
        ids, mask = self._left_pad(seqs)
        keep = max(len(k) for k in conts)
        logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)  # row j predicts the token after position width - keep + j
        results = []
        for row, cont in enumerate(conts):
            targets = torch.tensor(cont, device=self.device).unsqueeze(-1)
            results.append(logprobs[row, keep - len(cont):].gather(-1, targets).squeeze(-1).tolist())
        return results

    # --- generation --------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        """`n` completions per prompt. Each distinct prompt is encoded once however many samples it gets (its KV
        cache is copied n-fold), and the longest prefix of it this backend encoded lately, such as the prompt of a
        trajectory's previous step or the system message and demonstrations a batch shares, is reused, not
        encoded again (see `_PrefixCache`)."""
        if n > 1 and sampling.greedy:  # greedy decoding has one answer per prompt: decode it once
            return [outs * n for outs in self.generate(prompts, sampling, 1)]
        prompt_ids = [self.encode(p) for p in prompts]
        results: list[list[Completion]] = [[] for _ in prompts]
        eos = self._eos_ids()
        reuse = self._can_reuse_prefixes()
        options: dict[str, Any] = dict(
            max_new_tokens=sampling.max_tokens, return_dict_in_generate=True,
            output_logits=True, pad_token_id=self.tokenizer.pad_token_id,
        )
        if sampling.greedy:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        for bucket_no, batch in enumerate(_buckets([len(p) for p in prompt_ids], self.batch_size)):
            kwargs = dict(options)
            with _gqa_attention(self.model):
                if reuse:
                    ids, mask, cache = self._prefilled([prompt_ids[i] for i in batch], n)
                    kwargs.update(past_key_values=cache)
                else:
                    ids, mask = self._left_pad([prompt_ids[i] for i in batch])
                    kwargs.update(num_return_sequences=n)
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed * 1_000_003 + bucket_no)
                gen = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            new = gen.sequences[:, ids.shape[1]:]
            logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in gen.logits], dim=1)
            picked = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            for row in range(new.shape[0]):
                prompt_index = batch[row // n]
                results[prompt_index].append(self._completion(new[row].tolist(), picked[row].tolist(), eos,
                                                              sampling))
        return results

    def _eos_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        return {i for i in [*ids, self.tokenizer.eos_token_id] if i is not None}

    def _completion(self, tokens: list[int], logprobs: list[float], eos: set[int], sampling: Sampling
                    ) -> Completion:
        finish = "length"
        for pos, tok in enumerate(tokens):
            if tok in eos:
                tokens, logprobs, finish = tokens[:pos], logprobs[:pos], "stop"
                break
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        for stop in sampling.stop:
            cut = text.find(stop)
            if cut >= 0:
                text, finish = text[:cut], "stop"
                kept = len(self.encode_continuation(text)) if text else 0
                tokens, logprobs = tokens[:kept], logprobs[:kept]
        return Completion(text=text, token_logprobs=tuple(logprobs), finish_reason=finish, token_ids=tuple(tokens))

    # --- generation: prefix reuse --------------------------------------------------------------------

    def _prefixes(self) -> _PrefixCache:
        if self._prefix_store is None or self._prefix_store.model is not self.model:  # a new model starts afresh
            self._prefix_store = _PrefixCache(self.model, PREFIX_CACHE_BYTES)
        return self._prefix_store

    def _can_reuse_prefixes(self) -> bool:
        """Stored KV caches can be joined and extended when every layer is a plain growing attention cache (not a
        sliding window, a recurrent state, an encoder-decoder): what `DynamicCache` builds for most causal LMs."""
        store = self._prefixes()
        if store.supported is None:
            from transformers import DynamicCache
            from transformers.cache_utils import DynamicLayer

            config = self.model.config
            try:
                layers = DynamicCache(config=config).layers
            except Exception:  # an unusual config: generate the plain way
                layers = []
            default_cache = getattr(self.model, "_supports_default_dynamic_cache", lambda: False)()
            store.supported = bool(layers) and default_cache and not getattr(config, "is_encoder_decoder", False) \
                and getattr(self.model.generation_config, "cache_implementation", None) is None \
                and all(type(layer) is DynamicLayer for layer in layers)
        return store.supported

    def _prefilled(self, seqs: list[list[int]], n: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """`model.generate`'s input ids and attention mask for a bucket, n rows per prompt, and a KV cache of all
        but each prompt's last token (so generate only feeds that token): the bucket's common prefix and each
        prompt's longest stored prefix are reused, only the rest is encoded, once per prompt, then copied n-fold."""
        heads = [s[:-1] for s in seqs]
        store = self._prefixes()
        common = min(len(h) for h in heads)
        for h in heads[1:]:
            common = min(common, _common_prefix(heads[0], h))
        if len(heads) > 1 and common >= MIN_SHARED_PREFIX and store.match(heads[0][:common])[0] < common:
            self._encode_prefixes([heads[0][:common]])  # e.g. the system message and demonstrations, once
        ids, mask, cache = self._encode_prefixes(heads)
        last = torch.tensor([[s[-1]] for s in seqs], device=self.device)
        ids = torch.cat([ids, last], dim=1).repeat_interleave(n, dim=0)
        mask = torch.cat([mask, torch.ones_like(last)], dim=1).repeat_interleave(n, dim=0)
        if n > 1 and cache.get_seq_length() > 0:
            cache.batch_repeat_interleave(n)
        return ids, mask, cache

    def _encode_prefixes(self, seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """A KV cache of every token of `seqs` (one batch row each) with its ids and attention mask, stored for
        reuse. Row i is [pad, the stored prefix it reuses, pad, its rest, encoded now]: each part right-aligned at
        its own boundary, the mask hiding the padding; positions count unmasked tokens only, as generate does."""
        from transformers import DynamicCache

        store = self._prefixes()
        matches = [store.match(s) for s in seqs]
        width = max((m for m, _ in matches), default=0)
        tails = [s[m:] for s, (m, _) in zip(seqs, matches, strict=True)]
        rest = max((len(t) for t in tails), default=0)
        ids = torch.full((len(seqs), width + rest), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for row, (seq, (m, _), tail) in enumerate(zip(seqs, matches, tails, strict=True)):
            if m:
                ids[row, width - m:width] = torch.tensor(seq[:m])
                mask[row, width - m:width] = 1
            if tail:
                ids[row, width + rest - len(tail):] = torch.tensor(tail)
                mask[row, width + rest - len(tail):] = 1
        cache = DynamicCache(config=self.model.config)
        cache.layers = [_growing_layer()() for _ in cache.layers]
        if width:
            reused = [kv for m, kv in matches if m]
            for layer_idx in range(len(reused[0])):
                k0, v0 = reused[0][layer_idx]
                keys = k0.new_zeros((len(seqs), k0.shape[0], width, k0.shape[2]))
                values = v0.new_zeros((len(seqs), v0.shape[0], width, v0.shape[2]))
                for row, (m, kv) in enumerate(matches):
                    if m:
                        keys[row, :, width - m:] = kv[layer_idx][0][:, :m]
                        values[row, :, width - m:] = kv[layer_idx][1][:, :m]
                cache.update(keys, values, layer_idx)
        if rest:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, width:]
            self.model(input_ids=ids[:, width:], attention_mask=mask, position_ids=positions, past_key_values=cache,
                       use_cache=True, logits_to_keep=1)
            for row, (seq, tail) in enumerate(zip(seqs, tails, strict=True)):
                if tail and len(seq) >= MIN_SHARED_PREFIX:
                    keep = mask[row].nonzero().squeeze(-1)
                    store.add(tuple(seq), [(layer.keys[row][:, keep], layer.values[row][:, keep])
                                           for layer in cache.layers])
        return ids, mask, cache


PREFIX_CACHE_BYTES = 512 * 2**20  # KV caches of recent prompts kept per backend for reuse
_GQA_SDPA = "rplat_sdpa_gqa"


class _PrefixCache:
    """KV caches of recently encoded token sequences, one (keys, values) pair per layer without the batch
    dimension, evicted least recently used first beyond a byte budget. A sequence that extends a stored one
    (the next step's prompt of a trajectory) replaces it; any sequence can reuse the longest stored prefix."""

    def __init__(self, model: Any, budget: int) -> None:
        self.model = model
        self.budget = budget
        self.supported: bool | None = None
        self.entries: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}  # oldest use first
        self.nbytes = 0

    def match(self, seq: Sequence[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """(length, layers) of the stored sequence sharing the longest prefix with `seq`, (0, None) below
        MIN_SHARED_PREFIX tokens."""
        best, found = 0, None
        for tokens in self.entries if seq else ():
            if tokens[0] == seq[0] and (k := _common_prefix(tokens, seq)) > best:
                best, found = k, tokens
        if found is None or best < MIN_SHARED_PREFIX:
            return 0, None
        self.entries[found] = self.entries.pop(found)  # most recently used
        return best, self.entries[found]

    def add(self, tokens: tuple[int, ...], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for old in [t for t in self.entries if len(t) <= len(tokens) and tokens[:len(t)] == t]:
            self._drop(old)
        self.entries[tokens] = layers
        self.nbytes += self._size(layers)
        while self.nbytes > self.budget and len(self.entries) > 1:
            self._drop(next(iter(self.entries)))

    def _drop(self, tokens: tuple[int, ...]) -> None:
        self.nbytes -= self._size(self.entries.pop(tokens))

    @staticmethod
    def _size(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


_GROWING_LAYER: Any = None


def _token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
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


def _growing_layer() -> Any:
    """`DynamicLayer` whose keys and values are views into buffers with room to spare: appending a decoding step
    writes in place instead of concatenating (copying) the whole cache of every row at every step."""
    global _GROWING_LAYER
    if _GROWING_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class GrowingLayer(DynamicLayer):
            buffers: tuple[torch.Tensor, torch.Tensor] | None = None

            def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
                       ) -> tuple[torch.Tensor, torch.Tensor]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                old = self.keys.shape[-2] if self.keys.dim() == 4 else 0
                new = old + key_states.shape[-2]
                buf = self.buffers
                # The layer's tensors may have been replaced (batch_repeat_interleave, batch_select_indices): adopt
                # them into new buffers. A crop leaves a shorter view of the same buffer, overwritten from its end.
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

        _GROWING_LAYER = GrowingLayer
    return _GROWING_LAYER


class _Segments:
    """A packed scoring row: `width` base tokens in the KV cache, then `total` query tokens made of segments
    (start, shared, length), each attending to the base's first `shared` tokens and causally to itself."""

    def __init__(self, width: int, total: int, segments: list[tuple[int, int, int]]) -> None:
        self.width, self.total, self.segments = width, total, segments
        self.masks: dict[tuple[int, int], torch.Tensor] = {}

    def mask(self, shared: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (shared, length)
        if key not in self.masks:  # additive, as SDPA would turn a boolean mask into at every call
            m = torch.zeros(length, shared + length, dtype=dtype, device=device)
            m[:, shared:] = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)
            self.masks[key] = m
        return self.masks[key]


_PACKED: contextvars.ContextVar[_Segments | None] = contextvars.ContextVar("rplat_packed", default=None)


class _gqa_attention:  # noqa: N801 (used as a context manager)
    """On CPU, let SDPA attend with grouped KV heads as they are (`enable_gqa`) even under a padding mask, where
    transformers' `sdpa` first copies every KV head once per query head: that copy, over the whole cache at every
    decoding step, costs more than the attention itself in a batch of long prompts. With `segments` (a packed
    scoring row), each member's tokens attend only to the keys its mask allows, one SDPA call per member, instead
    of the whole row's block-diagonal mask over base and row, which is mostly masked out."""

    def __init__(self, model: Any, segments: _Segments | None = None) -> None:
        self.config = model.config
        self.active = self.config._attn_implementation == "sdpa" and next(model.parameters()).device.type == "cpu"
        self.segments = segments
        self.token: contextvars.Token[_Segments | None] | None = None

    def __enter__(self) -> None:
        if self.active:
            _register_gqa_sdpa()
            self.config._attn_implementation = _GQA_SDPA
            self.token = _PACKED.set(self.segments)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.config._attn_implementation = "sdpa"
            if self.token is not None:
                _PACKED.reset(self.token)


def _register_gqa_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if _GQA_SDPA in AttentionInterface._global_mapping:
        return

    def forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        special = kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
        packed = _PACKED.get()
        if packed is not None and not special and query.shape[0] == 1 and query.shape[2] == packed.total and \
                key.shape[2] == packed.width + packed.total:
            out = torch.empty_like(query)
            for start, shared, length in packed.segments:
                tail = slice(packed.width + start, packed.width + start + length)
                k = torch.cat((key[:, :, :shared], key[:, :, tail]), dim=2)
                v = torch.cat((value[:, :, :shared], value[:, :, tail]), dim=2)
                out[:, :, start:start + length] = torch.nn.functional.scaled_dot_product_attention(
                    query[:, :, start:start + length], k, v, dropout_p=dropout, scale=scaling,
                    attn_mask=packed.mask(shared, length, query.dtype, query.device),
                    enable_gqa=key.shape[1] != query.shape[1])
            return out.transpose(1, 2).contiguous(), None
        if attention_mask is None or attention_mask.dtype != torch.bool or key.shape[1] == query.shape[1] or special:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                          scaling=scaling, **kwargs)
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               dropout_p=dropout, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(_GQA_SDPA, forward)
    AttentionMaskInterface.register(_GQA_SDPA, sdpa_mask)
