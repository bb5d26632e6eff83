"""Text as the dashboard shows it: math through KaTeX in Streamlit's Markdown, everything else escaped, and the
raw-text switch; problems named by their id and the start of their question."""

from __future__ import annotations

import bisect
import re
from urllib.parse import quote

import pandas as pd
import streamlit as st

RAW = "raw_text"
"""Session state (the sidebar toggle's key): show every text as stored, without Markdown or math."""
NAME_CHARS = 60  # a problem's name carries this much of its question
PROBLEM_PAGE = "problem"  # the Problem page's url_path
LINK_COLUMN = "problem page"  # the column a table gains: a link to the Problem page of its row's problem

# Every ASCII punctuation mark can be backslash-escaped in CommonMark: escaped, none of them starts a link, an image,
# emphasis, a heading, a list, a table, HTML, an entity, an emoji shortcode (`:smile:`) or Streamlit's `:red[...]`.
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
_OPENERS = (("$$", "$$", True), ("\\[", "\\]", True), ("\\(", "\\)", False))
_BOXED = "\\boxed{"
_SPECIAL = re.compile(r"[$\\]")  # where math may start
_BRACES = re.compile(r"(?<!\\)[{}]")
MAX_BOXED = 1_000  # a bare \boxed{ whose } does not come within this many characters is text


def to_markdown(text: str | None) -> str:
    """`text` as Streamlit Markdown that shows it as written: math between `$...$`, `$$...$$`, `\\(...\\)` or
    `\\[...\\]` (and a bare `\\boxed{...}`) becomes KaTeX math (`$...$` inline, a `$$` block for display), every
    other character shows literally: no HTML, link, image, heading, list or code span comes out of it. A `$` that
    opens nothing (`costs $5`) stays a dollar sign; lines keep their breaks and indentation. Linear in the text's
    length, however its delimiters pair up."""
    if not text:
        return ""
    scan = _Scan(text)
    out: list[str] = []
    plain: list[str] = []
    i = 0
    while i < len(text):
        special = _SPECIAL.search(text, i)
        if special is None:
            plain.append(text[i:])
            break
        plain.append(text[i:special.start()])
        i = special.start()
        found = scan.math_at(i)
        if found is not None:
            end, body, display = found
            before = "".join(plain)
            if display:  # a block of its own: the spaces around it would only indent the text after it
                before = before.rstrip(" \t")
                while end < len(text) and text[end] in " \t":
                    end += 1
            out.append(_plain(before, line_start=not out or out[-1].endswith("\n")))
            if not before and out[-2:-1] and out[-2].endswith("$"):
                out.append("&#8203;")  # `$a$$b$` would be one formula: a zero-width space keeps them two
            out.append(_math(body, display))
            plain = []
            i = end
        elif text.startswith("\\$", i):  # an escaped dollar is a dollar sign, never a delimiter
            plain.append("$")
            i += 2
        else:
            plain.append(text[i])
            i += 1
    out.append(_plain("".join(plain), line_start=not out or out[-1].endswith("\n")))
    return "".join(out).strip("\n")


