"""The Problem page (`problem?problem=ID`): one problem across the store, which every table naming a problem links to.

Its question and gold answer; every run's answer with its credit and tie; the steps of its solve trajectories
(RATIONALYST's rationales and candidates, and why the chosen one won); its teacher chains as a teacher x sample
grid; its samples with ranker scores and what each vote made of them; the reviews of its gold and its chains.
"""

from __future__ import annotations

import altair as alt
import duckdb
import pandas as pd
import streamlit as st

from rplat.boundary import ID_MAX
from rplat.dashboard import problem_queries as queries
from rplat.dashboard.common import REVIEW_OFF, connection, literal, review_allowed, review_section, table
from rplat.dashboard.queries import tie_listed
from rplat.dashboard.render import answer_markdown, inline, show

PARAM = "problem"  # the query parameter naming the problem: problem?problem=12
LABEL_COLOURS = alt.Scale(domain=["pos", "neg"], range=["#2e7d32", "#c62828"])
DISAGREE = "≠"  # marks, in the chain grid, a chain the two labelers judge differently


def problem_page() -> None:
    con = connection()
    problem_id = _chosen()
    if problem_id is None:
        return
    row = queries.problem(con, problem_id)
    if row is None:
        st.title("Problem")
        st.error(f"There is no problem {problem_id} in this store: open a problem from a table's link on Failures, "
                 "Intersections, Chains or Votes, or find its id with `rplat sql \"SELECT problem_id, question FROM "
                 "problems LIMIT 10\"`.")
        return
    st.title(f"Problem #{problem_id}")
    st.caption(" · ".join(literal(str(v)) for v in [row.dataset, row.subject, row.level, row.split]
                          if v is not None and not pd.isna(v))
               + f" · external id `{str(row.problem).replace('`', '')}` · imported by job {row.job_id}")
    st.subheader("Question")
    show(row.question, "(no question stored)")
    st.subheader("Gold answer")
    st.markdown(answer_markdown(row.gold))
    if row.gold_source == "review":
        st.caption("set by a review; the dataset says " + answer_markdown(row.machine_gold))
    if isinstance(row.solution, str) and row.solution:
        with st.expander("reference solution"):
            show(row.solution)

    _answers(con, problem_id)
    _steps(con, problem_id)
    _chains(con, problem_id)
    _samples(con, problem_id)
    _reviews(con, problem_id, str(row.gold))


def _chosen() -> int | None:
    """The problem the URL names (?problem=ID), or None after saying what is wrong with it."""
    given = st.query_params.get(PARAM)
    if given is None or not given.strip():
        st.title("Problem")
        st.info("No problem chosen: open one from a table's link on Failures, Intersections, Chains or Votes (the "
                "URL then ends in `?problem=ID`), or give its id here.")
        typed = st.text_input("problem id", placeholder="12")
        if typed.strip():
            st.query_params[PARAM] = typed.strip()
            st.rerun()
        return None
    text = given.strip()
    if not text.isdigit() or not 0 < int(text) <= ID_MAX:
        st.title("Problem")
        st.error(f"{literal(text[:100])} is not a problem id: the URL names a problem by its number, as in "
                 "`problem?problem=12`; open one from a table's link.")
        return None
    return int(text)


def _answers(con: duckdb.DuckDBPyConnection, problem_id: int) -> None:
    st.subheader("Every run's answer")
    rows = queries.answers(con, problem_id)
    if rows.empty:
        st.caption("No run has answered this problem yet.")
        return
    st.caption("Each run's answer (on a tie, the first of the tied answers, then every tied answer and the credit "
               "it earned: the tied answers' share of right ones), its credit and the jobs behind it.")
    st.markdown("\n".join(
        f"- {literal(r.run)}: {answer_markdown(r.answer)}" + _tie(int(r.tie_size), r.tied_answers)
        + f", credit {r.credit:g}" + (" ✓" if r.credit == 1 else "") for r in rows.itertuples()))
    table(rows[["run", "shown", "answer", "credit", "tie_size", "tied_answers", "correct", "vote_mass", "margin",
                "job_id", "solve_job_id", "sample_job_id", "score_samples_job_id", "experiment"]].rename(
        columns={"shown": "answer as shown"}))


def _tie(size: int, answers: list[str | None]) -> str:
    """A tie, in Markdown: its size and, when the job recorded them, its answers (rendered as answers are)."""
    if size <= 1:
        return ""
    if not answers:
        return f" (tie of {size})"
    return f" (tie of {size}: {tie_listed(answers, answer_markdown)})"


def _steps(con: duckdb.DuckDBPyConnection, problem_id: int) -> None:
    st.subheader("Steps, rationales and candidates")
    rows = queries.steps(con, problem_id)
    if rows.empty:
        st.caption("No solve job has stepped through this problem.")
        return
    st.caption("Each step of each solve trajectory: the rationale RATIONALYST generated before it (if the method "
               "does), every candidate next step with its score, and why the chosen one won.")
    for (job_id, sample_idx), trajectory in rows.groupby(["job_id", "sample_idx"], sort=False):
        first = trajectory.iloc[0]
        st.markdown(f"**solve job {job_id}** ({literal(str(first['method']))} / {literal(str(first['model']))}), "
                    f"sample {sample_idx}")
        for step_idx, step in trajectory.groupby("step_idx", sort=True):
            reason = queries.why_chosen(step)
            with st.expander(f"step {step_idx + 1} · {literal(reason)}", expanded=len(trajectory) <= 12):
                if isinstance(step["rationale"].iloc[0], str):
                    st.markdown("rationale: " + inline(step["rationale"].iloc[0]))
                for c in step.itertuples():
                    mark = "**chosen**" if pd.notna(c.chosen) and c.chosen else "candidate"
                    score = "-" if pd.isna(c.score) else f"{c.score:.3f}"
                    st.markdown(f"{mark} {c.candidate_idx} (s={score}): " + inline(c.candidate))
                st.caption(reason)


