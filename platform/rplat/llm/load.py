"""The one model loader: shared bases with unmerged adapters, a bounded LRU, backends over them.

`load(spec)` opens a registered model's module and tokenizer. `trainable=False` gives the shared module, kept
in an LRU of base modules (at most RPLAT_MAX_LOADED_MODELS of them, default 2, and at most RPLAT_MAX_LOADED_BYTES
of weights when that is set); every adapter of the same base is attached to that one module, unmerged, under a
name of its own (the format registry in `rplat.llm.formats` says how). `trainable=True` gives a fresh private
copy, never cached, for a training job to modify. `BackendSpec.open()` builds one `HFBackend` per (base,
adapters) view of a shared module; each call switches the view's adapters on under the module's lock.

Jobs resolve a model in two steps: `prepare_backend` reads the registry (and converts the bundled model on
first use) in short transactions of its own, then `BackendSpec.open()` loads the weights. Neither happens
inside a job's write transaction, which on SQLite would hold the database lock (and starve the heartbeat)
for as long as a conversion or a load takes."""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.hashing import content_hash
from rplat.llm import Backend, Completion, Message, Sampling
from rplat.llm.formats import adapter_formats, get_format
from rplat.models import Model, ModelParent
from rplat.registry import get_model
from rplat.store import transaction

if TYPE_CHECKING:
    import torch

    from rplat.llm.hf import HFBackend

DEFAULT_MAX_LOADED_MODELS = 2


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
    """Everything needed to open a model's backend, read from the registry; `open()` does the slow part.

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

    def open(self) -> Backend:
        if self.backend == "hf":
            return _shared(self, self.adapters, None, self.device).view(self.adapters, self.fingerprint)
        from rplat.llm.openai import OpenAIBackend

        assert self.url is not None and self.served_name is not None
        return OpenAIBackend.for_model(self.url, self.served_name, self.base_path, fingerprint=self.fingerprint)


# --- loading ---------------------------------------------------------------------------------------------


def load(spec: BackendSpec, *, adapters: Sequence[Adapter] | None = None, trainable: bool = False,
         dtype: torch.dtype | None = None, device: str | None = None) -> tuple[Any, Any]:
    """(module, tokenizer) of `spec`'s base with `adapters` attached unmerged (default: the spec's own; `()` for
    the bare base). `trainable=False`: the shared, cached module in eval mode, frozen; calls on it must run
    with its adapters switched on, as the backends from `BackendSpec.open()` do (`backend.activated()`).
    `trainable=True`: a fresh private copy, never cached, its adapters trainable. Default dtype: bfloat16 on a
    GPU that supports it, else float32; default device: CUDA when available, else CPU."""
    chosen = spec.adapters if adapters is None else tuple(adapters)
    if trainable:
        dtype, device = _placement(dtype, device or spec.device)
        module, tokenizer = _load_base(spec.base_path, dtype, device)
        for adapter in chosen:
            module = _attach(module, adapter, trainable=True)
        return module, tokenizer
    entry = _shared(spec, chosen, dtype, device or spec.device)
    return entry.module, entry.tokenizer


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in a model directory; one that cannot be read is a `UserError` (no retry fixes it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"the tokenizer in {path} cannot be loaded ({_reason(exc)}); save it again with "
                        "`tokenizer.save_pretrained`.") from exc


def _placement(dtype: torch.dtype | None, device: str | None) -> tuple[torch.dtype, str]:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return dtype, device


def _reason(exc: BaseException) -> str:
    """The start of an exception's message, short: enough to say what broke inside one sentence (a first line
    that only announces a list, like torch's "Error(s) in loading state_dict ...:", takes the list's first item)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines or [""])[0]
    first = first.rstrip(".")
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def _unloadable() -> tuple[type[BaseException], ...]:
    """Exceptions of a load that no retry can fix (missing or corrupt files, a mismatched architecture);
    running out of memory is not one of them."""
    from safetensors import SafetensorError

    return OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError


def _load_base(path: str, dtype: torch.dtype, device: str) -> tuple[Any, Any]:
    import torch

    get_format("base").check(Path(path))
    tokenizer = load_tokenizer(path)
    from transformers import AutoModelForCausalLM

    try:
        module = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except torch.OutOfMemoryError:
        raise
    except _unloadable() as exc:
        raise UserError(f"the model in {path} cannot be loaded ({_reason(exc)}); register a complete model "
                        "directory with `rplat models add`.") from exc
    return module.to(device), tokenizer


