"""Sentence embeddings for the prefilter, from a local model directory only (never a hub download)."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import torch


@functools.cache
def load_encoder(path: str, device: str | None = None) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return SentenceTransformer(path, device=device, local_files_only=True)


def encode(encoder: Any, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    with torch.inference_mode():
        out = encoder.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return out.float().cpu()
