"""The Streamlit app behind `rplat dashboard`: rationales, failures, solved sets, jobs."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from rplat.dashboard import queries
from rplat.dashboard.common import EMPTY, connection, table


def rationales_page() -> None:
    st.title("Rationales")
    st.caption("Implicit rationales mined from documents and worked solutions, with their loss delta "
               "(S_with - S_without: how much the rationale helps predict the text that follows).")
    con = connection()
    sources = queries.rationale_sources(con)
    if not sources:
        st.info(EMPTY.format(what="rationales"))
        return
    left, middle, right = st.columns(3)
    chosen = left.multiselect("source", sources, default=sources)
    kept = {"all": None, "kept": True, "dropped": False}[middle.radio("kept", ["all", "kept", "dropped"],
                                                                      horizontal=True)]
    highest_first = right.radio("sort by loss delta", ["highest first", "lowest first"],
                                horizontal=True) == "highest first"
    rows = queries.rationales(con, chosen, kept, highest_first)
    if rows.empty:
        st.info("No rationale matches these filters.")
        return
    scored = rows["loss_delta"].notna()
    a, b, c = st.columns(3)
    a.metric("rationales shown", len(rows))
    b.metric("kept", int(rows["kept"].fillna(False).astype(bool).sum()))
    c.metric("mean loss delta", f"{rows.loc[scored, 'loss_delta'].mean():.4f}" if scored.any() else "-")
    table(rows[["rationale_id", "extract_job_id", "score_job_id", "source", "loss_delta", "s_with", "s_without",
                "tau", "kept", "rationale", "item", "experiment"]])

    st.subheader("One rationale in its context")
    labels = {int(r.rationale_id): f"#{r.rationale_id}  delta {_number(r.loss_delta)}  {r.rationale[:80]}"
              for r in rows.itertuples()}
    picked = st.selectbox("rationale", list(labels), format_func=labels.__getitem__)
    row = rows.set_index("rationale_id").loc[picked]
    st.caption(f"extracted by job {row.extract_job_id} ({row.extractor}); "
               + (f"scored by job {int(row.score_job_id)} ({row.scorer}), tau {_number(row.tau)}, "
                  f"{'kept' if row.kept else 'dropped'}" if pd.notna(row.score_job_id) else "not scored yet"))
    a, b, c = st.columns(3)
    a.metric("S_without", _number(row.s_without))
    b.metric("S_with", _number(row.s_with))
    c.metric("loss delta", _number(row.loss_delta))
    st.markdown("**preceding**")
    st.text(row.preceding or "(empty)")
    st.markdown("**rationale**")
    st.info(row.rationale)
    st.markdown("**following**")
    st.text(row.following or "(empty)")


def failures_page() -> None:
    st.title("Failures")
    st.caption("Problems a run answered wrongly: its prediction, the gold answer, and the trajectory's steps "
               "with every candidate, its score and the one chosen.")
    con = connection()
    runs = queries.runs(con, with_failures=True)
    if not runs:
        st.info(EMPTY.format(what="wrong predictions"))
        return
    run = st.selectbox("run (method / model / evaluate job)", runs)
    rows = queries.failures(con, run)
    st.metric("problems answered wrongly", len(rows))
    table(rows.drop(columns=["question"], errors="ignore"))

    st.subheader("One failure")
    labels = {int(r.problem_id): f"{r.problem} ({r.dataset}): predicted {r.prediction}, gold {r.gold}"
              for r in rows.itertuples()}
    picked = st.selectbox("problem", list(labels), format_func=labels.__getitem__)
    row = rows.set_index("problem_id").loc[picked]
    if "question" in rows:
        st.markdown("**question**")
        st.text(row.question)
    a, b, c = st.columns(3)
    a.metric("prediction", str(row.prediction))
    b.metric("gold", str(row.gold))
    c.metric("evaluate job", str(row.job_id))
    if pd.isna(row.solve_job_id):
        st.info("This prediction names no solve job, so there are no steps to show.")
        return
    candidates = queries.step_candidates(con, int(row.solve_job_id), int(picked))
    if candidates.empty:
        st.info(f"Solve job {int(row.solve_job_id)} kept no steps for this problem.")
        return
    for (sample_idx, step_idx), group in candidates.groupby(["sample_idx", "step_idx"], sort=True):
        chosen = group[group["chosen"].fillna(False).astype(bool)]
        st.markdown(f"**sample {sample_idx}, step {step_idx + 1}** (solve job {int(row.solve_job_id)})")
        if pd.notna(group["rationale"].iloc[0]):
            st.caption(f"rationale: {group['rationale'].iloc[0]}")
        st.text("chosen: " + (chosen["candidate"].iloc[0] if not chosen.empty else "(none)"))
        table(group[["job_id", "candidate_idx", "candidate", "score", "chosen"]])


def solved_sets_page() -> None:
    st.title("Solved sets")
    st.caption("Which problems each run solves, and where two runs differ.")
    con = connection()
    runs = queries.runs(con)
    if not runs:
        st.info(EMPTY.format(what="evaluated runs"))
        return
    table(queries.evaluations(con))
    if len(runs) < 2:
        st.info("Only one run is evaluated so far; a comparison needs two.")
        return
    left, right = st.columns(2)
    run_a = left.selectbox("run A", runs, index=0)
    run_b = right.selectbox("run B", [r for r in runs if r != run_a], index=0)
    counts = queries.intersection(con, run_a, run_b)
    if counts is None:
        st.info("These two runs answered no problem in common.")
        return
    st.caption(f"over the {counts['problems']} problems both answered (evaluate jobs "
               f"{counts['job_id_a']} and {counts['job_id_b']})")
    a, b, c, d = st.columns(4)
    a.metric("both solve", int(counts["both_solved"]))
    b.metric("only A solves", int(counts["only_a"]))
    c.metric("only B solves", int(counts["only_b"]))
    d.metric("neither solves", int(counts["neither"]))
    left, right = st.columns(2)
    for column, run, ids, label in [(left, run_a, counts["only_a_problem_ids"], "A"),
                                    (right, run_b, counts["only_b_problem_ids"], "B")]:
        column.markdown(f"**only {label} solves** ({run})")
        if len(ids):
            with column:
                table(queries.predictions_of(con, run, list(ids)))
        else:
            column.caption("none")


def jobs_page() -> None:
    st.title("Jobs")
    st.caption("Every job, newest first: status, timing, attempts, progress and the error of a failed one.")
    con = connection()
    counts = queries.job_status_counts(con)
    if counts.empty:
        st.info(EMPTY.format(what="jobs"))
        return
    for column, row in zip(st.columns(len(counts)), counts.itertuples(), strict=True):
        column.metric(row.status, int(row.jobs))
    left, right = st.columns(2)
    statuses = left.multiselect("status", counts["status"].tolist())
    kinds = right.multiselect("kind", queries.job_kinds(con))
    rows = queries.job_timeline(con, statuses, kinds)
    table(rows)
    started = rows.dropna(subset=["started_at"]).assign(
        until=lambda f: f["finished_at"].fillna(pd.Timestamp.now("UTC").tz_localize(None)))
    if not started.empty:
        st.subheader("Timeline")
        st.altair_chart(alt.Chart(started).mark_bar().encode(
            x=alt.X("started_at:T", title="started (UTC)"), x2="until:T",
            y=alt.Y("job_id:O", sort="descending", title="job"), color="status:N",
            tooltip=["job_id", "kind", "status", "experiment", "duration_seconds", "runner"]))


def _number(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.4f}"


def main() -> None:
    st.set_page_config(page_title="rplat", layout="wide")
    pages = [st.Page(rationales_page, title="Rationales", default=True),
             st.Page(failures_page, title="Failures", url_path="failures"),
             st.Page(solved_sets_page, title="Solved sets", url_path="solved-sets"),
             st.Page(jobs_page, title="Jobs", url_path="jobs")]
    st.navigation(pages, position="top").run()


if __name__ == "__main__":
    main()
