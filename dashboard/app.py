"""The Streamlit app behind `rplat dashboard`: rationales, failures, intersections, jobs, SQL, the TDG pages and
the Problem page."""

from __future__ import annotations

import altair as alt
import duckdb
import pandas as pd
import streamlit as st

from rplat.analytics import MAX_RUNS
from rplat.dashboard import queries
from rplat.dashboard.baseline import baseline_section
from rplat.dashboard.common import EMPTY, connection, review_section, table
from rplat.dashboard.problem_page import problem_page
from rplat.dashboard.problem_queries import questions
from rplat.dashboard.render import inline, open_problem, problem_name, raw_toggle, show
from rplat.dashboard.tdg_pages import chains_page, training_page, votes_page
from rplat.errors import UserError

# Comments, not attribute docstrings: Streamlit's magic would print a bare string of the app script on every page.
DEFAULT_RUNS = 4  # Intersections start with the newest runs, this many of them
SHOWN_COMBINATIONS = 40  # the UpSet chart and the combination picker show the largest: 20 runs can have 10^5

EXAMPLE_QUERY = ("SELECT method, model, count(*) AS problems, avg(CAST(correct AS INTEGER)) AS accuracy\n"
                 "FROM predictions GROUP BY ALL ORDER BY accuracy DESC")


def rationales_page() -> None:
    st.title("Rationales")
    st.caption("Implicit rationales mined from documents and worked solutions, with their loss delta "
               "(S_with - S_without: how much the rationale helps predict the text that follows). `kept` is the "
               "decision in effect: `kept_source` says whether the threshold (machine) or a person's review made it.")
    con = connection()
    sources = queries.rationale_sources(con)
    if not sources:
        st.info(EMPTY.format(what="rationales"))
        return
    left, middle, right, far = st.columns(4)
    chosen = left.multiselect("source", sources, default=sources)
    kept = {"all": None, "kept": True, "dropped": False}[middle.radio("kept", ["all", "kept", "dropped"],
                                                                      horizontal=True)]
    leak = {"all": None, "leaks": True, "no leaks": False}[far.radio("leaks", ["all", "leaks", "no leaks"],
                                                                     horizontal=True)]
    highest_first = right.radio("sort by loss delta", ["highest first", "lowest first"],
                                horizontal=True) == "highest first"
    rows = queries.rationales(con, chosen, kept, highest_first, leak)
    if rows.empty:
        st.info("No rationale matches these filters.")
        return
    scored = rows["loss_delta"].notna()
    a, b, c, d = st.columns(4)
    a.metric("rationales shown", len(rows))
    b.metric("kept", int(rows["kept"].fillna(False).astype(bool).sum()))
    c.metric("leaks", int(rows["leak"].fillna(False).astype(bool).sum()))
    d.metric("mean loss delta", f"{rows.loc[scored, 'loss_delta'].mean():.4f}" if scored.any() else "-")
    table(rows[["rationale_id", "extract_rationales_job_id", "score_rationales_job_id", "source", "loss_delta",
                "s_with", "s_without", "tau", "kept", "kept_source", "overlap", "leak", "rationale", "item",
                "problem_id", "experiment"]])
    groups = queries.loss_delta_groups(rows)
    if not groups.empty:
        st.subheader("Loss deltas")
        st.caption("How much each shown rationale helps: kept and dropped by the threshold tau, and the leaks "
                   "(rationales that copy the text they precede, dropped whatever their delta).")
        st.altair_chart(alt.Chart(groups).mark_bar(opacity=0.75).encode(
            x=alt.X("loss_delta:Q", bin=alt.Bin(maxbins=40), title="loss delta (S_with - S_without)"),
            y=alt.Y("count():Q", stack=None, title="rationales"),
            color=alt.Color("group:N", scale=alt.Scale(domain=["kept", "dropped", "leak"])),
            tooltip=["group:N", "count():Q"]))

    st.subheader("One rationale in its context")
    labels = {int(r.rationale_id): f"#{r.rationale_id}  delta {_number(r.loss_delta)}  {r.rationale[:80]}"
              for r in rows.itertuples()}
    picked = st.selectbox("rationale", list(labels), format_func=labels.__getitem__)
    row = rows.set_index("rationale_id").loc[picked]
    st.caption(f"extracted by job {row.extract_rationales_job_id} ({row.extractor}); "
               + (f"scored by job {int(row.score_rationales_job_id)} ({row.scorer}), tau {_number(row.tau)}, "
                  f"overlap with the following text {_number(row.overlap)}, "
                  f"{'a leak, ' if _true(row.leak) else ''}{_kept(row)}"
                  if pd.notna(row.score_rationales_job_id) else "not scored yet"))
    a, b, c = st.columns(3)
    a.metric("S_without", _number(row.s_without))
    b.metric("S_with", _number(row.s_with))
    c.metric("loss delta", _number(row.loss_delta))
    st.markdown("**preceding**")
    show(row.preceding)
    st.markdown("**rationale**")
    st.info(inline(row.rationale))
    st.markdown("**following**")
    show(row.following)

    st.subheader("Its reviews")
    if pd.isna(row.score_rationales_job_id):
        st.caption("Not scored yet, so nothing keeps or drops it: a review comes after its score-rationales job.")
        return
    review_section(con, "rationale", int(picked), "keep" if _true(row.kept) else "drop")