def _chains(con: duckdb.DuckDBPyConnection, problem_id: int) -> None:
    st.subheader("Teacher chains")
    rows = queries.chains(con, problem_id)
    if rows.empty:
        st.caption("No teacher chain for this problem.")
        return
    disagree = rows["labelers_disagree"].fillna(False).astype(bool)
    labelers = "the two labelers (Hendrycks' boxed-answer rule and math-verify)"
    st.caption(f"{_count(len(rows), 'chain')}: {int((rows['label'] == 'pos').sum())} positive, "
               f"{int((rows['label'] == 'neg').sum())} negative; "
               + (f"{DISAGREE} marks the {int(disagree.sum())} on which {labelers} disagree." if disagree.any()
                  else f"{labelers} agree on every one."))
    cells = rows.assign(mark=[f"{label}{' ' + DISAGREE if d else ''}" for label, d in
                              zip(rows["label"], disagree, strict=True)])[
        ["teacher", "sample_idx", "label", "mark", "chain_id", "extracted_answer", "labelers_disagree"]]
    base = alt.Chart(cells).encode(x=alt.X("sample_idx:O", title="sample"),
                                   y=alt.Y("teacher:N", title=None, axis=alt.Axis(labelLimit=400)))
    st.altair_chart((base.mark_rect(stroke="white").encode(
        color=alt.Color("label:N", scale=LABEL_COLOURS, title="label"),
        tooltip=["teacher", "sample_idx", "chain_id", "label", "extracted_answer", "labelers_disagree"])
        + base.mark_text(color="white", fontWeight="bold").encode(text="mark:N")).properties(
        height=alt.Step(36), width=alt.Step(64)), width="content")
    for r, d in zip(rows.itertuples(), disagree, strict=True):
        verdicts = f"Hendrycks {_verdict(r.hendrycks_correct)}, math-verify {_verdict(r.math_verify_correct)}"
        title = (f"chain {r.chain_id} · {literal(r.teacher)} sample {r.sample_idx} · {r.label}"
                 + (f" (review; the labeler said {r.machine_label})" if r.label_source == "review" else "")
                 + (f" · {DISAGREE} the labelers disagree" if d else ""))
        with st.expander(title):
            st.caption(f"extracted {answer_markdown(r.extracted_answer)}; {verdicts}; job {r.job_id}")
            show(r.text)
    if review_allowed():
        names = {int(r.chain_id): f"chain {r.chain_id}, {r.teacher} sample {r.sample_idx}" for r in rows.itertuples()}
        chain_id = st.selectbox("chain to review", list(names), format_func=names.__getitem__)
        review_section(con, "chain", chain_id, str(rows.set_index("chain_id").loc[chain_id, "label"]))


def _samples(con: duckdb.DuckDBPyConnection, problem_id: int) -> None:
    st.subheader("Samples and votes")
    rows = queries.samples(con, problem_id)
    if rows.empty:
        st.caption("No sample job has sampled this problem.")
        return
    answers = queries.answers(con, problem_id)
    for job, samples in rows.groupby("sample_job_id", sort=False):
        st.markdown(f"**sample job {job}** ({literal(str(samples['model'].iloc[0]))}): "
                    f"{_count(samples['sample_idx'].nunique(), 'sample')}")
        table(samples[["sample_idx", "extracted_answer", "correct", "score", "ranker", "score_samples_job_id",
                       "truncated", "finish_reason", "decoding", "sample_id", "text"]])
        votes = answers[answers["sample_job_id"] == job]
        if votes.empty:
            st.caption(f"No aggregate job has voted on sample job {job} yet.")
        else:
            st.markdown("each vote's outcome:")
            table(votes[["method", "shown", "credit", "tie_size", "tied_answers", "vote_mass", "margin", "job_id",
                         "score_samples_job_id"]].rename(columns={"shown": "answer", "job_id": "aggregate_job_id"}))
        texts = samples.drop_duplicates("sample_id")
        picked = st.selectbox(f"read a sample of job {job}", texts["sample_idx"].tolist(), key=f"sample-{job}",
                              format_func=lambda k: f"sample {k}")
        show(texts.set_index("sample_idx").loc[picked, "text"])


def _reviews(con: duckdb.DuckDBPyConnection, problem_id: int, gold: str) -> None:
    st.subheader("Reviews")
    rows = queries.reviews(con, problem_id)
    if rows.empty:
        st.caption(f"No review of problem {problem_id}'s gold answer or of its chains yet.")
    else:
        table(rows)
    if not review_allowed():
        st.caption(REVIEW_OFF)
        return
    st.markdown("**the gold answer**")
    review_section(con, "problem", problem_id, gold)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _verdict(value: object) -> str:
    return "-" if value is None or pd.isna(value) else ("right" if value else "wrong")
