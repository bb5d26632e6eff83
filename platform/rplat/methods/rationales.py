"""RATIONALYST A3: an extractor's output as (preceding, rationale, following) triples; fidelity.

The extractor rewrites a document with implicit rationales inserted as `<BOT>rationale<EOT>`. Malformed
outputs are common with small models, so the parser is a small state machine with defined behaviour:
- a rationale is the text between a begin marker and the next end marker;
- a begin marker inside an open rationale (nested or unclosed) abandons the open one: it never closed;
- a rationale still open at the end of the output is dropped (missing end marker);
- a stray end marker outside a rationale is ignored;
- text outside rationales is the document's text; `preceding` is all of it before the rationale and
  `following` is the text after it up to the next begin marker (one span, as the reference code does).
Empty spans are kept as empty strings: the loss-delta filter marks such triples not kept (A4 edge cases).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BOT, EOT = "<BOT>", "<EOT>"
_HSPACE = re.compile(r"[ \t]{2,}")


@dataclass(frozen=True)
class Triple:
    position: int
    preceding: str
    rationale: str
    following: str
    left_step: int


def _pieces(output: str, bot: str, eot: str) -> list[str]:
    return re.split(f"({re.escape(bot)}|{re.escape(eot)})", output)


def strip_rationales(output: str, bot: str = BOT, eot: str = EOT) -> str:
    """The output with every rationale and every marker removed: what fidelity is measured on."""
    return "".join(_text_and_rationales(output, bot, eot)[0])


def _text_and_rationales(output: str, bot: str, eot: str) -> tuple[list[str], list[tuple[int, str]]]:
    """Text spans in order, and closed rationales as (index of the text span that follows, rationale)."""
    spans: list[str] = [""]
    closed: list[tuple[int, str]] = []
    open_rationale: list[str] | None = None
    for piece in _pieces(output, bot, eot):
        if piece == bot:
            open_rationale = []
        elif piece == eot:
            if open_rationale is not None:
                closed.append((len(spans), "".join(open_rationale)))
                spans.append("")
                open_rationale = None
        elif open_rationale is not None:
            open_rationale.append(piece)
        else:
            spans[-1] += piece
    return spans, closed


def parse_triples(output: str, bot: str = BOT, eot: str = EOT) -> list[Triple]:
    """One triple per closed rationale, numbered from 1 in order of appearance."""
    spans, closed = _text_and_rationales(output, bot, eot)
    triples = []
    for i, (next_span, rationale) in enumerate(closed, start=1):
        triples.append(Triple(
            position=i,
            preceding=_HSPACE.sub(" ", "".join(spans[:next_span])).strip(),
            rationale=rationale.strip(),
            following=spans[next_span].strip(),
            left_step=len(closed) + 1 - i,
        ))
    return triples


def _squash(text: str) -> str:
    return text.replace("\n", " ").replace(" ", "")


def fidelity(original: str, output: str, bot: str = BOT, eot: str = EOT) -> float:
    """1 - editdistance(s1, s2) / len(s1) on the texts with newlines and spaces removed (A3)."""
    from rapidfuzz.distance import Levenshtein

    s1 = _squash(original)
    s2 = _squash(strip_rationales(output, bot, eot))
    if not s1:
        return 1.0 if not s2 else 0.0
    return 1.0 - Levenshtein.distance(s1, s2) / len(s1)


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def text_units(text: str) -> list[str]:
    """Insert-mode units: the non-empty lines of a multi-line text (worked solutions), else its sentences."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return lines
    return [u.strip() for u in _SENTENCE_END.split(text.strip()) if u.strip()]


def insert_rationales(units: list[str], rationales: list[str], bot: str = BOT, eot: str = EOT) -> str:
    """The annotated text insert mode produces: rationale i between unit i and unit i+1 (markers stripped from them)."""
    if len(rationales) != len(units) - 1:
        raise ValueError(f"{len(units)} units need {len(units) - 1} rationales, got {len(rationales)}")
    parts = [units[0]]
    for rationale, unit in zip(rationales, units[1:], strict=True):
        clean = rationale.replace(bot, "").replace(eot, "").strip()
        parts.append(f"{bot}{clean}{eot}{unit}")
    return "\n".join(parts)