def failures_page() -> None:
    st.title("Failures")
    st.caption("Problems a run did not earn full credit on: its prediction (a tie marked with its size and the "
               "credit it earned: the tied answers' share of right ones), the gold answer, and the trajectory's "
               "steps with every candidate, its score and the one chosen.")
    con = connection()
    runs = queries.runs(con, with_failures=True)
    if not runs:
        st.info(EMPTY.format(what="wrong predictions"))
        return
    run = st.selectbox("run (method / model / evaluate job)", runs)
    summary = queries.run_credit(con, run)
    a, b, c, d = st.columns(4)
    a.metric("accuracy", f"{summary['credit'] / summary['problems']:.4f}")
    b.metric("credit earned", f"{summary['credit']:g} of {summary['problems']}")
    c.metric("problems answered wrongly", summary["wrong"])
    d.metric("ties earning part of the credit", summary["partial"])
    which = st.radio("show", list(queries.FAILURES), horizontal=True)
    rows = queries.failures(con, run, which)
    if rows.empty:
        st.info(f"Nothing to show under \"{which}\" for this run.")
        return
    table(rows.drop(columns=["question"], errors="ignore"))

    st.subheader("One failure")
    names = questions(con, rows["problem_id"])
    labels = {int(r.problem_id): f"{problem_name(int(r.problem_id), names.get(int(r.problem_id)))} ({r.dataset}): "
                                 f"predicted {r.prediction}, gold {r.gold}" for r in rows.itertuples()}
    picked = st.selectbox("problem", list(labels), format_func=labels.__getitem__)
    row = rows.set_index("problem_id").loc[picked]
    open_problem(picked, names.get(picked))
    if "question" in rows:
        st.markdown("**question**")
        show(row.question)
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
            st.caption(f"rationale: {inline(group['rationale'].iloc[0])}")
        st.markdown("chosen: " + (inline(chosen["candidate"].iloc[0]) if not chosen.empty else "(none)"))
        table(group[["job_id", "candidate_idx", "candidate", "score", "chosen"]])


def intersections_page() -> None:
    st.title("Intersections")
    st.caption("Which problems each of the chosen runs solves: over the problems all of them answered, how many "
               "each combination of runs solves, and nobody else (an UpSet chart); pick one to see its problems. "
               "Below, the chosen runs against a baseline run.")
    con = connection()
    runs = queries.solved_runs(con)
    if not runs:
        st.info(EMPTY.format(what="evaluated runs"))
        return
    accuracies = queries.accuracies(con)
    if not accuracies.empty:
        st.subheader("Accuracy per run")
        st.altair_chart(_accuracy_chart(accuracies))
        table(accuracies[["run", "experiment", "n", "n_correct", "accuracy", "ci_low", "ci_high"]])

    st.subheader("Solved sets")
    chosen = st.multiselect("runs", runs, default=runs[:DEFAULT_RUNS], max_selections=MAX_RUNS)
    if not chosen:
        st.info("Choose the runs to intersect.")
        return
    _solved_sets(con, chosen)
    # At first the oldest of the chosen runs (they come newest first): what the newer ones gained over it; a
    # baseline picked stays while runs are added or taken away.
    baseline_section(chosen, runs, chosen[-1], key="intersections_baseline")


def _solved_sets(con: duckdb.DuckDBPyConnection, chosen: list[str]) -> None:
    combinations = queries.signatures(con, chosen)
    if combinations.empty:
        st.info("These runs answered no problem in common.")
        return
    common = int(combinations["problems"].sum())
    a, b, c = st.columns(3)
    a.metric("common problems", common)
    b.metric("solved by all", int(combinations.loc[combinations["mask"] == 2 ** len(chosen) - 1, "problems"].sum()))
    c.metric("solved by none", int(combinations.loc[combinations["mask"] == 0, "problems"].sum()))
    if len(combinations) > SHOWN_COMBINATIONS:
        st.caption(f"the {SHOWN_COMBINATIONS} largest of {len(combinations)} combinations")
    largest = combinations.head(SHOWN_COMBINATIONS)
    st.altair_chart(_upset_chart(largest, chosen))
    labels = {int(r.mask): f"{r.combination} ({r.problems} problem{'' if r.problems == 1 else 's'})"
              for r in largest.itertuples()}
    mask = st.selectbox("combination", list(labels), format_func=labels.__getitem__)
    st.caption(f"{labels[mask]}: each chosen run's answer beside the gold one")
    table(queries.signature_problems(con, chosen, mask))


