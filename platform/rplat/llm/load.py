"""The one model loader: shared bases with unmerged adapters, a bounded LRU, backends over them.

A `BackendSpec` from `rplat.llm.resolve.prepare_backend` says what to open; this module loads it, and never
reads the registry. `open_backend(spec)` is the one way to open a model's backend: for `hf`, one
`SharedModelBackend` per (base, adapters) view of a shared module, each call switching the view's adapters on
under the module's lock; for `openai`, a client of the spec's server with the model's own tokenizer.
`load(spec)` gives the module and tokenizer themselves. `trainable=False` gives the shared module, kept in an
LRU of base modules (at most RPLAT_MAX_LOADED_MODELS of them, default 2, and at most RPLAT_MAX_LOADED_BYTES of
weights when that is set); every adapter of the same base is attached to that one module, unmerged, under a
name of its own (the format registry in `rplat.llm.formats` says how). `trainable=True` gives a fresh private
copy, never cached, for a training job to modify."""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rplat.errors import UserError
from rplat.llm import Backend, Completion, Message, Sampling
from rplat.llm.formats import get_format
from rplat.llm.resolve import Adapter, BackendSpec

if TYPE_CHECKING:
    import torch

    from rplat.llm.hf import HFBackend

DEFAULT_MAX_LOADED_MODELS = 2


def open_backend(spec: BackendSpec) -> Backend:
    """The backend of `spec`: its shared base's view with its adapters (`hf`), or its server (`openai`)."""
    if spec.backend == "hf":
        return _shared(spec, spec.adapters, None, spec.device).view(spec.adapters, spec.fingerprint)
    from rplat.llm.openai import OpenAIBackend  # on first use: only a served model needs httpx

    assert spec.url is not None and spec.served_name is not None
    return OpenAIBackend(spec.url, spec.served_name, load_tokenizer(spec.base_path), fingerprint=spec.fingerprint)


# --- loading ---------------------------------------------------------------------------------------------


def load(spec: BackendSpec, *, adapters: Sequence[Adapter] | None = None, trainable: bool = False,
         dtype: torch.dtype | None = None, device: str | None = None) -> tuple[Any, Any]:
    """(module, tokenizer) of `spec`'s base with `adapters` attached unmerged (default: the spec's own; `()` for
    the bare base). `trainable=False`: the shared, cached module in eval mode, frozen; calls on it must run
    with its adapters switched on, as the backends from `open_backend` do (`backend.activated()`).
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