def _attach(module: Any, adapter: Adapter, *, trainable: bool,
            on_failure: Callable[[], None] = lambda: None) -> Any:
    """`module` with `adapter` attached. `on_failure` runs when attaching failed after it began: by then peft may
    have injected layers into `module`, which is no longer the plain base it was."""
    import torch

    loader = get_format(adapter.format)
    if loader.attach is None:
        raise UserError(f"model {adapter.name!r} is a {adapter.format} model, not an adapter; open it on its own.")
    loader.check(Path(adapter.path))
    try:
        return loader.attach(module, Path(adapter.path), adapter.slot, trainable)
    except torch.OutOfMemoryError:
        on_failure()
        raise
    except _unloadable() as exc:
        on_failure()
        raise UserError(f"adapter {adapter.name!r} in {adapter.path} does not fit its base ({_reason(exc)}); "
                        "register it with the base it was trained on.") from exc


# --- the shared modules ------------------------------------------------------------------------------------


class _Shared:
    """One base module in memory, the adapters attached to it, and the backends (views) opened over it."""

    def __init__(self, path: str, module: Any, tokenizer: Any) -> None:
        self.path = path
        self.module = module.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.dropped: str | None = None  # why this module may no longer be what its views expect
        self.lock = threading.RLock()  # held for a whole call: adapters are switched on the one module
        self.attached: dict[str, set[str]] = {}  # format -> slots attached
        self.views: dict[tuple[tuple[str, ...], str], SharedModelBackend] = {}
        self.nbytes = sum(t.numel() * t.element_size() for t in itertools.chain(module.parameters(), module.buffers()))

    def attach(self, adapters: Sequence[Adapter]) -> None:
        with self.lock:
            for adapter in adapters:
                if adapter.slot in self.attached.get(adapter.format, set()):
                    continue
                module = _attach(self.module, adapter, trainable=False,
                                 on_failure=functools.partial(self._drop, adapter))
                self.attached.setdefault(adapter.format, set()).add(adapter.slot)
                if module is not self.module:  # the first adapter wraps the base (a PeftModel)
                    self.module = module.eval()
                    for view in self.views.values():
                        view.rebind(module)

    def _drop(self, adapter: Adapter) -> None:
        """Out of the cache and out of use: a half-attached adapter could change every view's numbers."""
        self.dropped = f"adapter {adapter.name!r} failed to attach to it"
        LOADED.discard(self)

    @contextlib.contextmanager
    def activated(self, adapters: Sequence[Adapter]) -> Iterator[None]:
        """Exactly `adapters` switched on (none: the plain base) until the block ends, with the lock held."""
        with self.lock, contextlib.ExitStack() as stack:
            if self.dropped is not None:  # not a UserError: a retry opens the model afresh
                raise RuntimeError(f"the shared model {self.path} was unloaded because {self.dropped}; "
                                   "open its backend again.")
            for fmt in self.attached:
                active = get_format(fmt).active
                assert active is not None  # only adapter formats are attached
                stack.enter_context(active(self.module, [a.slot for a in adapters if a.format == fmt]))
            yield

    def view(self, adapters: Sequence[Adapter], fingerprint: str) -> SharedModelBackend:
        from rplat.llm.hf import HFBackend

        with self.lock:
            self.attach(adapters)
            key = (tuple(a.slot for a in adapters), fingerprint)
            if key not in self.views:
                self.views[key] = SharedModelBackend(self, tuple(adapters),
                                                     HFBackend(self.module, self.tokenizer, fingerprint=fingerprint))
            return self.views[key]


