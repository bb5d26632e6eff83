"""The Streamlit app behind `rplat dashboard`: rationales, failures, intersections, jobs, SQL, the TDG pages and
the Problem page."""

from __future__ import annotations

import altair as alt
import duckdb
import pandas as pd
import streamlit as st

from rplat import slices
from rplat.analytics import MAX_RUNS
from rplat.dashboard import queries
from rplat.dashboard.baseline import baseline_section
from rplat.dashboard.common import connection, empty, pager, review_section, search_box, table
from rplat.dashboard.problem_page import problem_page
from rplat.dashboard.problem_queries import questions
from rplat.dashboard.render import inline, open_problem, raw_toggle, show
from rplat.dashboard.tdg_pages import chains_page, training_page, votes_page
from rplat.errors import UserError

# Comments, not attribute docstrings: Streamlit's magic would print a bare string of the app script on every page.
DEFAULT_RUNS = 4  # Intersections start with the newest runs, this many of them
SHOWN_COMBINATIONS = 40  # the UpSet chart and the combination picker show the largest: 20 runs can have 10^5
# A run's name on an axis, whole: "method / model / job N" on three lines, never cut short.
RUN_AXIS = alt.Axis(labelLimit=0, labelExpr="split(datum.label, ' / ')")
RUN_ROW = 44  # pixels per run on a chart's run axis: room for its three lines

NO_SLICE = ("No named slice yet: save one with `rplat slice add NAME --where \"subject = 'Algebra'\"` (the dashboard "
            "writes nothing), then choose it here to measure it on every run.")

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
        empty(con, "rationales")
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
        empty(con, "wrong predictions")
        return
    run = st.selectbox("run (method / model / evaluate job)", runs, key="run", bind="query-params")  # ?run=...
    summary = queries.run_credit(con, run)
    a, b, c, d = st.columns(4)
    a.metric("accuracy", f"{summary['credit'] / summary['problems']:.4f}")
    b.metric("credit earned", f"{summary['credit']:g} of {summary['problems']}")
    c.metric("problems answered wrongly", summary["wrong"])
    d.metric("ties earning part of the credit", summary["partial"])
    left, right = st.columns(2)
    with left:
        search = search_box()
    which = right.radio("show", list(queries.FAILURES), horizontal=True)
    total = queries.failures_count(con, run, which, search)
    if not total:
        st.info(f"Nothing to show under \"{which}\" for this run" + (" and this search." if search else "."))
        return
    offset, limit = pager(total, "problems")
    rows = queries.failures(con, run, which, search, offset=offset, limit=limit)
    table(rows.drop(columns=["question"], errors="ignore"))

    st.subheader("One failure")
    labels = {int(r.problem_id): f"{r.problem} {r.question_start} ({r.dataset}): predicted {r.prediction}, "
                                 f"gold {r.gold}"
              for r in rows.itertuples()}
    picked = st.selectbox("problem", list(labels), format_func=labels.__getitem__)
    row = rows.set_index("problem_id").loc[picked]
    open_problem(picked, questions(con, [picked]).get(picked))
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
        empty(con, "evaluated runs")
        return
    accuracies = queries.accuracies(con)
    if not accuracies.empty:
        st.subheader("Accuracy per run")
        st.altair_chart(_accuracy_chart(accuracies))
        table(accuracies[["run", "experiment", "n", "n_correct", "accuracy", "ci_low", "ci_high"]])

    st.subheader("Solved sets")
    chosen = st.multiselect("runs", runs, default=runs[:DEFAULT_RUNS], max_selections=MAX_RUNS, key="runs",
                            bind="query-params")  # ?runs=...&runs=... when not the default
    if not chosen:
        st.info("Choose the runs to intersect.")
        return
    _solved_sets(con, chosen)
    # At first the oldest of the chosen runs (they come newest first): what the newer ones gained over it; a
    # baseline picked stays while runs are added or taken away.
    baseline_section(chosen, runs, chosen[-1], key="baseline")


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
        y=alt.Y("run:N", sort=None, title=None, axis=RUN_AXIS)).properties(height=alt.Step(RUN_ROW))
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
    y = alt.Y("run:N", sort=runs, title=None, axis=RUN_AXIS)
    dots = alt.Chart(members).mark_circle(size=140).encode(
        x=x, y=y, color=alt.Color("member:N", scale=alt.Scale(domain=[True, False], range=["#222", "#ddd"]),
                                  legend=None), tooltip=["combination", "run", "member"])
    links = alt.Chart(members[members["member"]]).mark_line(color="#222").encode(x=x, y=y, detail="combination:N")
    return alt.vconcat(bars, (links + dots).properties(height=RUN_ROW * len(runs), width=width), spacing=4)


