"""The `openai` backend against a loopback server backed by the tiny model: `hf`'s scores."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from rplat.errors import UserError
from rplat.llm import Sampling
from rplat.llm.hf import HFBackend
from rplat.llm.openai import OpenAIBackend

from tiny_lm import tiny_model, tiny_tokenizer


class FakeServer:
    """Implements the slice of /v1/completions rplat uses (token-id prompts, echo, logprobs, n) with an HF model."""

    def __init__(self, backend: HFBackend) -> None:
        self.backend = backend
        self.failures_left = 0
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if server.failures_left > 0:
                    server.failures_left -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                payload = json.dumps(server.answer(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        ids: list[int] = body["prompt"]
        if body.get("echo"):
            with torch.no_grad():
                logits = self.backend.model(input_ids=torch.tensor([ids])).logits[0]
            lps = torch.log_softmax(logits.float(), dim=-1)
            prompt_lps = [None] + [lps[i - 1, ids[i]].item() for i in range(1, len(ids))]
            return {"choices": [{"index": 0, "text": "", "finish_reason": "length",
                                 "logprobs": {"token_logprobs": prompt_lps}}]}
        sampling = Sampling(temperature=body["temperature"], max_tokens=body["max_tokens"], seed=body.get("seed"))
        [completions] = self.backend.generate([self.backend.tokenizer.decode(ids)], sampling, n=body.get("n", 1))
        return {"choices": [{"index": k, "text": c.text, "finish_reason": c.finish_reason,
                             "logprobs": {"token_logprobs": list(c.token_logprobs)}}
                            for k, c in enumerate(completions)]}

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def hf() -> HFBackend:
    return HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny-0", batch_size=4)


@pytest.fixture
def server(hf: HFBackend) -> Iterator[FakeServer]:
    s = FakeServer(hf)
    yield s
    s.close()


def _client(server: FakeServer, **kwargs: Any) -> OpenAIBackend:
    return OpenAIBackend(server.url, "tiny", tiny_tokenizer(), fingerprint="tiny-0", backoff_seconds=0.01, **kwargs)


def test_scores_over_http_equal_the_hf_backend_scores(server: FakeServer, hf: HFBackend) -> None:
    contexts = ["Question: Tom has 3 apples.", "The cat"]
    continuations = [" Answer: 7.", " sat on the mat."]
    assert _client(server).score(contexts, continuations) == [
        pytest.approx(row, abs=1e-4) for row in hf.score(contexts, continuations)]


def test_prompts_are_sent_as_token_ids_with_echo(server: FakeServer) -> None:
    _client(server).score(["The cat"], [" sat"])
    [request] = server.requests
    assert request["echo"] is True and isinstance(request["prompt"], list)
    assert request["prompt"] == tiny_tokenizer()("The cat sat")["input_ids"]


def test_generation_returns_n_samples_with_logprobs(server: FakeServer) -> None:
    out = _client(server).generate(["The cat", "Problem:"], Sampling(temperature=1.0, max_tokens=3, seed=1), n=2)
    assert [len(c) for c in out] == [2, 2]
    assert all(0 < len(c.token_logprobs) <= 3 for cs in out for c in cs)


def test_server_errors_are_retried_with_backoff(server: FakeServer, hf: HFBackend) -> None:
    server.failures_left = 2
    assert _client(server, max_retries=3).score(["The cat"], [" sat"]) == [
        pytest.approx(hf.score(["The cat"], [" sat"])[0], abs=1e-4)]
    assert len(server.requests) == 3


def test_unreachable_server_is_one_clear_error() -> None:
    client = OpenAIBackend("http://127.0.0.1:9", "tiny", tiny_tokenizer(), fingerprint="x", max_retries=1,
                           backoff_seconds=0.01)
    with pytest.raises(UserError, match="unreachable"):
        client.score(["a"], ["b"])


def test_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, server: FakeServer) -> None:
    monkeypatch.setenv("RPLAT_TEST_KEY", "sk-test")
    client = _client(server, api_key_env="RPLAT_TEST_KEY")
    assert client.client.headers["Authorization"] == "Bearer sk-test"
