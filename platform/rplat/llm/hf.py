"""The `hf` backend: a transformers causal LM in-process, batched, length-bucketed, left-padded.

This module is the plain reference path, written against public transformers API only: scoring is one
left-padded forward pass per bucket of similar-length items, keeping logits only for the continuations;
generation is `model.generate` over a left-padded bucket with `num_return_sequences`. Token log-probs are
always the raw model's (log-softmax of the logits), whatever the sampling temperature, so they agree with an
OpenAI-compatible server's `logprobs`.

The CPU fast paths (a prefix KV store, packed scoring of items sharing a base, per-member attention,
blockwise log-softmax) live in `rplat.llm.hf_fast`, behind one switch: `HFBackend(..., fast=True)` (the
default) uses them when this transformers version still has the internals they rely on and the model's cache
is a plain growing KV cache; `RPLAT_HF_FAST=0` forces the plain path. Both give the same numbers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from rplat.errors import UserError
from rplat.llm import Completion, Message, Sampling

if TYPE_CHECKING:
    from rplat.llm.hf_fast import FastPaths

FAST_ENV = "RPLAT_HF_FAST"
PREFIX_CACHE_ENV = "RPLAT_HF_PREFIX_CACHE_BYTES"
PREFIX_CACHE_BYTES = 512 * 2**20  # default budget of the fast path's store of recent prompts' KV caches


def _buckets(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _fast_requested(fast: bool) -> bool:
    value = os.environ.get(FAST_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise UserError(f"{FAST_ENV}={value!r} is not understood; set it to 0 (plain hf path) or 1 (fast paths).")
    return fast and value != "0"


def _prefix_cache_bytes(explicit: int | None) -> int:
    if explicit is not None:
        budget: int | str = explicit
    else:
        budget = os.environ.get(PREFIX_CACHE_ENV, "").strip() or PREFIX_CACHE_BYTES
    if isinstance(budget, str):
        if not budget.isdigit():
            raise UserError(f"{PREFIX_CACHE_ENV}={budget!r} is not a byte count; set it to a whole number of bytes "
                            f"such as {PREFIX_CACHE_BYTES} (0 stores nothing).")
        budget = int(budget)
    if budget < 0:
        raise UserError(f"prefix_cache_bytes={budget} is negative; pass a byte budget >= 0 (0 stores nothing).")
    return budget


class HFBackend:
    """A transformers causal LM (or a peft model with one active LoRA adapter, unmerged) as a `Backend`.

    `fast` (default True) turns on `rplat.llm.hf_fast` where it applies; `RPLAT_HF_FAST=0` turns it off
    whatever is passed. `prefix_cache_bytes` bounds the fast path's store of recent prompts' KV caches
    (default: `RPLAT_HF_PREFIX_CACHE_BYTES`, else 512 MiB)."""

    def __init__(self, model: Any, tokenizer: Any, *, fingerprint: str, batch_size: int = 8, fast: bool = True,
                 prefix_cache_bytes: int | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.device = next(model.parameters()).device
        self.prefix_cache_bytes = _prefix_cache_bytes(prefix_cache_bytes)
        self._fast: FastPaths | None = None
        if _fast_requested(fast):
            from rplat.llm.hf_fast.internals import unavailable

            reason = unavailable()
            if reason is None:
                from rplat.llm.hf_fast import FastPaths

                self._fast = FastPaths(self, self.prefix_cache_bytes)
            else:
                warnings.warn(f"rplat's hf fast paths are off: {reason}. Scoring and generation take the plain "
                              f"path (same numbers, slower); set {FAST_ENV}=0 to silence this.", RuntimeWarning,
                              stacklevel=2)

    @property
    def fast(self) -> bool:
        """Whether the next call takes the fast paths (switched on, and the current model suits them)."""
        return self._fast is not None and self._fast.applies()

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
        """Per-token log-probs of each continuation given its context, in left-padded length buckets. On the fast
        path, items whose contexts share a long prefix are first scored against one encoding of it."""
        if any(not c for c, k in zip(ctx_ids, cont_ids, strict=True) if k):
            raise ValueError("every scored continuation needs a non-empty context "
                             "(its first token is predicted from it)")
        out: list[list[float]] = [[] for _ in ctx_ids]
        todo = [i for i, c in enumerate(cont_ids) if c]
        if self.fast:
            assert self._fast is not None
            todo = self._fast.score_shared(ctx_ids, cont_ids, todo, out)
        for batch in _buckets([len(ctx_ids[i]) + len(cont_ids[i]) for i in todo], self.batch_size):
            members = [todo[k] for k in batch]
            for i, lps in zip(members, self._score_batch([ctx_ids[i] for i in members],
                                                         [cont_ids[i] for i in members]), strict=True):
                out[i] = lps
        return out

    def _score_batch(self, ctxs: list[list[int]], conts: list[list[int]]) -> list[list[float]]:
        """Score items in one left-padded batch, keeping logits only where continuation tokens are predicted."""
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
        """`n` completions per prompt, prompts in left-padded length buckets. On the fast path each distinct prompt
        is encoded once for its n samples, reusing the KV cache of the longest prefix of it encoded lately."""
        if n > 1 and sampling.greedy:  # greedy decoding has one answer per prompt: decode it once
            return [outs * n for outs in self.generate(prompts, sampling, 1)]
        prompt_ids = [self.encode(p) for p in prompts]
        results: list[list[Completion]] = [[] for _ in prompts]
        eos = self._eos_ids()
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
        fast = self.fast
        for bucket_no, batch in enumerate(_buckets([len(p) for p in prompt_ids], self.batch_size)):
            seqs = [prompt_ids[i] for i in batch]
            # Both paths draw the same random numbers: one seed per bucket, n rows per prompt, prompt by prompt.
            seed = None if sampling.seed is None else sampling.seed * 1_000_003 + bucket_no
            if fast:
                assert self._fast is not None
                new, logits = self._fast.generate(seqs, n, options, seed)
            else:
                new, logits = self._generate_bucket(seqs, n, options, seed)
            logprobs = torch.stack([torch.log_softmax(step.float(), dim=-1) for step in logits], dim=1)
            picked = logprobs.gather(-1, new.unsqueeze(-1)).squeeze(-1)
            for row in range(new.shape[0]):
                results[batch[row // n]].append(self._completion(new[row].tolist(), picked[row].tolist(), eos,
                                                                 sampling))
        return results

    def _generate_bucket(self, seqs: list[list[int]], n: int, options: dict[str, Any], seed: int | None
                         ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """(new tokens, one logits tensor per step) of `generate` over a left-padded bucket, n rows per prompt."""
        ids, mask = self._left_pad(seqs)
        if seed is not None:
            torch.manual_seed(seed)
        gen = self.model.generate(input_ids=ids, attention_mask=mask, num_return_sequences=n, **options)
        return gen.sequences[:, ids.shape[1]:], gen.logits

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
