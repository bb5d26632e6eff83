"""Final answers: extracted from solutions, compared with math-verify (boxed, fractions, %).

The GSM8K `#### N` convention and the agent's "The answer is: N" ending are understood; so is the MATH
`\\boxed{}` convention. Comparison is math-verify's, which treats 28,080 and 28080, 1/2 and 0.5, 50% and 0.5
as equal.
"""

from __future__ import annotations

import re

_GSM = re.compile(r"####\s*(.+)")
_ANSWER_IS = re.compile(r"(?:the correct answer is|the answer is)(?: indeed)?\s*:?\s*(.+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?%?")
_INTEGER = re.compile(r"([+-]?)([0-9]+)")


def has_final_answer(text: str) -> bool:
    """Stop rule of guided solving: an end phrase followed by something, a boxed answer, or a GSM8K marker."""
    return extract_answer(text) is not None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed{")
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            if depth == 0:
                return text[i:j].strip()
            depth -= 1
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a solution states (last boxed, then `####`, then the last "the answer is"), or None."""
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    gsm = _GSM.findall(text)
    if gsm and gsm[-1].strip():
        return gsm[-1].strip()
    found = _ANSWER_IS.findall(text)
    if found:
        tail = found[-1].strip()
        number = _NUMBER.search(tail)
        answer = number.group(0) if number else tail.rstrip(".").strip()
        return answer or None
    return None


def normalize(answer: str | None) -> str | None:
    """A canonical string for voting: numbers without $ , and trailing .0; anything else stripped and lowercased.

    Never raises. An integer is kept digit for digit however long; any other number beyond float range or
    spelled as one ("inf", "Infinity", "1e400") is "inf" or "-inf", and "nan" in any case or sign is "nan":
    such answers vote together, as strings."""
    if answer is None:
        return None
    text = answer.strip().strip(".").replace("$", "").replace(",", "")
    integer = _INTEGER.fullmatch(text)
    if integer:  # exact, with no int() (whose conversion stops at 4,300 digits) and no float rounding
        sign, digits = integer.groups()
        digits = digits.lstrip("0") or "0"
        return "-" + digits if sign == "-" and digits != "0" else digits
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        return text.lower() or None
    if text.endswith("%"):
        return f"{value}%"
    # is_integer() is False for inf and nan, whose str() is then "inf", "-inf" or "nan" (int() would raise).
    return str(int(value)) if value.is_integer() else str(value)


MAX_VERIFY_CHARS = 1000  # longer answers skip math-verify (its parse of 1 MB of digits takes seconds)


def is_correct(predicted: str | None, gold: str | None) -> bool:
    """math-verify equivalence of the predicted and gold answers (False when either is missing). Each is parsed
    as the argument of a box: bare LaTeX such as `\\frac12`, `2\\sqrt{3}` or `\\text{Monday}` is otherwise not
    read as mathematics at all, while plain numbers, percentages and thousands separators parse the same.

    Never raises: where math-verify cannot judge (unparsable input, its 5 s timeout, an answer longer than
    MAX_VERIFY_CHARS, or a call off the main thread, where its SIGALRM timeout cannot be set) the `normalize`d
    strings are compared instead."""
    if not predicted or not gold:
        return False
    if len(predicted) > MAX_VERIFY_CHARS or len(gold) > MAX_VERIFY_CHARS:
        return normalize(predicted) == normalize(gold)
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    def boxed(answer: str) -> str:
        return answer if "\\boxed" in answer else "\\boxed{" + answer + "}"

    try:
        return bool(verify(parse(boxed(gold)), parse(boxed(predicted))))
    except (Exception, TimeoutException):  # unparsable, timed out, or off the main thread: compare as strings
        return normalize(predicted) == normalize(gold)