def jobs_page() -> None:
    st.title("Jobs")
    st.caption("Every job, newest first: status, timing, attempts, progress and the last line of a failed one's "
               "error; below, why one job is where it is, and when each job waited and ran.")
    con = connection()
    counts = queries.job_status_counts(con)
    if counts.empty:
        empty(con, "jobs")
        return
    for column, row in zip(st.columns(len(counts)), counts.itertuples(), strict=True):
        column.metric(row.status, int(row.jobs))
    left, right = st.columns(2)
    statuses = left.multiselect("status", counts["status"].tolist())
    kinds = right.multiselect("kind", queries.job_kinds(con))
    rows = queries.job_timeline(con, statuses, kinds)
    if rows.empty:
        st.info("No job matches these filters.")
        return
    table(rows.assign(error=[queries.error_headline(e) for e in rows["error"]]))
    now = pd.Timestamp.now("UTC").tz_localize(None)
    _why(con, rows, now)
    segments = queries.timeline_segments(rows, now)
    if not segments.empty:
        st.subheader("Timeline")
        st.caption("Each job's wait in the queue (pale) and its run (solid), in UTC on a 24-hour clock; a job that "
                   "took no time still gets a sliver of a bar (its tooltip gives the true seconds).")
        st.altair_chart(_timeline_chart(segments))


def _why(con: duckdb.DuckDBPyConnection, rows: pd.DataFrame, now: pd.Timestamp) -> None:
    """One job's panel: its status, attempts, heartbeat, progress and ETA, its whole error and its events."""
    st.subheader("Why: one job")
    labels = {int(r.job_id): f"job {r.job_id} {r.kind} ({r.status})" for r in rows.itertuples()}
    failed = [int(j) for j, s in zip(rows["job_id"], rows["status"], strict=True) if s == "failed"]
    options = list(labels)
    picked = st.selectbox("job", options, index=options.index(failed[0]) if failed else 0,
                          format_func=labels.__getitem__, key="jobs_why")
    job = queries.job_row(con, picked)
    facts = queries.job_why(job, now)
    for column, (label, value) in zip(st.columns(len(facts)), facts.items(), strict=True):
        column.metric(label, value)
    if pd.notna(job["error"]) and job["error"]:
        st.markdown("**error**")
        st.code(job["error"], language=None)
    events = queries.job_events(con, picked)
    st.markdown("**events**")
    if events.empty:
        st.caption(f"Job {picked} has no event recorded.")
    else:
        table(events)
    if pd.notna(job["params"]):
        with st.expander("parameters"):
            st.json(job["params"])


def _timeline_chart(segments: pd.DataFrame) -> alt.Chart:
    when = "%Y-%m-%d %H:%M:%S"
    shown = segments.assign(start_utc=segments["start"].dt.strftime(when),
                            seconds=segments["seconds"].round(3))
    return alt.Chart(shown).mark_bar().encode(
        x=alt.X("start:T", title="time (UTC, 24-hour)", scale=alt.Scale(type="utc"),
                axis=alt.Axis(format="%d %b %H:%M", labelAngle=0)),
        x2="end:T",
        y=alt.Y("job_id:O", sort="descending", title="job"),
        color=alt.Color("status:N", legend=alt.Legend(orient="bottom")),
        opacity=alt.Opacity("phase:N", scale=alt.Scale(domain=["queued", "ran"], range=[0.35, 1.0]),
                            legend=alt.Legend(orient="bottom")),
        tooltip=["job_id", "kind", "status", "phase", alt.Tooltip("start_utc:N", title="from (UTC)"),
                 "seconds", "runner"])


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
    views = queries.view_columns(con)
    needle = st.text_input("find a view or column", placeholder="a name, or part of one").strip().lower()
    shown = {view: cols for view, cols in views.items()
             if not needle or needle in view.lower() or any(needle in c.lower() for c in cols["column"])}
    st.caption(f"{len(shown)} of {len(views)} views; open one for its columns and their types.")
    for view, cols in shown.items():
        with st.expander(f"{view} ({len(cols)} columns)", expanded=bool(needle)):
            table(cols)


def slices_page() -> None:
    st.title("Slices")
    st.caption("The slices people look at: the share of positive teacher chains per level, subject and teacher, "
               "and each run's accuracy per subject, each with its 95% Wilson interval.")
    con = connection()
    shares = queries.positive_shares(con)
    runs = queries.runs(con)
    if shares.empty and not runs:
        empty(con, "teacher chains or predictions")
        return
    st.subheader("Positive chains per level, subject and teacher")
    if shares.empty:
        st.info("No teacher chains yet.")
    else:
        st.altair_chart(_share_heatmap(shares))
        table(shares)
    st.subheader("Accuracy per subject")
    _subject_accuracies(con, runs)
    st.subheader("Named slices")
    _named_slices(con, runs)


def _subject_accuracies(con: duckdb.DuckDBPyConnection, runs: list[str]) -> None:
    if not runs:
        st.info("No evaluated run yet.")
        return
    chosen = st.multiselect("runs", runs, default=runs[:DEFAULT_RUNS], max_selections=MAX_RUNS, key="slices_runs")
    if not chosen:
        st.info("Choose the runs to compare.")
        return
    rows = queries.subject_accuracies(con, chosen)
    st.altair_chart(_subject_chart(rows, chosen))
    table(rows)


