"""RATIONALYST A4: the loss delta of a rationale — how much it raises the discounted log-likelihood of what follows.

S = sum_t gamma^(t + start) * log p(y_t | context), over the content tokens of `following`;
delta = S_with - S_without; keep iff delta >= tau. The exponent starts at 0 (the filtering code's
convention; `start=1` gives the older script's). Empty preceding, rationale or following is never kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GAMMA = 0.9
TAU_PRESETS = {"pile": 0.0, "default": 0.0, "gsm8k": 1.2, "ecqa": 0.5}


@dataclass(frozen=True)
class LossDelta:
    s_without: float
    s_with: float
    delta: float
    kept: bool


def discounted_sum(logprobs: Sequence[float], gamma: float = GAMMA, start: int = 0) -> float:
    total, weight = 0.0, gamma**start
    for lp in logprobs:
        total += weight * lp
        weight *= gamma
    return total


def loss_delta(lp_without: Sequence[float], lp_with: Sequence[float], *, gamma: float = GAMMA, tau: float = 0.0,
               start: int = 0, spans_nonempty: bool = True) -> LossDelta:
    """Both sequences are the log-probs of the same following tokens, without and with the rationale."""
    if len(lp_without) != len(lp_with):
        raise ValueError(f"the two scorings cover different tokens ({len(lp_without)} vs {len(lp_with)})")
    s_without = discounted_sum(lp_without, gamma, start)
    s_with = discounted_sum(lp_with, gamma, start)
    delta = s_with - s_without
    kept = spans_nonempty and len(lp_with) > 0 and delta >= tau
    return LossDelta(s_without, s_with, delta, kept)
