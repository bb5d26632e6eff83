"""The `openai` backend: any OpenAI-compatible completions server (vLLM, SGLang, hosted APIs).

Prompts are sent as token ids encoded by the model's own tokenizer (`rplat.llm.load.open_backend` passes the
one saved in the registered model directory), so scoring covers exactly the continuation's tokens — the same
tokens the `hf` backend scores — and prompt log-probs come back through `echo`. Requests run concurrently up
to a limit and retry with exponential backoff on connection errors, 429 and 5xx. The API key is read from an
environment variable, never from code or the database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from rplat.errors import UserError
from rplat.llm import Completion, Message, Sampling

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend:
    def __init__(self, base_url: str, served_model: str, tokenizer: Any, *, fingerprint: str,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, max_retries: int = 5,
                 timeout: float = 300.0, backoff_seconds: float = 0.5) -> None:
        self.base_url = base_url.rstrip("/")
        self.served_model = served_model
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        key = os.environ.get(api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    # --- HTTP --------------------------------------------------------------------------------------

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.post("/v1/completions", json={"model": self.served_model, **payload})
            except httpx.TransportError as exc:
                if attempt == self.max_retries:
                    raise UserError(f"the model server at {self.base_url} is unreachable ({exc}); "
                                    "start it with `rplat serve` or check the URL.") from None
            else:
                if response.status_code == 200:
                    return response.json()
                if response.status_code not in RETRY_STATUS or attempt == self.max_retries:
                    raise RuntimeError(f"{self.base_url} answered {response.status_code}: {response.text[:300]}")
            time.sleep(self.backoff_seconds * 2**attempt)
        raise AssertionError("unreachable")

    def _map(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(payloads) == 1:
            return [self._post(payloads[0])]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._post, payloads))

    # --- protocol ----------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        return self.tokenizer(text, add_special_tokens=bool(bos) and not text.startswith(bos))["input_ids"]

    def chat_prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        # Greedy decoding is deterministic, and vLLM refuses n > 1 with it: ask once, repeat the answer n times
        # (what the hf backend returns).
        asked = 1 if sampling.greedy else n
        payloads = []
        for prompt in prompts:
            payload: dict[str, Any] = {"prompt": self.encode(prompt), "n": asked, "max_tokens": sampling.max_tokens,
                                       "temperature": sampling.temperature, "top_p": sampling.top_p, "logprobs": 1}
            if sampling.stop:
                payload["stop"] = list(sampling.stop)
            if sampling.seed is not None:
                payload["seed"] = sampling.seed
            payloads.append(payload)
        results = []
        for answer in self._map(payloads):
            choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
            completions = [self._completion(c) for c in choices]
            results.append(completions * n if asked == 1 and n > 1 else completions)
        return results

    def _completion(self, choice: dict[str, Any]) -> Completion:
        logprobs = choice.get("logprobs") or {}
        lps = [lp for lp in (logprobs.get("token_logprobs") or []) if lp is not None]
        text = choice.get("text", "")
        ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        if finish == "stop":
            # vLLM's log-probs include the EOS token, or the whole token a stop string ends in, though the text
            # does not; keep those of the text's tokens only, as the hf backend does.
            lps = lps[:len(ids)]
        return Completion(text=text, token_logprobs=tuple(lps), finish_reason=finish, token_ids=ids)

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        ctx_ids = [self.encode(c) for c in contexts]
        cont_ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        return self.score_ids(ctx_ids, cont_ids)

    def score_ids(self, ctx_ids: Sequence[list[int]], cont_ids: Sequence[list[int]]) -> list[list[float]]:
        todo = [i for i, k in enumerate(cont_ids) if k]
        payloads = [{"prompt": list(ctx_ids[i]) + list(cont_ids[i]), "max_tokens": 1, "echo": True,
                     "logprobs": 1, "temperature": 0.0} for i in todo]
        out: list[list[float]] = [[] for _ in ctx_ids]
        for i, answer in zip(todo, self._map(payloads), strict=True):
            prompt_lps = answer["choices"][0]["logprobs"]["token_logprobs"]
            n_prompt = len(ctx_ids[i]) + len(cont_ids[i])
            out[i] = [float(lp) for lp in prompt_lps[n_prompt - len(cont_ids[i]):n_prompt]]
        return out
