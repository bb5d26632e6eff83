"""The bundled SmolLM2: converted once from its GGUF, registered, and usable by the hf backend."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from rplat.bundled import SMOLLM2, convert_smollm2, ensure_smollm2
from rplat.llm import Sampling
from rplat.llm.load import LOADED, open_backend
from rplat.llm.resolve import prepare_backend
from rplat.models import Model
from rplat.store import transaction

from stores import Store


@pytest.fixture(scope="module")
def home(smollm2_home: Path) -> Path:
    """The session's SmolLM2 home (the conversion takes a while, its result is the same): these tests, first in the
    session to use it, convert the model into it; test_vllm then serves that conversion."""
    return smollm2_home


def test_bundled_model_converts_once_registers_and_generates(db: Store, home: Path) -> None:
    if db.backend != "sqlite":
        pytest.skip("the conversion is database-independent: it runs once, on SQLite")
    with transaction(db.engine()) as s:
        first = ensure_smollm2(s, home)
        again = ensure_smollm2(s, home)
        assert again.id == first.id
        path = Path(first.path)
    assert (path / "model.safetensors").exists() and not (path / "config.json").read_text().count("quantization")
    assert convert_smollm2(home) == path  # already converted: nothing to do
    backend = open_backend(prepare_backend(db.engine(), SMOLLM2, device="cpu", home=home))
    with transaction(db.engine()) as s:
        row = s.scalar(select(Model).where(Model.name == SMOLLM2))
    try:
        prompt = backend.chat_prompt([{"role": "user", "content": "What is 2+3?"}])
        [[answer]] = backend.generate([prompt], Sampling(max_tokens=8))
    finally:
        LOADED.clear()
    assert "5" in answer.text
    assert row.format == "base" and row.role == "agent" and backend.fingerprint == row.fingerprint
    assert row.sha256 == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_a_row_registered_before_sha256_was_written_gets_it(db: Store, home: Path) -> None:
    if db.backend != "sqlite":
        pytest.skip("the conversion is database-independent: it runs once, on SQLite")
    with transaction(db.engine()) as s:
        row = ensure_smollm2(s, home)
        expected, row.sha256 = row.sha256, None
    with transaction(db.engine()) as s:
        assert ensure_smollm2(s, home).sha256 == expected is not None
