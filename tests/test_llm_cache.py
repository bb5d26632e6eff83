"""The generation cache: nothing regenerated, samples cached per index, no entries shared."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from rplat.llm import Completion, Message, Sampling
from rplat.llm.cache import CachedBackend
from rplat.models import GenerationCache

from stores import Store


class CountingBackend:
    """A deterministic fake model that records every call it receives."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.generated: list[tuple[str, int]] = []
        self.scored: list[tuple[str, str]] = []

    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        self.generated += [(p, n) for p in prompts]
        return [[Completion(f"{self.fingerprint}:{p}:{len(self.generated)}:{k}", (-0.5,), "stop", (7,))
                 for k in range(n)] for p in prompts]

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        self.scored += list(zip(contexts, continuations, strict=True))
        return [[-float(len(c)), -1.0] for c in continuations]

    def chat_prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return "|".join(m["content"] for m in messages)


def test_second_generate_call_is_served_from_the_cache(db: Store) -> None:
    model = CountingBackend("m1")
    cached = CachedBackend(model, db.engine(), job_id=None)
    first = cached.generate(["a", "b"], Sampling(max_tokens=5))
    again = CachedBackend(model, db.engine()).generate(["b", "a"], Sampling(max_tokens=5))
    assert sorted(model.generated) == [("a", 1), ("b", 1)]
    assert [c[0].text for c in again] == [first[1][0].text, first[0][0].text]
    assert again[0][0].token_logprobs == (-0.5,) and again[0][0].token_ids == (7,)


def test_more_samples_generate_only_the_missing_indices(db: Store) -> None:
    model = CountingBackend("m1")
    cached = CachedBackend(model, db.engine())
    sampling = Sampling(temperature=0.7, seed=14)
    four = cached.generate(["q"], sampling, n=4)[0]
    eight = cached.generate(["q"], sampling, n=8)[0]
    assert model.generated == [("q", 4), ("q", 4)]
    assert [c.text for c in eight[:4]] == [c.text for c in four]
    assert len({c.text for c in eight}) == 8


def test_different_sampling_params_are_different_entries(db: Store) -> None:
    model = CountingBackend("m1")
    cached = CachedBackend(model, db.engine())
    cached.generate(["q"], Sampling(temperature=0.0))
    cached.generate(["q"], Sampling(temperature=0.7))
    assert len(model.generated) == 2


def test_two_models_never_share_an_entry(db: Store) -> None:
    one, two = CountingBackend("m1"), CountingBackend("m2")
    a = CachedBackend(one, db.engine()).generate(["q"], Sampling())[0][0]
    b = CachedBackend(two, db.engine()).generate(["q"], Sampling())[0][0]
    assert a.text.startswith("m1:") and b.text.startswith("m2:")
    with db.engine().connect() as conn:
        assert conn.scalar(select(func.count()).select_from(GenerationCache)) == 2


def test_scores_are_cached_per_context_and_continuation(db: Store) -> None:
    model = CountingBackend("m1")
    cached = CachedBackend(model, db.engine(), job_id=None)
    first = cached.score(["ctx", "ctx"], ["abc", "de"])
    second = cached.score(["ctx"], ["de"])
    assert first == [[-3.0, -1.0], [-2.0, -1.0]] and second == [[-2.0, -1.0]]
    assert model.scored == [("ctx", "abc"), ("ctx", "de")]
    assert cached.hits == 1