def _named_slices(con: duckdb.DuckDBPyConnection, runs: list[str]) -> None:
    """The stored slices, and the chosen one's metric on every run (or the chosen runs); saved with `rplat slice
    add`, since the dashboard writes nothing."""
    stored = pd.DataFrame(slices.saved(con), columns=slices.COLUMNS)
    if stored.empty:
        st.info(NO_SLICE)
        return
    table(stored)
    name = st.selectbox("slice", stored["name"].tolist(), key="slices_named")
    chosen = stored.set_index("name").loc[name]
    about = f" ({chosen.description})" if isinstance(chosen.description, str) else ""
    st.caption(f"{chosen.metric} of the predictions where `{chosen.predicate}`{about}; an accuracy is the mean credit "
               "(a tie counts its share) with its 95% Wilson interval.")
    if not runs:
        st.info("No evaluated run yet.")
        return
    only = st.multiselect("runs (none chosen: every run)", runs, key="slices_named_runs")
    try:
        measures = slices.measure(con, chosen.predicate, chosen.metric, only)
    except UserError as exc:
        st.error(str(exc))
        return
    rows = pd.DataFrame([m.as_dict() for m in measures], columns=slices.RESULT_COLUMNS)
    if chosen.metric == "accuracy" and rows["n"].any():
        st.altair_chart(_slice_chart(rows[rows["n"] > 0]))
    table(rows.rename(columns={"value": chosen.metric}))


def _slice_chart(rows: pd.DataFrame) -> alt.LayerChart:
    """Each run's accuracy on the slice as a point on its interval."""
    base = alt.Chart(rows).encode(y=alt.Y("run:N", sort=rows["run"].tolist(), title=None, axis=RUN_AXIS))
    return (base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy on the slice (95% Wilson interval)"),
        x2="ci_high:Q")
        + base.mark_point(filled=True, size=60).encode(
            x="value:Q", tooltip=["run", "n", "credit", alt.Tooltip("value:Q", title="accuracy", format=".3f"),
                                  alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")])
    ).properties(height=alt.Step(RUN_ROW))


def _share_heatmap(shares: pd.DataFrame) -> alt.FacetChart:
    """Subject by level, one panel per teacher, coloured by the share of positive chains, the share and count
    written in each cell."""
    base = alt.Chart().encode(x=alt.X("level:O", title="level"), y=alt.Y("subject:N", title=None,
                                                                          axis=alt.Axis(labelLimit=0)))
    cells = base.mark_rect().encode(
        color=alt.Color("share:Q", title="share positive", scale=alt.Scale(domain=[0, 1], scheme="blues")),
        tooltip=["teacher", "subject", "level", "chains", "positive", alt.Tooltip("share:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")])
    text = base.mark_text(fontSize=11).encode(
        text="cell:N", color=alt.condition("datum.share > 0.6", alt.value("white"), alt.value("black")))
    shown = shares.assign(cell=[f"{s:.2f} ({p}/{n})" for s, p, n in
                                zip(shares["share"], shares["positive"], shares["chains"], strict=True)])
    return alt.layer(cells, text, data=shown).properties(width=alt.Step(90)).facet(
        column=alt.Column("teacher:N", title="teacher", header=alt.Header(labelLimit=0)))


def _subject_chart(rows: pd.DataFrame, runs: list[str]) -> alt.LayerChart:
    """Per subject, each run's accuracy as a point on its interval, the runs side by side."""
    base = alt.Chart(rows).encode(
        y=alt.Y("subject:N", title=None, axis=alt.Axis(labelLimit=0)), yOffset=alt.YOffset("run:N", sort=runs),
        color=alt.Color("run:N", sort=runs, legend=alt.Legend(orient="bottom", columns=1, labelLimit=0)))
    return (base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy (95% Wilson interval)"), x2="ci_high:Q")
        + base.mark_point(filled=True, size=60).encode(
            x="accuracy:Q", tooltip=["run", "subject", "n", "credit", alt.Tooltip("accuracy:Q", format=".3f"),
                                     alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")])
    ).properties(height=alt.Step(16))  # per run: yOffset takes the step


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
             st.Page(slices_page, title="Slices", url_path="slices"),
             st.Page(chains_page, title="Chains", url_path="chains"),
             st.Page(votes_page, title="Votes", url_path="votes"),
             st.Page(training_page, title="Training", url_path="training"),
             st.Page(jobs_page, title="Jobs", url_path="jobs"),
             st.Page(sql_page, title="SQL", url_path="sql"),
             st.Page(problem_page, title="Problem", url_path="problem")]
    st.navigation(pages, position="top").run()


if __name__ == "__main__":
    main()
