"""RATIONALYST leak detection: how much of the following text a mined rationale restates.

Insert-mode extraction shows the extractor the next text, and a rationale that copies it makes that text
trivially likelier: the loss-delta filter (A4) then keeps exactly the copies. The measure is novel bigram
containment: of the word bigrams of the following text (every occurrence, as the loss scores every token) that
the preceding text does not contain, the share that also occurs in the rationale,

    overlap = #{i : f_i f_i+1 occurs in the rationale and not in the preceding} / #{i : f_i f_i+1 not in the preceding}

over the normalized words f of the following text (`words`): how much of what the following text adds to the
preceding one the rationale already says. Why this form:
- containment, not a symmetric similarity: a rationale that copies the following text and adds words of its
  own ("So, the next text says ...") still makes every following token likelier;
- bigrams, not words: single words ("the", "is", a quantity's unit) recur in any rationale on the same topic,
  while a shared bigram is a copied phrase; a one-word edit still leaves most bigrams of a copy intact, which
  trigrams would not (on the demo's rationales, trigrams pulled near-copies down among the real ones);
- bigrams already in the preceding text are left out: the rationale may repeat those without seeing the
  future, e.g. "The answer is 14." before "#### 14" after a solution that computed 14 (plain containment
  calls that a full copy);
- a following text of one word is compared word by word; one that adds nothing new has overlap 0.
Words are lowercased (NFKC), apostrophes dropped ("don't" = "dont"), punctuation and symbols are separators,
and numbers are compared by value as written in decimal: "1,000", "1000" and "1000.00" are one word.
"""

from __future__ import annotations

import re
import unicodedata

BIGRAM = 2
# score-rationales' default: on the demo's 43 mined rationales every copy, near-copy or copied computation
# measured >= 0.43 and every real rationale or paraphrase <= 0.35.
LEAK_THRESHOLD = 0.4
_APOSTROPHES = re.compile(r"['\u2019]")
# A number with thousands separators or a decimal part is one word; any other run of letters is one word.
_WORD = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|[^\W\d_]+")


def _number(word: str) -> str:
    word = word.replace(",", "")
    return word.rstrip("0").rstrip(".") if "." in word else word


def words(text: str) -> list[str]:
    """The normalized words overlap is measured on."""
    text = _APOSTROPHES.sub("", unicodedata.normalize("NFKC", text).lower())
    return [_number(w) if w[0].isdigit() else w for w in _WORD.findall(text)]


def _sequence(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def overlap(preceding: str, rationale: str, following: str) -> float:
    """Novel bigram containment of `following` in `rationale`, in [0, 1] (module docstring)."""
    fol = words(following)
    n = min(BIGRAM, len(fol))
    if n == 0:
        return 0.0
    known = set(_sequence(words(preceding), n))
    novel = [g for g in _sequence(fol, n) if g not in known]
    if not novel:
        return 0.0
    said = set(_sequence(words(rationale), n))
    return sum(g in said for g in novel) / len(novel)


def is_leak(overlap: float, threshold: float) -> bool:
    """A rationale restating this much of its following text is a leak (a threshold above 1 marks none)."""
    return overlap >= threshold
