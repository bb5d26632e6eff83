"""The generation cache: every generate and score call, stored once and replayed on a re-run.

Keyed by (model fingerprint, prompt hash, sampling params, sample index), so a job re-run after a crash
finds what it already generated and asks the model only for the rest; two models never share an entry (the
fingerprint is part of the key); sampled generations are cached per sample index, so asking for n=8 after
n=4 generates only samples 4..7. Entries are content-addressed and shared across jobs; `job_id` records
which job first produced each one (lineage).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, select, tuple_

from rplat.hashing import content_hash
from rplat.llm import Backend, Completion, Message, Sampling
from rplat.models import GenerationCache
from rplat.store import insert_ignore, transaction

SCORE_PARAMS = {"call": "score"}


class CachedBackend:
    def __init__(self, backend: Backend, engine: Engine, *, job_id: int | None = None) -> None:
        self.backend = backend
        self.engine = engine
        self.job_id = job_id
        self.hits = 0
        self.misses = 0

    @property
    def fingerprint(self) -> str:
        return self.backend.fingerprint

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    def chat_prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self.backend.chat_prompt(messages, add_generation_prompt=add_generation_prompt)

    def _lookup(self, params_hash: str, keys: list[tuple[str, int]]) -> dict[tuple[str, int], GenerationCache]:
        found: dict[tuple[str, int], GenerationCache] = {}
        with transaction(self.engine.execution_options(rplat_readonly=True)) as session:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                rows = session.scalars(select(GenerationCache).where(
                    GenerationCache.model_fingerprint == self.fingerprint,
                    GenerationCache.params_hash == params_hash,
                    tuple_(GenerationCache.prompt_hash, GenerationCache.sample_index).in_(chunk),
                )).all()
                found.update({(r.prompt_hash, r.sample_index): r for r in rows})
        return found

    def _store(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            with transaction(self.engine) as session:
                insert_ignore(session, GenerationCache, rows,
                              ["model_fingerprint", "prompt_hash", "params_hash", "sample_index"])

    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        params_hash = content_hash(sampling.key())
        hashes = [content_hash(p) for p in prompts]
        wanted = sorted({(h, i) for h in hashes for i in range(n)})
        found = self._lookup(params_hash, wanted)
        missing: dict[str, list[int]] = {}
        for h, i in wanted:
            if (h, i) not in found:
                missing.setdefault(h, []).append(i)
        self.hits += len(found)
        if missing:
            first_prompt = {h: p for h, p in zip(hashes, prompts, strict=True)}
            # Group prompts by how many samples they still lack, so each backend call is one batch.
            by_count: dict[int, list[str]] = {}
            for h, idxs in missing.items():
                by_count.setdefault(len(idxs), []).append(h)
            new_rows = []
            for count, group in by_count.items():
                outputs = self.backend.generate([first_prompt[h] for h in group], sampling, n=count)
                for h, completions in zip(group, outputs, strict=True):
                    for index, c in zip(missing[h], completions, strict=True):
                        new_rows.append(dict(
                            model_fingerprint=self.fingerprint, prompt_hash=h, params_hash=params_hash,
                            sample_index=index, call="generate", output_text=c.text,
                            token_logprobs=list(c.token_logprobs), token_ids=list(c.token_ids),
                            finish_reason=c.finish_reason, job_id=self.job_id))
            self.misses += len(new_rows)
            self._store(new_rows)
            found = self._lookup(params_hash, wanted)
        return [[self._completion(found[(h, i)]) for i in range(n)] for h in hashes]

    @staticmethod
    def _completion(row: GenerationCache) -> Completion:
        return Completion(text=row.output_text or "", token_logprobs=tuple(row.token_logprobs or ()),
                          finish_reason=row.finish_reason or "stop", token_ids=tuple(row.token_ids or ()))

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        params_hash = content_hash(SCORE_PARAMS)
        hashes = [content_hash(c, k) for c, k in zip(contexts, continuations, strict=True)]
        wanted = sorted({(h, 0) for h in hashes})
        found = self._lookup(params_hash, wanted)
        self.hits += len(found)
        todo = {h: i for i, h in enumerate(hashes) if (h, 0) not in found}
        if todo:
            order = list(todo.items())
            scored = self.backend.score([contexts[i] for _, i in order], [continuations[i] for _, i in order])
            self.misses += len(order)
            self._store([dict(model_fingerprint=self.fingerprint, prompt_hash=h, params_hash=params_hash,
                              sample_index=0, call="score", token_logprobs=lps, job_id=self.job_id)
                         for (h, _), lps in zip(order, scored, strict=True)])
            found = self._lookup(params_hash, wanted)
        return [list(found[(h, 0)].token_logprobs or []) for h in hashes]