class SharedModelBackend:
    """The `hf` backend of one (base, adapters) view of a shared module. Each call switches the view's adapters
    on for its duration, under the module's lock, so two threads never interleave adapters; its own `HFBackend`
    keeps its own prefix KV store, so KV caches of different adapters never mix."""

    def __init__(self, shared: _Shared, adapters: tuple[Adapter, ...], backend: HFBackend) -> None:
        self._shared = shared
        self.adapters = adapters
        self._backend = backend

    @property
    def fingerprint(self) -> str:
        return self._backend.fingerprint

    @property
    def tokenizer(self) -> Any:
        return self._shared.tokenizer

    @property
    def model(self) -> Any:
        """The shared module (the same object for every view of one base)."""
        return self._shared.module

    def rebind(self, module: Any) -> None:
        self._backend.model = module

    def activated(self) -> contextlib.AbstractContextManager[None]:
        """This view's adapters switched on, for direct calls on `model`."""
        return self._shared.activated(self.adapters)

    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        with self.activated():
            return self._backend.generate(prompts, sampling, n)

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        with self.activated():
            return self._backend.score(contexts, continuations)

    def score_ids(self, ctx_ids: Sequence[list[int]], cont_ids: Sequence[list[int]]) -> list[list[float]]:
        with self.activated():
            return self._backend.score_ids(ctx_ids, cont_ids)

    def chat_prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return self._backend.chat_prompt(messages, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text)


def _limit(env: str, default: int | None) -> int | None:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"{env}={raw!r} is not a positive whole number; set it to e.g. 2, or unset it.")
    return int(raw)


class LoadedModels:
    """The shared base modules in memory, least recently used first. Limits are read from the environment at
    each load: RPLAT_MAX_LOADED_MODELS (count, default 2) and RPLAT_MAX_LOADED_BYTES (weights' bytes, no limit
    when unset). Evicting a base drops it and its adapters' views from the cache; a backend someone still holds
    keeps working (and keeps its module alive) until it is dropped."""

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str, str, str], _Shared] = OrderedDict()
        # one load at a time: two bases loading at once would exceed the memory the limits are meant to bound
        self._lock = threading.Lock()

    def get(self, path: str, fingerprint: str, dtype: torch.dtype, device: str) -> _Shared:
        key = (path, fingerprint, str(dtype), device)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            max_models = _limit("RPLAT_MAX_LOADED_MODELS", DEFAULT_MAX_LOADED_MODELS)
            max_bytes = _limit("RPLAT_MAX_LOADED_BYTES", None)
            assert max_models is not None
            self._evict(lambda: len(self._entries) >= max_models)  # room for the new one before loading it
            entry = _Shared(path, *_load_base(path, dtype, device))
            self._entries[key] = entry
            if max_bytes is not None:  # its size is known once loaded; the newest stays even when alone too big
                self._evict(lambda: len(self._entries) > 1 and self.nbytes() > max_bytes)
            return entry

    def _evict(self, over: Callable[[], bool]) -> None:
        evicted = False
        while self._entries and over():
            self._entries.popitem(last=False)
            evicted = True
        if evicted:
            import torch

            gc.collect()  # peft wrappers hold reference cycles: free the weights now, not at some later collection
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def discard(self, entry: _Shared) -> None:
        with self._lock:
            for key in [k for k, e in self._entries.items() if e is entry]:
                del self._entries[key]

    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def base_paths(self) -> list[str]:
        """The loaded bases' directories, least recently used first."""
        return [key[0] for key in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._evict(lambda: True)


LOADED = LoadedModels()


def _shared(spec: BackendSpec, adapters: Sequence[Adapter], dtype: torch.dtype | None, device: str | None) -> _Shared:
    dtype, device = _placement(dtype, device)
    entry = LOADED.get(spec.base_path, spec.base_fingerprint, dtype, device)
    entry.attach(adapters)
    return entry


# --- the registry side -------------------------------------------------------------------------------------


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


def resolve_backend(session: Session, name: str, *, backend: str = "hf", endpoint: str | None = None,
                    device: str | None = None) -> BackendSpec:
    """Registry look-up only: the model, its base, its cache identity and where it is served."""
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
        from rplat.serve import live_server

        server = None if endpoint else live_server(session, model.id)
        url = endpoint or (server.url if server else None) or os.environ.get("RPLAT_OPENAI_BASE_URL")
        if not url:
            raise UserError(f"no endpoint for model {name!r}; pass --param endpoint=URL "
                            "or start one with `rplat serve`.")
        served = server.served_name if server else name
        return BackendSpec("openai", name, base.path, fingerprint, base.fingerprint, adapters, url=url,
                           served_name=served)
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
