"""Open a backend for a registered model: `hf` in-process, or `openai` against a server's URL.

Jobs resolve a model in two steps: `prepare_backend` reads the registry (and converts the bundled model on
first use) in short transactions of its own, then `BackendSpec.open()` loads the weights. Neither happens
inside a job's write transaction, which on SQLite would hold the database lock (and starve the heartbeat)
for as long as a conversion or a load takes."""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.llm import Backend
from rplat.models import Model, ModelParent
from rplat.registry import get_model
from rplat.store import transaction

ADAPTER_FORMATS = ("lora",)


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
    if model.format not in ADAPTER_FORMATS:
        return model
    parent_id = session.scalar(select(ModelParent.parent_id).where(ModelParent.model_id == model.id,
                                                                   ModelParent.relation == "base"))
    if parent_id is None:
        raise UserError(f"adapter {model.name!r} has no base model recorded; re-register it with its base.")
    return session.get(Model, parent_id)  # type: ignore[return-value]


def effective_fingerprint(session: Session, model: Model) -> str:
    """Base and adapter weights together: the same adapter on two bases is two cache identities."""
    if model.format not in ADAPTER_FORMATS:
        return model.fingerprint
    return hashlib.sha256(f"{base_of(session, model).fingerprint}+{model.fingerprint}".encode()).hexdigest()


@dataclass(frozen=True)
class BackendSpec:
    """Everything needed to open a model's backend, read from the registry; `open()` does the slow part."""

    backend: str
    name: str
    base_path: str
    adapter_path: str | None
    fingerprint: str
    url: str | None = None
    served_name: str | None = None
    device: str | None = None

    def open(self) -> Backend:
        if self.backend == "hf":
            return _hf(self.base_path, self.adapter_path, self.fingerprint, self.device)
        from rplat.llm.openai import OpenAIBackend

        assert self.url is not None and self.served_name is not None
        return OpenAIBackend.for_model(self.url, self.served_name, self.base_path, fingerprint=self.fingerprint)


def resolve_backend(session: Session, name: str, *, backend: str = "hf", endpoint: str | None = None,
                    device: str | None = None) -> BackendSpec:
    """Registry look-up only: the model, its base, its cache identity and where it is served."""
    model = get_model(session, name)
    base = base_of(session, model)
    fingerprint = effective_fingerprint(session, model)
    if not base.path or not Path(base.path).exists():
        raise UserError(f"the weights of model {base.name!r} are missing at {base.path}; re-register the model.")
    if backend == "hf":
        adapter = model.path if model.format in ADAPTER_FORMATS else None
        return BackendSpec("hf", name, base.path, adapter, fingerprint, device=device)
    if backend == "openai":
        url = endpoint or (model.config or {}).get("endpoint") or os.environ.get("RPLAT_OPENAI_BASE_URL")
        if not url:
            raise UserError(f"no endpoint for model {name!r}; pass --param endpoint=URL or start one with `rplat serve`.")
        served = (model.config or {}).get("served_name", name)
        return BackendSpec("openai", name, base.path, None, fingerprint, url=url, served_name=served)
    raise UserError(f"unknown backend {backend!r}; use hf or openai.")


def ensure_bundled(engine: Engine, name: str, home: Path | None = None) -> None:
    """If `name` is the bundled SmolLM2 and not yet usable, convert it (outside any transaction: it takes ~40 s)
    and register it (in a short one of its own). Other names are left to the registry."""
    from rplat.bundled import SMOLLM2, convert_smollm2, ensure_smollm2

    if name != SMOLLM2:
        return
    with transaction(engine.execution_options(rplat_readonly=True)) as s:
        found = s.scalar(select(Model.path).where(Model.name == name))
    if found is None or not Path(found).exists():
        from rplat.config import get_settings

        home = home or get_settings().home
        convert_smollm2(home)
        with transaction(engine) as s:
            ensure_smollm2(s, home)


def prepare_backend(engine: Engine, name: str, *, backend: str = "hf", endpoint: str | None = None,
                    device: str | None = None, home: Path | None = None) -> BackendSpec:
    """`resolve_backend` in a read transaction of its own, after `ensure_bundled`."""
    ensure_bundled(engine, name, home)
    with transaction(engine.execution_options(rplat_readonly=True)) as s:
        return resolve_backend(s, name, backend=backend, endpoint=endpoint, device=device)


def open_backend(session: Session, name: str, *, backend: str = "hf", endpoint: str | None = None,
                 device: str | None = None, home: Path | None = None) -> Backend:
    """The backend for registered model `name` within the caller's session (the bundled SmolLM2 is converted
    and registered on first use); jobs use `prepare_backend` instead."""
    from rplat.bundled import SMOLLM2, ensure_smollm2

    if name == SMOLLM2 and session.scalar(select(Model.id).where(Model.name == name)) is None:
        from rplat.config import get_settings

        ensure_smollm2(session, home or get_settings().home)
    return resolve_backend(session, name, backend=backend, endpoint=endpoint, device=device).open()