def _accuracy_chart(rows: pd.DataFrame) -> alt.LayerChart:
    """Each run's accuracy as a point on its 95% Wilson interval."""
    base = alt.Chart(rows[["run", "accuracy", "ci_low", "ci_high", "n"]]).encode(
        y=alt.Y("run:N", sort=None, title=None))
    return (base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy (95% Wilson interval)"), x2="ci_high:Q")
        + base.mark_point(filled=True, size=70).encode(x="accuracy:Q", tooltip=["run", "n", "accuracy", "ci_low",
                                                                                  "ci_high"]))


def _upset_chart(combinations: pd.DataFrame, runs: list[str]) -> alt.VConcatChart:
    """Intersection sizes as bars over the membership matrix: a dark dot where the run is in the combination."""
    order = combinations["combination"].tolist()
    x = alt.X("combination:N", sort=order, axis=None)
    sizes = alt.Chart(combinations[["combination", "problems"]]).encode(x=x, y=alt.Y("problems:Q", title="problems"))
    width = max(240, 36 * len(order))
    bars = (sizes.mark_bar() + sizes.mark_text(dy=-6).encode(text="problems:Q")).properties(height=220, width=width)
    members = combinations.melt(id_vars=["combination"], value_vars=runs, var_name="run", value_name="member")
    y = alt.Y("run:N", sort=runs, title=None, axis=alt.Axis(labelLimit=400))
    dots = alt.Chart(members).mark_circle(size=140).encode(
        x=x, y=y, color=alt.Color("member:N", scale=alt.Scale(domain=[True, False], range=["#222", "#ddd"]),
                                  legend=None), tooltip=["combination", "run", "member"])
    links = alt.Chart(members[members["member"]]).mark_line(color="#222").encode(x=x, y=y, detail="combination:N")
    return alt.vconcat(bars, (links + dots).properties(height=28 * len(runs), width=width), spacing=4)


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


def sql_page() -> None:
    st.title("SQL")
    st.caption("One read-only query (DuckDB SQL) over the views below and the store's tables as `store.<table>`, "
               f"stopped after {queries.SQL_TIMEOUT:g} s; writes, files and other catalogs are refused exactly as "
               "`rplat sql` refuses them.")
    con = connection()
    query = st.text_area("query", value=EXAMPLE_QUERY, height=140)
    if st.button("run", type="primary"):
        st.session_state["sql_query"] = query
    ran = st.session_state.get("sql_query")
    if ran:
        try:
            rows = queries.run_sql(con, ran)
        except UserError as exc:
            st.error(str(exc))
        else:
            st.caption(f"{len(rows)} rows" + (f", the first {queries.ROW_LIMIT} shown" if len(rows) > queries.ROW_LIMIT
                                              else ""))
            table(rows.head(queries.ROW_LIMIT))
    st.subheader("Views")
    table(queries.view_columns(con))


def _true(value: object) -> bool:
    return bool(pd.notna(value) and value)


def _kept(row: pd.Series) -> str:
    """Kept or dropped, in effect, and the threshold's decision when a review changed it."""
    decision = "kept" if _true(row.kept) else "dropped"
    if row.kept_source == "review":
        return f"{decision} by review (the threshold {'kept' if _true(row.machine_kept) else 'dropped'} it)"
    return decision


def _number(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.4f}"


def main() -> None:
    # The sidebar holds only the raw-text switch: collapsed, it leaves the tables the page's whole width.
    st.set_page_config(page_title="rplat", layout="wide", initial_sidebar_state="collapsed")
    raw_toggle()
    pages = [st.Page(rationales_page, title="Rationales", default=True),
             st.Page(failures_page, title="Failures", url_path="failures"),
             st.Page(intersections_page, title="Intersections", url_path="intersections"),
             st.Page(chains_page, title="Chains", url_path="chains"),
             st.Page(votes_page, title="Votes", url_path="votes"),
             st.Page(training_page, title="Training", url_path="training"),
             st.Page(jobs_page, title="Jobs", url_path="jobs"),
             st.Page(sql_page, title="SQL", url_path="sql"),
             st.Page(problem_page, title="Problem", url_path="problem")]
    st.navigation(pages, position="top").run()


if __name__ == "__main__":
    main()
