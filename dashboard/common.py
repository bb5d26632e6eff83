"""What every dashboard page shares: the store's read-only connection, the empty-store hint, table display (rows
naming a problem link to its page), and the review section of the Chains, Rationales and Problem pages (the one
write the dashboard can make)."""

from __future__ import annotations

import os
import re
from typing import Any

import duckdb
import pandas as pd
import streamlit as st

from rplat import reviews
from rplat.config import get_settings
from rplat.dashboard import ALLOW_REVIEW, problem_queries, queries
from rplat.dashboard.render import link_config, with_links
from rplat.errors import UserError
from rplat.store import get_engine

EMPTY = ("No {what} yet: run `make demo` (or `rplat pipeline rationalyst` / `rplat pipeline tdg` and "
         "`rplat runner`) to fill the store.")
"""The hint of a store that holds no job at all; `empty_hint` says what is true of one that does."""
REVIEW_OFF = ("Reviews are off here: start the dashboard with `rplat dashboard --allow-review` to review from "
              "this page, or use `rplat review`.")
# What a review sets, per target: the form's radio label and its options with the value each gives reviews.add.
CHOICES: dict[str, tuple[str, dict[str, Any]]] = {"chain": ("label", {"pos": "pos", "neg": "neg"}),
                                                  "rationale": ("decision", {"keep": True, "drop": False})}
# reviews' sentences name the CLI's options; the form has boxes (its lengths are capped, so only these arise).
GOLD = "gold answer"  # the problem form's box
FORM_WORDS = {"give one with --reason TEXT": "write it in the reason box",
              "give it with --gold ANSWER": "write it in the gold answer box",
              "from --gold": "from the gold answer box",
              "give one with --reviewer NAME": "write one in the reviewer box"}
_DONE = "review_outcome"  # session state: the sentence of the review the last run added, shown once


def store(database_url: str) -> duckdb.DuckDBPyConnection:
    return queries.shared_store(database_url)


def connection() -> duckdb.DuckDBPyConnection:
    try:
        return store(get_settings().database_url)
    except UserError as exc:
        st.error(str(exc))
        st.stop()


def empty_hint(con: duckdb.DuckDBPyConnection, what: str) -> str:
    """What to do about a page with nothing to show, as the store stands: fill an empty store, start a runner
    for queued jobs, wait for running ones, or enqueue what makes `what` when every job has ended."""
    jobs = queries.jobs_by_status(con)
    if not jobs:
        return EMPTY.format(what=what)
    queued, running = jobs.get("queued", 0), jobs.get("running", 0)
    if running:
        also = f" and {_jobs(queued)} queued" if queued else ""
        return (f"No {what} yet: {_jobs(running)} running{also}; wait for them and reload (the Jobs page shows "
                "their progress).")
    if queued:
        return (f"No {what} yet: {_jobs(queued)} queued and none running; start one with `rplat runner` (the "
                "Jobs page lists them).")
    failed = jobs.get("failed", 0)
    why = f", {failed} of them failed (the Jobs page says why)" if failed else ""
    total = sum(jobs.values())
    return (f"No {what} in this store: its {total} job{'' if total == 1 else 's'} ended{why} without writing any; "
            "enqueue the jobs that make them (`rplat pipeline rationalyst` / `rplat pipeline tdg`, or "
            "`rplat import`) and start `rplat runner`.")


def _jobs(n: int) -> str:
    return f"{n} job{'' if n == 1 else 's'} {'is' if n == 1 else 'are'}"


def empty(con: duckdb.DuckDBPyConnection, what: str) -> None:
    """Show the page's empty-store hint (`empty_hint`)."""
    st.info(empty_hint(con, what))


def table(frame: pd.DataFrame) -> None:
    """A table; one whose rows name problems (a `problem_id` column) leads with a link to each one's Problem page,
    named by its id and the start of its question."""
    if "problem_id" not in frame.columns or frame.empty:
        st.dataframe(frame, hide_index=True)
        return
    questions = problem_queries.questions(connection(), frame["problem_id"])
    st.dataframe(with_links(frame, questions), hide_index=True, column_config=link_config())


