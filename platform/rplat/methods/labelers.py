"""The two teacher-chain labelers of TDG B1: the paper's Hendrycks MATH rule and math-verify.

`hendrycks` is what the reference code did (the last `\\boxed{}` of chain and gold, the MATH normalisation
of docs/tdg.md B1, then string equality; no box means negative). `math-verify` compares the same answers
symbolically, so it also credits `0.50` against `\\frac{1}{2}`. Both verdicts are always computed, so the
chains the paper called negative that are in fact right can be counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from rplat.methods.answers import extract_answer, is_correct

LABELERS = ("hendrycks", "math-verify")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_PLAIN_ANSWER_CHARS = 40


# --- boxes -------------------------------------------------------------------------------------------


def last_boxed(text: str | None) -> str | None:
    """The last `\\boxed{...}` / `\\fbox{...}` (brace-matched) or `\\boxed 5` in `text`, wrapper included.

    An unclosed box (a chain cut off mid-answer) or none at all gives None: no answer.
    """
    if not text:
        return None
    start = max(text.rfind(command) for command in _BOX_COMMANDS)
    if start < 0:
        return None
    command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(command)
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:j + 1]
        return None
    if i == start + len(command):  # `\boxedx`: another command, not a box
        return None
    # The brace-less form `\boxed 5`: its argument runs to the closing `$` (or the end of the line).
    argument = re.split(r"[$\n]", text[i:], maxsplit=1)[0].strip()
    return f"{command} {argument}" if argument else None


def remove_boxed(boxed: str | None) -> str | None:
    """The argument of a `last_boxed` string (`\\boxed{5}`, `\\fbox{5}`, `\\boxed 5` → `5`); None if it is none."""
    if boxed is None:
        return None
    for command in _BOX_COMMANDS:
        if boxed.startswith(command):
            rest = boxed[len(command):]
            stripped = rest.lstrip(" ")
            if stripped.startswith("{") and stripped.endswith("}"):
                return stripped[1:-1]
            if rest.startswith(" ") and stripped:
                return stripped
    return None


# --- the Hendrycks MATH normalisation (docs/tdg.md B1, in its order) ---------------------------------


def _fix_fracs(string: str) -> str:
    """`\\frac12` → `\\frac{1}{2}`, `\\frac1{72}` → `\\frac{1}{72}`; a `\\frac` with under two characters
    after it leaves the string as it was; nothing at all after it raises (then raw strings are compared)."""
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if substr[0] == "{":
            new_str += substr
            continue
        if len(substr) < 2:
            return string
        a, b, post = substr[0], substr[1], substr[2:]
        new_str += "{" + a + "}{" + b + "}" + post if b != "{" else "{" + a + "}" + b + post
    return new_str


def _fix_a_slash_b(string: str) -> str:
    """`A/B` of two integers written plainly → `\\frac{A}{B}`; anything else unchanged."""
    parts = string.split("/")
    if len(parts) != 2:
        return string
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return string
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(string: str) -> str:
    """Everything before `\\text{ ` (a space after the brace marks units in MATH); two of them raise."""
    if "\\text{ " not in string:
        return string
    splits = string.split("\\text{ ")
    if len(splits) != 2:
        raise ValueError("more than one \\text{ unit")
    return splits[0]


def _fix_sqrt(string: str) -> str:
    """`\\sqrt3` → `\\sqrt{3}` (one character); a `\\sqrt` at the very end raises."""
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    new_string = splits[0]
    for split in splits[1:]:
        if split[0] != "{":
            new_string += "\\sqrt{" + split[0] + "}" + split[1:]
        else:
            new_string += "\\sqrt" + split
    return new_string


def strip_math(string: str) -> str:
    """The Hendrycks MATH answer normalisation, step by step in the reference order (may raise IndexError or
    ValueError on odd input, as the reference does; `is_equiv_hendrycks` then compares the raw strings)."""
    string = string.replace("\n", "")
    string = string.replace("\\!", "")
    string = string.replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "")
    string = string.replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "").replace("%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if not string:
        return string
    if string[0] == ".":
        string = "0" + string
    sides = string.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        string = sides[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def is_equiv_hendrycks(a: str | None, b: str | None) -> bool:
    """The reference `is_equiv`: normalised strings equal; if normalising raises, the raw strings equal. A missing
    answer on either side is never equivalent (the reference counts a chain without a box as negative)."""
    if a is None or b is None:
        return False
    try:
        return strip_math(a) == strip_math(b)
    except (IndexError, ValueError):
        return a == b


# --- answers and verdicts ------------------------------------------------------------------------------


def chain_answer(text: str | None) -> str | None:
    """The answer a chain boxes (the last box's argument), or None: what the Hendrycks labeler judges."""
    return remove_boxed(last_boxed(text))


def gold_answer(solution: str | None) -> str | None:
    """The gold answer of a worked solution: its last box; else the `#### N` / "the answer is N" answer; else the
    solution itself when it is a short single line (a plain answer such as `5` or `\\frac{1}{2}`)."""
    if solution is None:
        return None
    boxed = chain_answer(solution)
    if boxed is not None:
        return boxed
    stated = extract_answer(solution)
    if stated is not None:
        return stated
    plain = solution.strip()
    return plain if plain and "\n" not in plain and len(plain) <= _PLAIN_ANSWER_CHARS else None


@lru_cache(maxsize=1 << 16)
def math_verify_equiv(answer: str | None, gold: str | None) -> bool:
    """math-verify equivalence of two bare answers, each parsed as the argument of a box (bare LaTeX such as
    `\\frac12` or `[1,2)` is otherwise not recognised as mathematics at all). Memoised: the chains of one
    problem often state the same answer, and a symbolic comparison costs milliseconds."""
    if answer is None or gold is None or not answer.strip() or not gold.strip():
        return False
    return is_correct("\\boxed{" + answer + "}", "\\boxed{" + gold + "}")


@dataclass(frozen=True)
class Verdict:
    """A chain's extracted answer, both labelers' verdicts, and its label under the chosen labeler."""

    answer: str | None
    hendrycks: bool
    math_verify: bool
    label: str


def label_chain(text: str, gold: str | None, labeler: str = "hendrycks") -> Verdict:
    """Judge one chain against the gold answer. The answer is the chain's last box; math-verify, which also
    reads an unboxed `#### N` / "the answer is N", falls back to that when the chain boxes nothing (the stored
    answer is then that one, while the Hendrycks verdict stays negative)."""
    if labeler not in LABELERS:
        raise ValueError(f"unknown labeler {labeler!r}; choose one of {', '.join(LABELERS)}")
    boxed = chain_answer(text)
    answer = boxed if boxed is not None else extract_answer(text)
    hendrycks = is_equiv_hendrycks(boxed, gold)
    math_verify = math_verify_equiv(answer, gold)
    correct = hendrycks if labeler == "hendrycks" else math_verify
    return Verdict(answer, hendrycks, math_verify, "pos" if correct else "neg")
