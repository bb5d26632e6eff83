"""CPU attention for the fast paths: grouped KV heads under a padding mask, packed rows.

Registered as an attention implementation of its own and switched on around a call (`gqa_attention`); any
call it does not recognise goes to transformers' registered `sdpa` function unchanged.
"""

from __future__ import annotations

import contextvars
from typing import Any

import torch

GQA_SDPA = "rplat_sdpa_gqa"


class Segments:
    """A packed scoring row: `width` base tokens in the KV cache, then `total` query tokens made of segments
    (start, shared, length), each attending to the base's first `shared` tokens and causally to itself."""

    def __init__(self, width: int, total: int, segments: list[tuple[int, int, int]]) -> None:
        self.width, self.total, self.segments = width, total, segments
        self.masks: dict[tuple[int, int], torch.Tensor] = {}

    def mask(self, shared: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        key = (shared, length)
        if key not in self.masks:  # additive, as SDPA would turn a boolean mask into at every call
            m = torch.zeros(length, shared + length, dtype=dtype, device=device)
            m[:, shared:] = torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)
            self.masks[key] = m
        return self.masks[key]


_PACKED: contextvars.ContextVar[Segments | None] = contextvars.ContextVar("rplat_packed", default=None)


class gqa_attention:  # noqa: N801 (used as a context manager)
    """On CPU, let SDPA attend with grouped KV heads as they are (`enable_gqa`) even under a padding mask, where
    transformers' `sdpa` first copies every KV head once per query head: that copy, over the whole cache at every
    decoding step, costs more than the attention itself in a batch of long prompts. With `segments` (a packed
    scoring row), each member's tokens attend only to the keys its mask allows, one SDPA call per member, instead
    of the whole row's block-diagonal mask over base and row, which is mostly masked out."""

    def __init__(self, model: Any, segments: Segments | None = None) -> None:
        self.config = model.config
        self.active = self.config._attn_implementation == "sdpa" and next(model.parameters()).device.type == "cpu"
        self.segments = segments
        self.token: contextvars.Token[Segments | None] | None = None

    def __enter__(self) -> None:
        if self.active:
            _register()
            self.config._attn_implementation = GQA_SDPA
            self.token = _PACKED.set(self.segments)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.config._attn_implementation = "sdpa"
            if self.token is not None:
                _PACKED.reset(self.token)


def _packed_forward(packed: Segments, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float,
                    scaling: float | None) -> torch.Tensor:
    out = torch.empty_like(query)
    for start, shared, length in packed.segments:
        tail = slice(packed.width + start, packed.width + start + length)
        k = torch.cat((key[:, :, :shared], key[:, :, tail]), dim=2)
        v = torch.cat((value[:, :, :shared], value[:, :, tail]), dim=2)
        out[:, :, start:start + length] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:start + length], k, v, dropout_p=dropout, scale=scaling,
            attn_mask=packed.mask(shared, length, query.dtype, query.device), enable_gqa=key.shape[1] != query.shape[1])
    return out


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface

    if GQA_SDPA in AttentionInterface():
        return
    sdpa = AttentionInterface()["sdpa"]

    def forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        special = kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
        packed = _PACKED.get()
        if packed is not None and not special and query.shape[0] == 1 and query.shape[2] == packed.total and \
                key.shape[2] == packed.width + packed.total:
            out = _packed_forward(packed, query, key, value, dropout, scaling)
        elif attention_mask is None or attention_mask.dtype != torch.bool or key.shape[1] == query.shape[1] or special:
            return sdpa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                                   dropout_p=dropout, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(GQA_SDPA, forward)
    AttentionMaskInterface.register(GQA_SDPA, AttentionMaskInterface()["sdpa"])
