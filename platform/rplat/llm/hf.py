"""The `hf` backend: a transformers causal LM in-process (CPU or GPU), batched and length-bucketed.

Generation left-pads each bucket of similar-length prompts; scoring left-pads too and keeps logits only
for the last positions (the continuations), so memory scales with continuation length, not vocabulary
times sequence. Token log-probs are always the raw model's (log-softmax of the logits), whatever the
sampling temperature, so they agree with an OpenAI-compatible server's `logprobs`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from rplat.llm import Completion, Message, Sampling

MIN_SHARED_PREFIX = 8


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
        """Items whose contexts share a long prefix (a rationale with and without, candidate steps after one
        trajectory) encode that prefix once and score their suffixes against copies of its KV cache."""
        if any(not c for c, k in zip(ctx_ids, cont_ids, strict=True) if k):
            raise ValueError("every scored continuation needs a non-empty context (its first token is predicted from it)")
        out: list[list[float]] = [[] for _ in ctx_ids]
        order = sorted((i for i, c in enumerate(cont_ids) if c), key=lambda i: list(ctx_ids[i]))
        group: list[int] = []
        singles: list[int] = []
        shared = 0
        for i in [*order, None]:
            if i is not None and group:
                lcp = min(shared, _common_prefix(ctx_ids[group[0]], ctx_ids[i]))
                if lcp >= MIN_SHARED_PREFIX and lcp * 2 >= min(len(ctx_ids[g]) for g in [*group, i]) and \
                        len(group) < self.batch_size:
                    group.append(i)
                    shared = lcp
                    continue
            if len(group) > 1:
                for g, lps in zip(group, self._score_group(shared, [ctx_ids[g] for g in group],
                                                           [cont_ids[g] for g in group]), strict=True):
                    out[g] = lps
            else:
                singles += group
            if i is not None:
                group, shared = [i], len(ctx_ids[i])
        lengths = [len(ctx_ids[i]) + len(cont_ids[i]) for i in singles]
        for batch in _buckets(lengths, self.batch_size):
            members = [singles[k] for k in batch]
            for g, lps in zip(members, self._score_group(0, [ctx_ids[g] for g in members],
                                                         [cont_ids[g] for g in members]), strict=True):
                out[g] = lps
        return out

    def _score_group(self, shared: int, ctxs: list[list[int]], conts: list[list[int]]) -> list[list[float]]:
        """Encode ctxs' common `shared`-token prefix once, then every (rest of context + continuation) in one batch."""
        shared = max(min(shared, *(len(c) - 1 for c in ctxs)), 0)
        cache = None
        if shared:
            prefix = self.model(input_ids=torch.tensor([ctxs[0][:shared]], device=self.device), use_cache=True,
                                logits_to_keep=1)
            cache = prefix.past_key_values
            cache.batch_repeat_interleave(len(ctxs))
        suffixes = [list(c[shared:]) + list(k) for c, k in zip(ctxs, conts, strict=True)]
        width = max(len(x) for x in suffixes)
        ids = torch.full((len(ctxs), width), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(ctxs), shared + width), dtype=torch.long, device=self.device)
        mask[:, :shared] = 1
        for row, suffix in enumerate(suffixes):
            ids[row, :len(suffix)] = torch.tensor(suffix)
            mask[row, shared:shared + len(suffix)] = 1
        positions = torch.arange(shared, shared + width, device=self.device).expand(len(ctxs), -1)
        # Logits only where some row has a continuation token to score (suffix positions start-1 .. end-1).
        starts = [len(c) - shared for c in ctxs]
        lo = min(starts) - 1
        hi = max(st - 1 + len(k) for st, k in zip(starts, conts, strict=True))
        keep = torch.arange(lo, hi, device=self.device)
        logits = self.model(input_ids=ids, attention_mask=mask, past_key_values=cache, position_ids=positions,
                            logits_to_keep=keep).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        results = []
        for row, cont in enumerate(conts):
            start = starts[row] - lo  # kept-logit index of the first continuation token's prediction
            picked = logprobs[row, start - 1:start - 1 + len(cont)].gather(
                -1, torch.tensor(cont, device=self.device).unsqueeze(-1)).squeeze(-1)
            results.append(picked.tolist())
        return results

    # --- generation --------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        prompt_ids = [self.encode(p) for p in prompts]
        results: list[list[Completion]] = [[] for _ in prompts]
        eos = self._eos_ids()
        for bucket_no, batch in enumerate(_buckets([len(p) for p in prompt_ids], self.batch_size)):
            ids, mask = self._left_pad([prompt_ids[i] for i in batch])
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed * 1_000_003 + bucket_no)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=sampling.max_tokens, num_return_sequences=n, return_dict_in_generate=True,
                output_logits=True, pad_token_id=self.tokenizer.pad_token_id,
            )
            if sampling.greedy:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            else:
                kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            if sampling.stop:
                kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
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