class _Scan:
    """Where the math in one text starts and ends; each search remembers what it found, so a text of a thousand
    unclosed `\\[` scans it once, not a thousand times."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.found: dict[str, tuple[int, int]] = {}  # closer -> (searched from, found at or -1)
        # Pandoc's rule for `$`: it closes when a non-space precedes it and no digit follows it ("$5 and $10" is
        # money, not math); it opens when a non-space follows it.
        self.closers = [m.start() for m in re.finditer(r"(?<=[^\s\\])\$(?!\d)", text)]
        self.blank_lines = [m.start() for m in re.finditer(r"\n[ \t]*\n", text)]

    def find(self, closer: str, start: int) -> int:
        since, at = self.found.get(closer, (len(self.text) + 1, -1))
        if since <= start and (at == -1 or at >= start):
            return at
        at = self.text.find(closer, start)
        self.found[closer] = (start, at)
        return at

    def math_at(self, i: int) -> tuple[int, str, bool] | None:
        """(end, body, display) of the math that starts at `i`, or None when none does."""
        text = self.text
        for opener, closer, display in _OPENERS:
            if text.startswith(opener, i):
                close = self.find(closer, i + len(opener))
                body = text[i + len(opener):close]
                if close >= 0 and body.strip():
                    return close + len(closer), body, display
                return None
        if text.startswith(_BOXED, i):
            close = _matching_brace(text, i + len(_BOXED) - 1)
            return None if close is None else (close + 1, text[i:close + 1], False)
        if text[i] != "$" or i + 1 >= len(text) or text[i + 1].isspace():
            return None
        k = bisect.bisect_right(self.closers, i + 1)
        if k == len(self.closers):
            return None
        close = self.closers[k]
        b = bisect.bisect_right(self.blank_lines, i)
        if b < len(self.blank_lines) and self.blank_lines[b] < close:  # math does not span paragraphs
            return None
        return close + 1, text[i + 1:close], False


def _matching_brace(text: str, opening: int) -> int | None:
    """The `}` that closes the `{` at `opening`, within MAX_BOXED characters (a boxed answer is short)."""
    depth = 0
    for m in _BRACES.finditer(text, opening, opening + MAX_BOXED):
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return m.start()
    return None


def _math(body: str, display: bool) -> str:
    # Inside math Markdown escapes nothing and any `$` ends it: an escaped dollar is drawn by KaTeX's \textdollar, a
    # bare one (math nested in math) is dropped. Inline math is one line: a blank line would end its paragraph.
    body = body.replace("\\$", "\\text{\\textdollar}").replace("$", "").strip()
    if display:
        return "\n\n$$\n" + re.sub(r"\n\s*\n", "\n", body) + "\n$$\n\n"
    return "$" + " ".join(body.split()) + "$"


def _plain(text: str, line_start: bool) -> str:
    """Text with every punctuation mark escaped, its line breaks kept (hard breaks) and the indentation of its
    lines shown (Markdown would make an indented line code, or drop its spaces)."""
    lines = _PUNCTUATION.sub(r"\\\1", text).split("\n")
    for k, line in enumerate(lines):
        if k < len(lines) - 1:
            line = line.rstrip(" \t")
        if k > 0 or line_start:
            stripped = line.lstrip(" \t")
            line = "&#160;" * len(line[:len(line) - len(stripped)].replace("\t", "    ")) + stripped
        lines[k] = line
    return "  \n".join(lines)


def answer_markdown(answer: object) -> str:
    """An answer as Markdown: math when it looks like LaTeX (`\\frac{1}{2}`, `x^2`), else literal text."""
    if answer is None or (isinstance(answer, float) and pd.isna(answer)):
        return "-"
    text = str(answer)
    if "$" not in text and re.search(r"[\\^_{]", text):
        return to_markdown(f"${text}$") if text.strip() else "-"
    return to_markdown(text) or "-"


def raw() -> bool:
    """Whether the sidebar says to show texts as stored."""
    return bool(st.session_state.get(RAW, False))


def raw_toggle() -> None:
    st.sidebar.toggle("show raw text", key=RAW,
                      help="Questions, chains, rationales and answers as stored, without math rendering.")


def show(text: str | None, empty: str = "(empty)") -> None:
    """A question, chain, rationale or candidate: rendered (KaTeX math, the rest literal), or as stored."""
    if not text:
        st.caption(empty)
    elif raw():
        st.text(text)
    else:
        st.markdown(to_markdown(text))


def inline(text: str | None) -> str:
    """A text inside a sentence of Markdown the page writes (a caption, a label): rendered, or as stored."""
    if text is None:
        return "-"
    return _plain(text) if raw() else to_markdown(text)


def problem_name(problem_id: int, question: str | None, chars: int = NAME_CHARS) -> str:
    """How a problem is called everywhere: its id and the start of its question, "#12 · Compute 2 + 3…"."""
    start = " ".join((question or "").split())
    if not start:
        return f"#{problem_id}"
    return f"#{problem_id} · " + (start if len(start) <= chars else start[:chars - 1].rstrip() + "…")


def problem_url(problem_id: int) -> str:
    """The Problem page of a problem, relative to any page (every page's URL is one level under the app's)."""
    return f"{PROBLEM_PAGE}?problem={int(problem_id)}"


def named_url(problem_id: int, question: str | None) -> str:
    """problem_url with the problem's name in its fragment, for a table's link cell to show (LinkColumn shows a
    part of the URL; the fragment never reaches the server)."""
    return problem_url(problem_id) + "#" + quote(problem_name(problem_id, question), safe="")


def problem_link(problem_id: int, question: str | None) -> str:
    """A Markdown link to the Problem page, named as problem_name names it (escaped)."""
    return f"[{to_markdown(problem_name(problem_id, question))}]({problem_url(problem_id)})"


def open_problem(problem_id: int, question: str | None) -> None:
    """The line under a page's problem picker that opens the picked problem's page."""
    st.markdown("open " + problem_link(problem_id, question) + ": every run's answer, its steps, chains, samples "
                "and reviews")


def link_config() -> dict[str, object]:
    """st.dataframe's column_config for LINK_COLUMN: each cell shows the problem's name and opens its page."""
    return {LINK_COLUMN: st.column_config.LinkColumn(
        LINK_COLUMN, display_text=r"#(.*)$", help="open the Problem page: question, every run's answer, its "
                                                    "steps, chains, samples and reviews")}


def with_links(frame: pd.DataFrame, questions: dict[int, str | None]) -> pd.DataFrame:
    """`frame` with LINK_COLUMN just before its `problem_id`: a link to each row's problem, named by `questions`."""
    links = [None if pd.isna(p) else named_url(int(p), questions.get(int(p))) for p in frame["problem_id"]]
    out = frame.drop(columns=[LINK_COLUMN], errors="ignore")
    out.insert(out.columns.get_loc("problem_id"), LINK_COLUMN, links)
    return out
