"""The two teacher-chain labelers of TDG B1: the paper's Hendrycks MATH rule and math-verify.

`hendrycks` is what the reference code did (the last `\\boxed{}` of chain and gold, the MATH normalisation
of docs/tdg.md B1, then string equality; no box means negative). `math-verify` compares the same answers
symbolically, so it also credits `0.50` against `\\frac{1}{2}`. Both verdicts are always computed, so the
chains the paper called negative that are in fact right can be counted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from rplat.methods.answers import extract_answer, is_correct

LABELERS = ("hendrycks", "math-verify")
CHUNK = 250  # chains per task of the labelling pool: ~1-2 s of work, so sending them back and forth costs little

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


# --- math-verify's timeouts --------------------------------------------------------------------------------


class _TimeoutCounter(logging.Filter):
    """Counts math-verify's "Timeout during comparison" / "Timeout during parsing: ..." warnings and drops them:
    math-verify gives up on that comparison (the verdict is negative) and logs a bare line with no handler, which
    Python then prints on stderr with no chain to tell it by. The labelers count them per chain instead."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Timeout during"):
            self.count += 1
            return False
        return True


_TIMEOUTS = _TimeoutCounter()
for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_TIMEOUTS)


@lru_cache(maxsize=1 << 16)
def _math_verify(answer: str, gold: str) -> tuple[bool, bool]:
    """(equivalent, whether math-verify timed out on the way); cached with the verdict, so a repeated answer
    reports its timeout again however the chains were split among processes."""
    before = _TIMEOUTS.count
    verdict = is_correct("\\boxed{" + answer + "}", "\\boxed{" + gold + "}")
    return verdict, _TIMEOUTS.count > before


def math_verify_check(answer: str | None, gold: str | None) -> tuple[bool, bool]:
    """(math-verify equivalence of two bare answers, whether a comparison or parse of theirs timed out). Each
    answer is parsed as the argument of a box (bare LaTeX such as `\\frac12` or `[1,2)` is otherwise not
    recognised as mathematics at all). Memoised: the chains of one problem often state the same answer, and a
    symbolic comparison costs milliseconds. math-verify's own per-comparison timeout (5 s) is kept; a timed-out
    comparison is not equivalent. Never raises: an answer or gold past `answers.MAX_VERIFY_CHARS` (box included),
    or one math-verify cannot parse, is compared as `answers.normalize`d strings (`answers.is_correct`)."""
    if answer is None or gold is None or not answer.strip() or not gold.strip():
        return False, False
    return _math_verify(answer, gold)


def math_verify_equiv(answer: str | None, gold: str | None) -> bool:
    """math-verify equivalence of two bare answers (`math_verify_check` without the timeout flag)."""
    return math_verify_check(answer, gold)[0]


@dataclass(frozen=True)
class Verdict:
    """A chain's extracted answer, both labelers' verdicts, and its label under the chosen labeler."""

    answer: str | None
    hendrycks: bool
    math_verify: bool
    label: str
    timed_out: bool = False  # math-verify gave up on a comparison of this chain's (math_verify is then False)


def label_chain(text: str, gold: str | None, labeler: str = "hendrycks") -> Verdict:
    """Judge one chain against the gold answer. The answer is the chain's last box; math-verify, which also
    reads an unboxed `#### N` / "the answer is N", falls back to that when the chain boxes nothing (the stored
    answer is then that one, while the Hendrycks verdict stays negative)."""
    if labeler not in LABELERS:
        raise ValueError(f"unknown labeler {labeler!r}; choose one of {', '.join(LABELERS)}")
    boxed = chain_answer(text)
    answer = boxed if boxed is not None else extract_answer(text)
    hendrycks = is_equiv_hendrycks(boxed, gold)
    math_verify, timed_out = math_verify_check(answer, gold)
    correct = hendrycks if labeler == "hendrycks" else math_verify
    return Verdict(answer, hendrycks, math_verify, "pos" if correct else "neg", timed_out)


def label_of(hendrycks: bool | None, math_verify: bool | None, labeler: str) -> str:
    """The label of a chain whose two verdicts are stored, under `labeler` (relabelling needs no re-judging)."""
    if labeler not in LABELERS:
        raise ValueError(f"unknown labeler {labeler!r}; choose one of {', '.join(LABELERS)}")
    return "pos" if (hendrycks if labeler == "hendrycks" else math_verify) else "neg"


# --- labelling on every core ---------------------------------------------------------------------------


