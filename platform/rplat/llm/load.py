"""Open a backend for a registered model: `hf` in-process, or `openai` against a server's URL."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.llm import Backend
from rplat.models import Model, ModelParent
from rplat.registry import get_model


@functools.cache
def _hf(path: str, adapter_path: str | None, fingerprint: str, device: str | None) -> Any:
    from rplat.llm.hf import HFBackend

    backend = HFBackend.load(path, fingerprint=fingerprint, device=device)
    if adapter_path is not None:
        from peft import PeftModel

        backend.model = PeftModel.from_pretrained(backend.model, adapter_path).merge_and_unload().eval()
    return backend


def base_of(session: Session, model: Model) -> Model:
    """The base model an adapter was trained on (the adapter itself if it is a base model)."""
    if model.kind != "adapter":
        return model
    parent_id = session.scalar(select(ModelParent.parent_id).where(ModelParent.model_id == model.id,
                                                                   ModelParent.relation == "base"))
    if parent_id is None:
        raise UserError(f"adapter {model.name!r} has no base model recorded; re-register it with its base.")
    return session.get(Model, parent_id)  # type: ignore[return-value]


def effective_fingerprint(session: Session, model: Model) -> str:
    """Base and adapter weights together: the same adapter on two bases is two cache identities."""
    if model.kind != "adapter":
        return model.fingerprint
    return hashlib.sha256(f"{base_of(session, model).fingerprint}+{model.fingerprint}".encode()).hexdigest()


def open_backend(session: Session, name: str, *, backend: str = "hf", endpoint: str | None = None,
                 device: str | None = None, home: Path | None = None) -> Backend:
    """The backend for registered model `name`; the bundled SmolLM2 is converted and registered on first use."""
    from rplat.bundled import SMOLLM2, ensure_smollm2

    if name == SMOLLM2 and session.scalar(select(Model.id).where(Model.name == name)) is None:
        from rplat.config import get_settings

        ensure_smollm2(session, home or get_settings().home)
    model = get_model(session, name)
    base = base_of(session, model)
    fingerprint = effective_fingerprint(session, model)
    if not base.path or not Path(base.path).exists():
        raise UserError(f"the weights of model {base.name!r} are missing at {base.path}; re-register the model.")
    if backend == "hf":
        adapter = model.path if model.kind == "adapter" else None
        return _hf(base.path, adapter, fingerprint, device)
    if backend == "openai":
        url = endpoint or (model.config or {}).get("endpoint") or os.environ.get("RPLAT_OPENAI_BASE_URL")
        if not url:
            raise UserError(f"no endpoint for model {name!r}; pass --param endpoint=URL or start one with `rplat serve`.")
        from rplat.llm.openai import OpenAIBackend

        served = (model.config or {}).get("served_name", name)
        return OpenAIBackend.for_model(url, served, base.path, fingerprint=fingerprint)
    raise UserError(f"unknown backend {backend!r}; use hf or openai.")
