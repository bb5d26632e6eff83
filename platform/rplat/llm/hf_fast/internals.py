"""The one check of the transformers internals the fast paths rely on, run before first use.

The fast paths subclass `transformers.cache_utils.DynamicLayer` (relying on how it initialises, appends and
crops), read and switch `config._attn_implementation` around calls, register an attention function and its
mask function, call the registered `sdpa` attention from it, and ask generation whether a model takes a
default `DynamicCache` (`_supports_default_dynamic_cache`). If a transformers upgrade changes any of that,
`unavailable()` says what, and `HFBackend` warns and takes the plain path instead of computing wrong numbers.
This module imports nothing private at import time, so that it can report what is missing.
"""

from __future__ import annotations

import functools
import inspect

import torch

# The leading parameters the attention functions are called with, in this order (the AttentionInterface contract).
ATTENTION_PARAMETERS = ("module", "query", "key", "value", "attention_mask", "dropout", "scaling")


def _dynamic_layer_problems() -> list[str]:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return ["transformers.cache_utils.DynamicLayer is gone"]
    problems = [f"DynamicLayer.{name} is gone" for name in ("lazy_initialization", "update", "crop",
                                                              "batch_repeat_interleave", "get_seq_length")
                if not callable(getattr(DynamicLayer, name, None))]
    if problems:
        return problems
    try:
        layer = DynamicLayer()
        if layer.is_initialized or layer.keys is not None:
            return ["a new DynamicLayer is no longer empty and uninitialised (is_initialized False, keys None)"]
        keys = torch.arange(24.0).reshape(1, 2, 3, 4)
        layer.lazy_initialization(keys, keys)
        if not layer.is_initialized or layer.keys.dim() == 4:
            return ["DynamicLayer.lazy_initialization no longer leaves is_initialized True and empty keys"]
        layer.keys, layer.values = keys, keys.clone()
        layer.crop(-1)
        # A crop must leave a view into the same storage: the growing layer writes after it in place.
        if layer.keys.shape != (1, 2, 2, 4) or layer.keys.data_ptr() != keys.data_ptr():
            return ["DynamicLayer.crop(-n) no longer keeps a view of the first tokens of its keys"]
    except Exception as err:  # any failure of the probe means the layer works differently now
        return [f"DynamicLayer no longer behaves as the growing layer expects ({type(err).__name__}: {err})"]
    return []


def _attention_problems() -> list[str]:
    try:
        from transformers import AttentionInterface, AttentionMaskInterface, PretrainedConfig
    except ImportError as err:
        return [f"transformers no longer exports {err.name or err}"]
    problems = [f"{cls.__name__}.register is gone" for cls in (AttentionInterface, AttentionMaskInterface)
                if not callable(getattr(cls, "register", None))]
    if "sdpa" not in AttentionInterface():
        problems.append("AttentionInterface has no 'sdpa' attention")
    elif tuple(inspect.signature(AttentionInterface()["sdpa"]).parameters)[:len(ATTENTION_PARAMETERS)] \
            != ATTENTION_PARAMETERS:
        problems.append(f"the 'sdpa' attention function no longer takes {', '.join(ATTENTION_PARAMETERS)} first")
    if "sdpa" not in AttentionMaskInterface():
        problems.append("AttentionMaskInterface has no 'sdpa' mask function")
    attn = inspect.getattr_static(PretrainedConfig, "_attn_implementation", None)
    if not isinstance(attn, property) or attn.fset is None:
        problems.append("PretrainedConfig._attn_implementation is no longer a settable property")
    return problems


def _generation_problems() -> list[str]:
    try:
        from transformers import DynamicCache, GenerationMixin
    except ImportError as err:
        return [f"transformers no longer exports {err.name or err}"]
    problems = []
    if not callable(getattr(GenerationMixin, "_supports_default_dynamic_cache", None)):
        problems.append("GenerationMixin._supports_default_dynamic_cache is gone")
    if not all(callable(getattr(DynamicCache, name, None)) for name in ("crop", "batch_repeat_interleave", "update")):
        problems.append("DynamicCache lost crop, batch_repeat_interleave or update")
    return problems


@functools.cache
def problems() -> tuple[str, ...]:
    """What the installed transformers lacks of what the fast paths rely on; empty when all is there."""
    return tuple(_dynamic_layer_problems() + _attention_problems() + _generation_problems())


def unavailable() -> str | None:
    """Why the fast paths cannot run with the installed transformers (one sentence), or None if they can."""
    found = problems()
    if not found:
        return None
    import transformers

    return f"transformers {transformers.__version__} changed internals they rely on ({'; '.join(found)})"
