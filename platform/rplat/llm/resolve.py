"""Registry resolution: a model's name to everything opening it needs, read from the store, no weights loaded.

`prepare_backend(engine, name)` gives a `BackendSpec`: the registry row's base, its adapters (an adapter's
parent is its base), the cache identity of the two together, and for the `openai` backend the URL of a live
`rplat serve` server. The bundled SmolLM2 is converted and registered on first use (`ensure_bundled`).
Everything here runs in short transactions of its own, and the weights are loaded afterwards, outside any
transaction, by `rplat.llm.load` from the spec alone: neither happens inside a job's write transaction, which
on SQLite would hold the database lock (and starve the heartbeat) for as long as a conversion or a load takes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from rplat.bundled import SMOLLM2, convert_smollm2, ensure_smollm2
from rplat.config import get_settings
from rplat.errors import UserError
from rplat.hashing import content_hash
from rplat.llm.formats import adapter_formats
from rplat.models import Model, ModelParent, Server
from rplat.registry import get_model
from rplat.store import transaction


@dataclass(frozen=True)
class Adapter:
    """An adapter to attach to a base module: its registry name, format, directory and weights' fingerprint."""

    name: str
    format: str
    path: str
    fingerprint: str

    @property
    def slot(self) -> str:
        """Its name inside the shared module: one per distinct weights (two registry names of the same files
        share it), and a valid torch module name."""
        return f"{self.format}_{self.fingerprint[:16]}"


@dataclass(frozen=True)
class BackendSpec:
    """Everything needed to open a model's backend, read from the registry; `rplat.llm.load.open_backend(spec)`
    does the slow part.

    `fingerprint` is the effective one (base and adapters together), which the generation cache keys on."""

    backend: str
    name: str
    base_path: str
    fingerprint: str
    base_fingerprint: str
    adapters: tuple[Adapter, ...] = ()
    url: str | None = None
    served_name: str | None = None
    device: str | None = None


def base_of(session: Session, model: Model) -> Model:
    """The base model an adapter was trained on (the model itself if it is not an adapter)."""
    if model.format not in adapter_formats():
        return model
    parent_id = session.scalar(select(ModelParent.parent_id).where(ModelParent.model_id == model.id,
                                                                   ModelParent.relation == "base"))
    if parent_id is None:
        raise UserError(f"adapter {model.name!r} has no base model recorded; re-register it with its base.")
    return session.get(Model, parent_id)  # type: ignore[return-value]


def effective_fingerprint(session: Session, model: Model) -> str:
    """Base and adapter weights together: the same adapter on two bases is two cache identities."""
    if model.format not in adapter_formats():
        return model.fingerprint
    return content_hash(base_of(session, model).fingerprint, model.fingerprint)


def live_server(session: Session, model_id: int) -> Server | None:
    """The newest server recorded for the model and not stopped (it may have died without saying so)."""
    return session.scalars(select(Server).where(Server.model_id == model_id, Server.stopped_at.is_(None))
                           .order_by(Server.started_at.desc(), Server.id.desc()).limit(1)).first()


def ensure_bundled(engine: Engine, name: str, home: Path | None = None) -> None:
    """If `name` is the bundled SmolLM2 and not yet usable, convert it (outside any transaction: it takes ~40 s)
    and register it (in a short one of its own). Other names are left to the registry."""
    if name != SMOLLM2:
        return
    with transaction(engine.execution_options(rplat_readonly=True)) as s:
        found = s.scalar(select(Model.path).where(Model.name == name))
    if found is None or not Path(found).exists():
        home = home or get_settings().home
        convert_smollm2(home)
        with transaction(engine) as s:
            ensure_smollm2(s, home)


def prepare_backend(engine: Engine, name: str, *, backend: str = "hf", endpoint: str | None = None,
                    device: str | None = None, home: Path | None = None) -> BackendSpec:
    """The spec of registered model `name` (the bundled SmolLM2 is converted and registered first), read in a
    transaction of its own: the model, its base, its cache identity and where it is served."""
    ensure_bundled(engine, name, home)
    with transaction(engine.execution_options(rplat_readonly=True)) as s:
        return _resolve(s, name, backend=backend, endpoint=endpoint, device=device)


def _resolve(session: Session, name: str, *, backend: str, endpoint: str | None, device: str | None) -> BackendSpec:
    model = get_model(session, name)
    base = base_of(session, model)
    if base.format != "base":
        raise UserError(f"model {name!r} is a {base.format} model, not a language model; pick an LLM or an adapter "
                        "of one (see `rplat models ls`).")
    if not base.path or not Path(base.path).exists():
        raise UserError(f"the weights of model {base.name!r} are missing at {base.path}; re-register the model.")
    fingerprint = effective_fingerprint(session, model)
    adapters = (Adapter(model.name, model.format, model.path or "", model.fingerprint),) \
        if model.format in adapter_formats() else ()
    if backend == "hf":
        return BackendSpec("hf", name, base.path, fingerprint, base.fingerprint, adapters, device=device)
    if backend == "openai":
        server = None if endpoint else live_server(session, model.id)
        url = endpoint or (server.url if server else None) or os.environ.get("RPLAT_OPENAI_BASE_URL")
        if not url:
            raise UserError(f"no endpoint for model {name!r}; pass --param endpoint=URL "
                            "or start one with `rplat serve`.")
        served = server.served_name if server else name
        return BackendSpec("openai", name, base.path, fingerprint, base.fingerprint, adapters, url=url,
                           served_name=served)
    raise UserError(f"unknown backend {backend!r}; use hf or openai.")
