"""RATIONALYST A4: the loss delta, how much a rationale raises the likelihood of what follows.

S = sum_t gamma^(t + start) * log p(y_t | context), over the content tokens of `following`;
delta = S_with - S_without; keep iff delta >= tau. The exponent starts at 0 (the filtering code's
convention; `start=1` gives the older script's). Empty preceding, rationale or following is never kept.
The two contexts are chat turns: the scorer's system prompt, then the preceding text as the user turn,
without and with the rationale appended; `following` is scored as the assistant's reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rplat.llm import Message

GAMMA = 0.9


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


def scoring_contexts(system: str, preceding: str, rationale: str) -> tuple[list[Message], list[Message]]:
    """The contexts `following` is scored after: without the rationale, and with it joined to the preceding
    text by ". " (the reference code's join)."""
    def context(user: str) -> list[Message]:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    return context(preceding), context(f"{preceding}. {rationale}")


def spans_nonempty(preceding: str, rationale: str, following: str) -> bool:
    """Whether all three spans hold text: a rationale with an empty side is never kept."""
    return bool(preceding.strip() and rationale.strip() and following.strip())
