"""One way to talk to models: the backend protocol every generation and scoring call goes through.

Backends: `hf` (transformers in-process), `openai` (any OpenAI-compatible server: vLLM, SGLang, hosted
APIs). A registered model is opened in two steps: `rplat.llm.resolve.prepare_backend` reads the registry into
a `BackendSpec` (no weights), and `rplat.llm.load.open_backend(spec)` loads it. Every call from a job goes
through `rplat.llm.cache.CachedBackend`, keyed by (model fingerprint, prompt hash, sampling params, sample
index), so a re-run after a crash regenerates nothing already stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters; `temperature == 0` is greedy. Part of every cache key (except `n`, per sample)."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def key(self) -> dict[str, Any]:
        return {**asdict(self), "stop": list(self.stop)}

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    token_logprobs: tuple[float, ...] = field(default=())
    finish_reason: str = "stop"
    token_ids: tuple[int, ...] = field(default=())


Message = dict[str, str]


@runtime_checkable
class Backend(Protocol):
    """What every model backend provides; `fingerprint` identifies the exact weights (the cache keys on it), and
    `tokenizer` is the model's own (a transformers tokenizer: training and token counting use it, no weights)."""

    fingerprint: str
    tokenizer: Any

    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        """`n` completions per prompt, each with its token log-probs and finish reason ("stop" or "length")."""
        ...

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        """Per-token log-probs of each continuation given its context (tokenized separately, then joined)."""
        ...

    def chat_prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """The model's chat template applied to `messages`, as text."""
        ...