SEARCH_HINT = "a problem id, the start of its hash, or words of its question"


def search_box() -> str:
    """The search box over problems at the top of Chains, Votes and Failures (every word must match)."""
    return st.text_input("search problems", placeholder=SEARCH_HINT, help="Every word must match: a problem's id, "
                         "the start of its external id (a hash on MATH) or a word of its question, in any case.")


def pager(total: int, what: str) -> tuple[int, int]:
    """The rows-per-page and page-number controls of a table of `total` rows, and its caption ("rows 1,001-2,000
    of 120,000 chains"); returns the page's (offset, limit). A change of filters that changes the number of pages
    starts again at page 1."""
    left, right, _ = st.columns([1, 1, 2])
    size = int(left.selectbox("rows per page", queries.PAGE_SIZES))
    pages = max(1, -(-total // size))
    page = int(right.number_input(f"page (of {pages:,})", min_value=1, max_value=pages, value=1, step=1))
    offset = (page - 1) * size
    st.caption(queries.rows_caption(offset, min(size, total - offset), total, what))
    return offset, size


def url_choice(param: str, options: list[int]) -> int:
    """The index among `options` (ids) of the one the URL's `?param=ID` names; the first when it names none."""
    given = st.query_params.get(param, "").strip()
    return options.index(int(given)) if given.isdigit() and int(given) in options else 0


def review_allowed() -> bool:
    """Whether `rplat dashboard --allow-review` started this app: only the process's environment says so, never a
    request (no query parameter, no widget)."""
    return os.environ.get(ALLOW_REVIEW) == "1"


def review_section(con: duckdb.DuckDBPyConnection, target: str, target_id: int, current: str) -> None:
    """A chain's, a rationale's or a problem's reviews, oldest first, and with --allow-review the form that adds one;
    `current` is the value in effect as the form names it (pos / neg, keep / drop, the gold answer)."""
    history = queries.reviews_of(con, target, target_id)
    if history.empty:
        st.caption(f"No review of {target} {target_id} yet.")
    else:
        table(history)
    done = st.session_state.pop(_DONE, None)
    if done is not None:  # it names its target: the reviewed row may have left the page's filters
        st.success(literal(done))
    if not review_allowed():
        st.caption(REVIEW_OFF)
        return
    key = f"review-{target}-{target_id}"
    with st.form(key):
        st.markdown(f"**Review {target} {target_id}**")
        if target == "problem":  # a gold answer is free text: the form starts from the one in effect
            value: Any = st.text_input(GOLD, value=current, max_chars=reviews.MAX_GOLD, key=f"{key}-value")
        else:
            label, choices = CHOICES[target]
            options = list(choices)
            picked = st.radio(label, options, index=options.index(current), horizontal=True, key=f"{key}-value")
            value = choices[picked]
        reason = st.text_area("reason", max_chars=reviews.MAX_REASON, key=f"{key}-reason",
                              placeholder="why the machine's value is wrong (kept in the audit trail)")
        reviewer = st.text_input("reviewer", value=_default_reviewer(), max_chars=200, key=f"{key}-reviewer")
        submitted = st.form_submit_button("save the review", type="primary", key=f"{key}-save")
    if not submitted:
        return
    try:
        outcome = reviews.add(get_engine(get_settings().database_url), target, target_id, value,
                              reviewer=reviewer, reason=reason)
    except UserError as exc:
        st.error(_in_form_words(str(exc)))
        return
    st.session_state[_DONE] = outcome.describe()
    st.rerun()  # the page read its rows before the form: read them again, with the review in effect


def _default_reviewer() -> str:
    try:
        return reviews.reviewer_name(None)
    except UserError:  # no RPLAT_REVIEWER and no login name: the person types one
        return ""


def literal(text: str) -> str:
    """`text` for Streamlit's Markdown, every punctuation mark escaped: a reviewer's name shows as typed, never as
    a link, emphasis or formula (Streamlit still draws `->` as an arrow)."""
    return re.sub(r"([!-/:-@\[-`{-~])", r"\\\1", text)


def _in_form_words(message: str) -> str:
    for option, box in FORM_WORDS.items():
        message = message.replace(option, box)
    return message