def default_workers() -> int:
    """The labelling pool's default size: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class Labelled:
    """The verdicts of `label_chains`, in the order of its input, and the positions of the chains on which
    math-verify timed out."""

    verdicts: list[Verdict] = field(default_factory=list)
    timeouts: list[int] = field(default_factory=list)


def _label_chunk(chunk: Sequence[tuple[str, str | None]], labeler: str) -> list[Verdict]:
    return [label_chain(text, gold, labeler) for text, gold in chunk]


_POOL_MODULES = ["rplat.methods.labelers", "math_verify", "sympy"]


def _start_worker(owner: int) -> None:
    """A pool process's start: end with the pool's owner, and take a session of its own.

    The processes fork from the forkserver, not from the owner, and each holds both ends of the pool's work
    pipe, so if the owner is killed (kill -9, OOM) nothing would ever tell them: a thread waits on the owner's
    pidfd and ends this process when the owner is gone (the forkserver, whose clients they are, then ends too).
    A session of its own: Linux's scheduler (with autogroup, the default on desktop and many server kernels)
    shares the CPU between sessions, not processes, so on a busy machine the processes of one session together
    get one session's share however many there are; in sessions of their own, the pool gets one share per
    process, as the same number of separate `rplat` commands would."""
    import threading

    def watch() -> None:
        try:
            import select

            fd = os.pidfd_open(owner)
            select.select([fd], [], [])  # readable once the owner has exited
        except (AttributeError, OSError):  # no pidfds (old kernel, not Linux): poll
            import time

            while True:
                try:
                    os.kill(owner, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="rplat-labelling-owner", daemon=True).start()
    with contextlib.suppress(OSError):  # already a session leader, or not permitted: share the owner's session
        os.setsid()


class LabelPool:
    """A pool of `workers` labelling processes, reused across calls (a job labelling batch after batch starts it
    once); `workers` <= 1 labels in this process. Its processes fork from a server that has imported math-verify
    and SymPy (never from the caller, which may hold database connections and threads), and math-verify's
    timeout, a SIGALRM, works in each. Use it as a context manager."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)
        self._pool: Any = None

    def __enter__(self) -> LabelPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _executor(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(_POOL_MODULES)
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context,
                                             initializer=_start_worker, initargs=(os.getpid(),))
        return self._pool

    def label(self, chains: Sequence[tuple[str, str | None]], labeler: str = "hendrycks", *,
              chunk: int | None = None, progress: Callable[[int], None] = lambda _n: None) -> Labelled:
        """Judge every (chain text, gold answer) with `label_chain`, `chunk` chains per task (default CHUNK, or
        fewer so every process gets work), chains with the same gold answer together (each process has its own
        answer cache); the verdicts, in the order of `chains`, are the same as in one process. `progress(n)`
        hears of every n judged."""
        if labeler not in LABELERS:
            raise ValueError(f"unknown labeler {labeler!r}; choose one of {', '.join(LABELERS)}")
        if chunk is None:
            chunk = max(1, min(CHUNK, -(-len(chains) // self.workers)))
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, not {chunk}")
        out = Labelled()
        if self.workers <= 1 or len(chains) <= chunk:
            for i in range(0, len(chains), chunk):
                part = chains[i:i + chunk]
                out.verdicts += _label_chunk(part, labeler)
                progress(len(part))
        else:
            # Chains with the same gold answer go to the same chunk where they can (a stable sort: a problem's
            # chains stay in order): the answers compared with one gold repeat across problems, and each process
            # has its own answer cache, so this spares comparing the same pair in several processes.
            order = sorted(range(len(chains)), key=lambda i: (chains[i][1] is None, chains[i][1] or ""))
            chunks = [[chains[i] for i in order[j:j + chunk]] for j in range(0, len(order), chunk)]
            verdicts: list[Verdict | None] = [None] * len(chains)
            results = self._executor().map(_label_chunk, chunks, [labeler] * len(chunks))
            position = 0
            for part in results:
                for verdict in part:
                    verdicts[order[position]] = verdict
                    position += 1
                progress(len(part))
            out.verdicts = [v for v in verdicts if v is not None]
            assert len(out.verdicts) == len(chains)
        out.timeouts = [i for i, v in enumerate(out.verdicts) if v.timed_out]
        return out


def label_chains(chains: Sequence[tuple[str, str | None]], labeler: str = "hendrycks", *, workers: int = 1,
                 chunk: int | None = None, progress: Callable[[int], None] = lambda _n: None) -> Labelled:
    """`LabelPool(workers).label(...)` once: every chain judged, in a pool of `workers` processes (1: here)."""
    with LabelPool(workers) as pool:
        return pool.label(chains, labeler, chunk=chunk, progress=progress)
