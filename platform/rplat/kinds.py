"""The registry of job kinds: each kind's parameter schema and the handler that runs it.

Built-in kinds and third-party ones arrive the same way: the `rplat.kinds` entry-point group (each entry a
`JobKind` or a family's list of them, e.g. `rplat.runners.tdg.kinds:KINDS`), or modules named in RPLAT_PLUGINS
(comma-separated) that define `KINDS: list[JobKind]`.
Handlers are named as "module:function" strings and imported only when a runner executes the kind, so
enqueueing and starting a runner never pay for torch.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from rplat.errors import UserError


@dataclass(frozen=True)
class Was:
    """Marks a Params field as renamed (`n_samples: Annotated[int, Was("n")]`): params with the old name validate
    to the new one, so stored jobs keep loading and old commands keep working (the CLI says it is deprecated)."""

    old: str


class Params(BaseModel):
    """Base of every kind's parameters: unknown names are an error, not silently ignored, and every float is
    finite (inf and nan, which `--param x=inf` and JSON's `Infinity`/`NaN` give, are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _current_names(cls, data: Any) -> Any:
        return current_names(cls, data) if isinstance(data, dict) else data

    def prompt_templates(self) -> tuple[str, ...]:
        """The names of the prompt templates (rplat.prompts.TEMPLATES) a job with these params uses, main first."""
        return ()


@functools.cache
def old_names(params: type[Params]) -> dict[str, str]:
    """{old name: current name} of every field of `params` that was renamed (marked `Was`)."""
    return {meta.old: name for name, field in params.model_fields.items()
            for meta in field.metadata if isinstance(meta, Was)}


def current_names(params: type[Params], raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with each old name of a renamed field replaced by the field's name; both names given is an error."""
    renamed = {old: new for old, new in old_names(params).items() if old in raw}
    for old, new in renamed.items():
        if new in raw:
            raise ValueError(f"{new} and its old name {old} are both given; give {new} only")
    return {renamed.get(name, name): value for name, value in raw.items()} if renamed else raw


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type[Params]
    handler: str
    description: str
    gpus: int = 0  # devices a job of this kind needs unless `enqueue --gpus` says otherwise
    # a job of this kind loads a model and computes with it, so a GPU serves it (`pipeline --gpus` gives it GPUs);
    # False for kinds that only read the store (evaluate, aggregate) and for probe
    runs_model: bool = True
    # a job of this kind reads values people review (chain labels, rationale keep decisions, gold answers:
    # rplat.reviews): enqueued again after new reviews, it is a new job, and it records the last review it read
    reads_reviews: bool = False

    def load_handler(self) -> Callable[..., dict[str, Any] | None]:
        return resolve(self.handler)


def resolve(target: str) -> Any:
    """What a "module:name" string names, its module imported now: declarations name code this way so that
    reading them imports nothing heavy."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_registry: dict[str, JobKind] = {}
_loaded = False


def register(kind: JobKind) -> None:
    _registry[kind.name] = kind


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group="rplat.kinds"):
        loaded = ep.load()
        for kind in loaded if isinstance(loaded, list | tuple) else [loaded]:
            register(kind)
    for module in filter(None, (m.strip() for m in os.environ.get("RPLAT_PLUGINS", "").split(","))):
        try:
            plugin = importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"RPLAT_PLUGINS names module {module!r}, which cannot be imported ({exc}).") from None
        for kind in getattr(plugin, "KINDS", []):
            register(kind)


def all_kinds() -> dict[str, JobKind]:
    _load()
    return dict(sorted(_registry.items()))


def get(name: str) -> JobKind:
    _load()
    kind = _registry.get(name)
    if kind is None:
        known = ", ".join(sorted(_registry)) or "none"
        raise UserError(f"unknown job kind {name!r}; known kinds: {known}.")
    return kind


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "params"
    if error["type"] == "extra_forbidden":
        return f"{where!r} is not a parameter of this kind"
    if error["type"] == "missing":
        return f"{where!r} is required"
    return f"{where!r} {error['msg'][0].lower()}{error['msg'][1:]} (got {error.get('input')!r})"


def validate_params(kind_name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """Params as stored on the job: validated, defaults filled in, JSON-ready."""
    kind = get(kind_name)
    try:
        model = kind.params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        fields = ", ".join(kind.params.model_fields) or "none"
        raise UserError(
            f"bad parameter for job kind {kind_name!r}: {_describe(first)}; its parameters are: {fields}."
        ) from None
    return model.model_dump(mode="json")


def parse(kind_name: str, stored: dict[str, Any]) -> Params:
    return get(kind_name).params.model_validate(stored)
