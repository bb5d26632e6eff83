"""The format registry: how each model format's files are checked, detected and attached.

`Model.format` names an entry here. A format whose loader has `attach` is an adapter format: its files are
attached to a shared base module (unmerged) and switched on per call with `active`; the others (`base`,
`embedding`, `ranker`) are whole models. `register_format` adds a format without touching the backends or the loader.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rplat.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


@dataclass(frozen=True)
class FormatLoader:
    """What a format knows about its directories and, for an adapter format, about attaching its files.

    detect(path): whether a directory looks like this format (for `rplat models add` without --format).
    check(path): raise `UserError` (one sentence: what is missing, where, how to fix) unless the directory can be
    loaded as this format; run at registration and again before loading.
    attach(module, path, adapter_name, trainable): the module with the adapter in `path` added under
    `adapter_name` (unmerged, frozen unless `trainable`); may return a new wrapper around `module`.
    active(module, adapter_names): a context manager under which exactly these adapters of this format are
    switched on (none: all of this format's adapters off) for one call.
    base_hint(path): what the adapter's own files name as its base (a hub id or a directory), if anything; the
    registry matches it against registered models when no base is given.
    """

    detect: Callable[[Path], bool]
    check: Callable[[Path], None]
    attach: Callable[[Any, Path, str, bool], Any] | None = None
    active: Callable[[Any, Sequence[str]], AbstractContextManager[None]] | None = None
    base_hint: Callable[[Path], str | None] | None = None

    @property
    def adapter(self) -> bool:
        return self.attach is not None


_FORMATS: dict[str, FormatLoader] = {}


def register_format(name: str, loader: FormatLoader) -> None:
    """Add (or replace) format `name`. Detection tries the most recently registered format first, so a format
    registered later (more specific, e.g. one whose directories also hold a config.json) wins over `base`."""
    if (loader.attach is None) != (loader.active is None):
        raise ValueError(f"format {name!r}: an adapter format needs both attach and active, a whole model neither")
    _FORMATS.pop(name, None)
    _FORMATS[name] = loader


def get_format(name: str) -> FormatLoader:
    loader = _FORMATS.get(name)
    if loader is None:
        raise UserError(f"unknown model format {name!r}; use one of {', '.join(sorted(_FORMATS))}.")
    return loader


def adapter_formats() -> tuple[str, ...]:
    """The formats attached to a base model rather than loaded whole."""
    return tuple(name for name, loader in _FORMATS.items() if loader.adapter)


def detect_format(path: Path) -> str:
    for name in reversed(list(_FORMATS)):
        if _FORMATS[name].detect(path):
            return name
    raise UserError(f"{path} is neither a Hugging Face model (no config.json) nor a peft adapter (no "
                    "adapter_config.json); point at the folder `save_pretrained` wrote.")


# --- checks shared by the built-in formats --------------------------------------------------------------


def read_json(path: Path, file: str) -> dict[str, Any]:
    try:
        data = json.loads((path / file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} has no {file}; point at the folder `save_pretrained` wrote.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path / file} is unreadable ({type(exc).__name__}); save the model again.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path / file} is not a JSON object; save the model again.")
    return data


def _has_weights(path: Path, stem: str) -> bool:
    return any(path.glob(f"{stem}*.safetensors")) or any(path.glob(f"{stem}*.bin"))


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"the model directory {path} does not exist; re-register the model with `rplat models add`.")
    if "model_type" not in read_json(path, "config.json"):
        raise UserError(f"{path / 'config.json'} has no model_type, so transformers cannot tell the model's "
                        "architecture; save the model again with `save_pretrained`.")
    if not _has_weights(path, ""):
        raise UserError(f"{path} has no weight files (*.safetensors or *.bin); copy the weights next to its "
                        "config.json.")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES[:2])}); save it there with "
                        "`tokenizer.save_pretrained`.")


# --- base: a Hugging Face causal LM directory ------------------------------------------------------------


def _detect_base(path: Path) -> bool:
    return (path / "config.json").is_file()


# --- embedding: a sentence-transformers directory --------------------------------------------------------

SENTENCE_TRANSFORMERS_FILES = ("modules.json", "config_sentence_transformers.json")


def _detect_embedding(path: Path) -> bool:
    return any((path / f).is_file() for f in SENTENCE_TRANSFORMERS_FILES)


def _check_embedding(path: Path) -> None:
    _check_model_dir(path)
    if not _detect_embedding(path):
        raise UserError(f"{path} is not a sentence-transformers model (no modules.json); save it with "
                        "`SentenceTransformer.save`.")


# --- lora: a peft LoRA adapter ---------------------------------------------------------------------------


def _detect_lora(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _check_lora(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"the adapter directory {path} does not exist; re-register the adapter.")
    kind = read_json(path, "adapter_config.json").get("peft_type")
    if kind != "LORA":
        raise UserError(f"{path} holds a {kind} peft adapter, not a LoRA one; rplat attaches LoRA adapters only.")
    if not _has_weights(path, "adapter_model"):
        raise UserError(f"{path} has no adapter weights (adapter_model.safetensors); save the adapter again with "
                        "`save_pretrained`.")


def _attach_lora(module: Any, path: Path, adapter_name: str, trainable: bool) -> Any:
    from peft import PeftModel

    if isinstance(module, PeftModel):
        module.load_adapter(str(path), adapter_name=adapter_name, is_trainable=trainable)
        return module
    return PeftModel.from_pretrained(module, str(path), adapter_name=adapter_name, is_trainable=trainable)


def _lora_base(path: Path) -> str | None:
    return read_json(path, "adapter_config.json").get("base_model_name_or_path") or None


@contextlib.contextmanager
def _active_lora(module: Any, adapter_names: Sequence[str]) -> Iterator[None]:
    if not adapter_names:
        with module.disable_adapter():
            yield
        return
    # inference_mode: switching must not make a shared, frozen module's adapter weights trainable. PeftModel's own
    # set_adapter takes one name (and records it); several LoRAs are summed by switching its tuner to all of them.
    module.set_adapter(adapter_names[0], inference_mode=True)
    if len(adapter_names) > 1:
        module.base_model.set_adapter(list(adapter_names), inference_mode=True)
    yield


# --- nat: the NAT layer of TDG B2 (rplat.methods.nat) ------------------------------------------------------


def _detect_nat(path: Path) -> bool:
    return (path / "nat_config.json").is_file()


def _check_nat(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"the NAT model directory {path} does not exist; re-register the model.")
    if not isinstance(read_json(path, "nat_config.json").get("nat"), dict):
        raise UserError(f"{path / 'nat_config.json'} has no \"nat\" settings; save the NAT model again (save_nat).")
    if not (path / "nat_model.safetensors").is_file():
        raise UserError(f"{path} has no nat_model.safetensors; save the NAT model again (save_nat).")


def _attach_nat(module: Any, path: Path, adapter_name: str, trainable: bool) -> Any:
    from rplat.methods.nat import load_nat

    return load_nat(module, path, adapter_name=adapter_name, trainable=trainable)


def _active_nat(module: Any, adapter_names: Sequence[str]) -> AbstractContextManager[None]:
    from rplat.methods.nat import active_nat

    if len(adapter_names) > 1:
        raise UserError(f"NAT adapters {', '.join(adapter_names)} cannot be switched on together; open one at a time.")
    return active_nat(module, adapter_names[0] if adapter_names else None)


def _nat_base(path: Path) -> str | None:
    return read_json(path, "nat_config.json").get("base_model_name_or_path") or None


# --- ranker: TDG B4's trained ranker (rplat.methods.ranker), a scorer, not a language model -----------------


def _detect_ranker(path: Path) -> bool:
    return (path / "ranker_config.json").is_file()


def _check_ranker(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"the ranker directory {path} does not exist; re-register the ranker.")
    if not isinstance(read_json(path, "ranker_config.json").get("ranker"), dict):
        raise UserError(f"{path / 'ranker_config.json'} has no \"ranker\" settings; save the ranker again (a "
                        "train-ranker job).")
    if not (path / "head.safetensors").is_file():
        raise UserError(f"{path} has no head.safetensors; save the ranker again (a train-ranker job).")
    _check_model_dir(path / "encoder")


register_format("base", FormatLoader(detect=_detect_base, check=_check_model_dir))
register_format("embedding", FormatLoader(detect=_detect_embedding, check=_check_embedding))
register_format("lora", FormatLoader(detect=_detect_lora, check=_check_lora, attach=_attach_lora,
                                     active=_active_lora, base_hint=_lora_base))
register_format("nat", FormatLoader(detect=_detect_nat, check=_check_nat, attach=_attach_nat,
                                    active=_active_nat, base_hint=_nat_base))
register_format("ranker", FormatLoader(detect=_detect_ranker, check=_check_ranker))
