"""The dashboard's Turning-Dust-into-Gold pages: teacher chains, SC and ASC votes, training curves."""

from __future__ import annotations

from typing import Any

import altair as alt
import duckdb
import pandas as pd
import streamlit as st

from rplat.config import get_settings
from rplat.dashboard import tdg_queries as queries
from rplat.dashboard.baseline import baseline_section
from rplat.dashboard.common import connection, empty, pager, review_section, search_box, store, table, url_choice
from rplat.dashboard.problem_queries import questions
from rplat.dashboard.queries import job_runs
from rplat.dashboard.queries import runs as evaluated_runs
from rplat.dashboard.render import open_problem, problem_name, show

SC = queries.SC
STEPS = alt.Axis(format="d", tickMinStep=1)
"""An axis of whole numbers (steps, k): no tick between two of them."""
ALL_PROJECTIONS = "all (mean)"
NO_EXPERIMENT = "(no experiment)"
JOB = "job"  # the Votes page's URL parameter: the aggregate job shown
JOB_KEY = "votes_job"


def chains_page() -> None:
    st.title("Chains")
    st.caption("Teacher chains per problem, labelled positive or negative by their answer against the gold one; "
               "both labelers' verdicts (Hendrycks' boxed-answer rule and math-verify) are stored. A label is the "
               "one in effect: `label_source` says whether the labeler (machine) or a person's review set it.")
    con = connection()
    teachers = queries.chain_teachers(con)
    if not teachers:
        empty(con, "teacher chains")
        return
    search = search_box()
    a, b, c, d = st.columns(4)
    chosen_teachers = a.multiselect("teacher", teachers, placeholder="every teacher")
    subjects = b.multiselect("subject", queries.chain_subjects(con), placeholder="every subject")
    levels = c.multiselect("level", queries.chain_levels(con), placeholder="every level")
    label = {"all": None, "pos": "pos", "neg": "neg"}[d.radio("label", ["all", "pos", "neg"], horizontal=True)]
    disagree = st.checkbox("only problems where the two labelers disagree on a chain",
                           help="Each such problem with all its chains; `labelers_disagree` marks the chains the "
                                "two labelers judge differently.")
    filters = {"teachers": chosen_teachers, "subjects": subjects, "levels": levels, "label": label,
               "disagree_only": disagree, "search": search}
    counts = queries.chain_counts(con, **filters)
    a, b, c, d = st.columns(4)
    a.metric("positive chains", counts["pos"])
    b.metric("negative chains", counts["neg"])
    c.metric("problems", counts["problems"])
    d.metric("problems with a positive", counts["problems_with_positive"])
    if not counts["chains"]:
        st.info("No chain matches these filters.")
        return
    offset, limit = pager(counts["chains"], "chains")
    rows = queries.chains(con, **filters, offset=offset, limit=limit)
    table(rows)

    st.subheader("One problem's chains")
    problems = rows.drop_duplicates("problem_id")
    labels = {int(r.problem_id): f"{r.problem} {r.question} ({_text(r.subject, 'no subject')}, "
                                 f"{_text(r.level, 'no level')}): gold {_text(r.gold)}" for r in problems.itertuples()}
    picked = st.selectbox("problem", list(labels), format_func=labels.__getitem__)
    open_problem(picked, questions(con, [picked]).get(picked))
    question = queries.problem_question(con, picked)
    if question:
        st.markdown("**question**")
        show(question)
    chains_of = queries.chains(con, problem_id=picked)  # all of them, also those on another page
    texts = queries.chain_texts(con, chains_of["chain_id"].tolist())
    for r in chains_of.itertuples():
        verdicts = f"Hendrycks {_tick(r.hendrycks_correct)}, math-verify {_tick(r.math_verify_correct)}"
        st.markdown(f"**chain {r.chain_id}, {r.teacher} sample {r.sample_idx}: {_label(r)}** (extracted "
                    f"`{_text(r.extracted_answer)}`, gold `{_text(r.gold)}`; {verdicts}; job {r.job_id})")
        show(texts.get(int(r.chain_id), ""))

    st.subheader("One chain's reviews")
    # Names that a review does not change, so the chosen chain stays chosen when the page reads it again.
    names = {int(r.chain_id): f"chain {r.chain_id}, {r.teacher} sample {r.sample_idx}"
             for r in chains_of.itertuples()}
    chain_id = st.selectbox("chain", list(names), format_func=names.__getitem__)
    review_section(con, "chain", chain_id, str(chains_of.set_index("chain_id").loc[chain_id, "label"]))


def votes_page() -> None:
    st.title("Votes")
    st.caption("Per problem, the student's samples with their answers and ranker scores, and what greedy, "
               "self-consistency (sc) and each ASC vote (f0 = 1, f1 = 1 + 2s, f2 = 1 + s, f3 = s) made of them, "
               "with margins (winner's vote mass minus the runner-up's; 0 on a tie). A tie's answer is the first of "
               "the tied ones, marked with the tie's size and the credit it earns (the tied answers' share of "
               "right ones); a tick marks full credit.")
    con = connection()
    runs = queries.aggregate_runs(con)
    if runs.empty:
        empty(con, "aggregated votes")
        return
    labels = {int(r.job_id): f"aggregate job {r.job_id}: {r.model} on sample job {r.sample_job_id} ({r.experiment})"
              for r in runs.itertuples()}
    jobs = list(labels)
    if st.session_state.get(JOB_KEY) not in jobs:  # a new session starts on the job its URL names (?job=ID)
        st.session_state[JOB_KEY] = jobs[url_choice(JOB, jobs)]
    job = st.selectbox("run (aggregate job / model)", jobs, key=JOB_KEY, format_func=labels.__getitem__)
    st.query_params[JOB] = str(job)  # and the URL names the job shown
    run = runs.set_index("job_id").loc[job]
    sample_job = int(run.sample_job_id)
    score_samples_job = None if pd.isna(run.score_samples_job_id) else int(run.score_samples_job_id)
    search = search_box()
    left, right = st.columns(2)
    # a different credit is a disagreement too: ASC turning SC's half-credit tie into a whole answer is its gain
    disagree = left.checkbox("only problems where ASC and SC disagree (answer or credit)")
    failed = right.checkbox("only problems every method failed")

    accuracies = queries.run_accuracies(con, job)
    if not accuracies.empty:
        st.subheader("Accuracy per method (95% Wilson interval)")
        table(accuracies[["method", "n", "n_correct", "accuracy"]].assign(
            **{"95% interval": [f"[{lo:.3f}, {hi:.3f}]"
                                for lo, hi in zip(accuracies["ci_low"], accuracies["ci_high"], strict=True)]}))
        st.altair_chart(_interval_chart(accuracies, "method"))
    own = job_runs(con, job)
    methods = sorted(own, key=lambda m: (m != "greedy", m != SC, m))
    baseline_section([own[m] for m in methods], evaluated_runs(con), own.get(SC, own[methods[0]]))

    filters = {"disagree_only": disagree, "all_failed_only": failed, "search": search}
    total = queries.votes_count(con, job, **filters)
    st.metric("problems shown", total)
    if not total:
        st.info("No problem of this run matches these filters.")
    else:
        offset, limit = pager(total, "problems")
        shown = queries.votes(con, job, **filters, offset=offset, limit=limit)
        table(queries.votes_wide(shown))
        _one_problem(con, shown, sample_job, score_samples_job)

    everything = queries.votes(con, job)
    voted = everything[~everything["method"].isin(["greedy", "asc-f0"])].dropna(subset=["margin"])
    if not voted.empty:
        st.subheader("Vote margins")
        st.caption("How decisively each vote picked its answer over all problems of the run (asc-f0 weighs every "
                   "sample 1: it is sc, drawn once).")
        order = list(dict.fromkeys(voted["method"]))
        st.altair_chart(alt.Chart(voted).mark_bar().encode(
            x=alt.X("margin:Q", bin=alt.Bin(maxbins=20), title="margin"), y=alt.Y("count():Q", title="problems"),
            color=alt.Color("method:N", sort=order, legend=None),
            column=alt.Column("method:N", sort=order, title=None),
            tooltip=["method", "count()"]).properties(width=160, height=160))

    st.subheader("Accuracy against the number of samples k")
    st.caption("SC and each ASC vote over k of each problem's samples, averaged over random subsets (the same "
               "subsets for every method; the defaults are `rplat report asc`'s), with 95% Wilson bands over the "
               "problems.")
    left, right = st.columns(2)
    repeats = int(left.number_input("random subsets per k", min_value=1, max_value=500, value=20))
    seed = int(right.number_input("seed", value=0, step=1))
    functions = [m.removeprefix("asc-") for m in run.methods if m.startswith("asc-") and m != "asc-f0"]
    curve = _asc_curve(get_settings().database_url, sample_job, score_samples_job, tuple(functions), repeats, seed)
    if curve.empty:
        st.info(f"Sample job {sample_job} stored no samples.")
        return
    order = list(dict.fromkeys(curve["method"]))
    base = alt.Chart(curve).encode(x=alt.X("k:Q", title="samples per problem (k)", axis=STEPS),
                                   color=alt.Color("method:N", sort=order))
    st.altair_chart(base.mark_line(point=True).encode(
                        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
                        tooltip=["method", "k", "accuracy", "ci_low", "ci_high"])
                    + base.mark_area(opacity=0.08).encode(y="ci_low:Q", y2="ci_high:Q"))
    table(curve)


@st.cache_data(show_spinner="Subsampling the votes...", max_entries=32)
def _asc_curve(database_url: str, sample_job: int, score_samples_job: int | None, functions: tuple[str, ...],
               repeats: int, seed: int) -> pd.DataFrame:
    # Seconds on thousands of problems, and a finished job's samples and scores never change: once per input.
    return queries.asc_curve(store(database_url), sample_job, score_samples_job, functions, repeats=repeats,
                             seed=seed)


def _one_problem(con: duckdb.DuckDBPyConnection, shown: pd.DataFrame, sample_job: int,
                 score_samples_job: int | None) -> None:
    st.subheader("One problem's samples and votes")
    problems = shown.drop_duplicates("problem_id")
    names = questions(con, problems["problem_id"])
    labels = {int(r.problem_id): f"{problem_name(int(r.problem_id), names.get(int(r.problem_id)))} "
                                 f"({_text(r.subject, 'no subject')}): gold {_text(r.gold)}"
              for r in problems.itertuples()}
    picked = st.selectbox("problem", list(labels), format_func=labels.__getitem__)
    open_problem(picked, names.get(picked))
    question = queries.problem_question(con, picked)
    if question:
        st.markdown("**question**")
        show(question)
    table(shown[shown["problem_id"] == picked][["method", "answer", "correct", "credit", "vote_mass", "tie_size",
                                                "margin"]])
    samples = queries.samples_of(con, sample_job, score_samples_job, picked)
    st.markdown(f"**samples** (sample job {sample_job}"
                + (f", ranker scores of job {score_samples_job})" if score_samples_job is not None
                   else ", not scored)"))
    table(samples[["sample_idx", "extracted_answer", "correct", "score", "truncated", "finish_reason", "text"]])


def training_page() -> None:
    st.title("Training")
    st.caption("The loss and every stored metric of training jobs against optimizer steps (or against the fraction "
               "of each job's steps, so a long and a short run line up), every job of an experiment overlaid, "
               "smoothed if asked; the parameters on which the chosen jobs differ; NAT's mean w_neg per layer "
               "(how much the frozen negative LoRA contributes) over steps.")
    con = connection()
    jobs = queries.training_jobs(con)
    if jobs.empty:
        empty(con, "training metrics")
        return
    labels = dict(zip(jobs["job_id"].astype(int), jobs["job"], strict=True))
    experiments = list(dict.fromkeys(jobs["experiment"].fillna(NO_EXPERIMENT)))  # newest job's first
    left, right = st.columns([1, 3])
    experiment = left.selectbox("experiment", experiments, key="training_experiment")
    of_it = [int(j) for j, x in zip(jobs["job_id"], jobs["experiment"].fillna(NO_EXPERIMENT), strict=True)
             if x == experiment]
    # keyed by the experiment: choosing another one starts again from all of its jobs
    chosen = right.multiselect("training jobs", list(labels), default=of_it, format_func=labels.__getitem__,
                               key=f"training_jobs_{experiment}")
    curves = queries.training_curves(con, chosen)
    metrics = sorted(curves["metric"].unique(), key=lambda m: (m != "loss", m != "eval_loss", m))
    picked = st.multiselect("metrics", metrics, default=[m for m in metrics if m in ("loss", "eval_loss")])
    a, b, c = st.columns(3)
    smoothing = a.slider("smoothing (EMA weight of the past)", 0.0, 0.99, 0.0, 0.01, key="training_smoothing")
    log = b.checkbox("log scale", key="training_log")
    x = c.radio("x axis", [queries.STEP, queries.FRACTION], horizontal=True, key="training_x")
    drawn = queries.shaped_curves(curves, smoothing, x)
    for metric in picked:
        st.subheader(metric)
        rows = drawn[drawn["metric"] == metric]
        if log:
            kept = rows[(rows["value"] > 0) & (rows["smoothed"] > 0)]
            if len(kept) < len(rows):
                st.caption(f"{len(rows) - len(kept)} values at or below 0 left out of the log scale.")
            rows = kept
        st.altair_chart(_curve_chart(rows, metric, x, log, smoothing > 0))
    if len(chosen) > 1:
        st.subheader("Parameters that differ")
        differ = queries.differing_params(queries.job_params(con, chosen), labels)
        if len(differ.columns) == 1:
            st.caption("The chosen jobs share every parameter.")
        else:
            table(differ)
    table(jobs)

    st.subheader("NAT: mean w_neg per layer")
    nat_jobs = queries.nat_jobs(con)
    if not nat_jobs:
        st.info("No train-nat job has logged w_neg yet.")
        return
    left, right = st.columns(2)
    nat_job = left.selectbox("train-nat job", nat_jobs, format_func=lambda j: labels.get(j, f"job {j}"))
    w_neg = queries.nat_w_neg(con, nat_job)
    projections = sorted(w_neg["proj"].unique())
    proj = right.selectbox("projection", [ALL_PROJECTIONS, *projections])
    drawn = w_neg if proj == ALL_PROJECTIONS else w_neg[w_neg["proj"] == proj]
    # A real model has dozens of layers: one line per layer, coloured along the depth, the projections averaged.
    st.altair_chart(alt.Chart(drawn).mark_line(point=True).encode(
        x=alt.X("step:Q", title="optimizer step", axis=STEPS),
        y=alt.Y("mean(mean_w_neg):Q", title="mean w_neg" if proj == ALL_PROJECTIONS else f"mean w_neg, {proj}"),
        color=alt.Color("layer:Q", title="layer", scale=alt.Scale(scheme="viridis"),
                        legend=alt.Legend(format="d", tickMinStep=1)), detail="layer:N",
        tooltip=["step", "layer", alt.Tooltip("mean(mean_w_neg):Q", title="mean w_neg")]))
    table(drawn)


def _curve_chart(rows: pd.DataFrame, metric: str, x: str, log: bool, smoothed: bool) -> alt.LayerChart:
    """A metric's curve per job, the legend below it with the jobs' names whole; smoothed, the raw values stay
    as a faint line behind the smoothed one."""
    axis = STEPS if x == queries.STEP else alt.Axis(format=".0%")
    base = alt.Chart(rows).encode(
        x=alt.X("x:Q", title=x, axis=axis),
        color=alt.Color("job:N", title="job", legend=alt.Legend(orient="bottom", columns=1, labelLimit=0)),
        tooltip=["job", "step", "value", "smoothed"])
    scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    line = base.mark_line(point=not smoothed).encode(y=alt.Y("smoothed:Q", title=metric, scale=scale))
    if not smoothed:
        return alt.layer(line)
    return alt.layer(base.mark_line(opacity=0.25).encode(y=alt.Y("value:Q", title=metric, scale=scale)), line)


def _interval_chart(rows: pd.DataFrame, category: str) -> alt.LayerChart:
    """Accuracy points with their interval as a bar through them, one row per `category`."""
    base = alt.Chart(rows).encode(y=alt.Y(f"{category}:N", sort=None, title=None))
    return (base.mark_rule().encode(x=alt.X("ci_low:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
                                    x2="ci_high:Q")
            + base.mark_point(filled=True, size=60).encode(x="accuracy:Q",
                                                           tooltip=[category, "accuracy", "ci_low", "ci_high"]))


def _text(value: object, missing: str = "-") -> str:
    """A value for a label; DuckDB hands a NULL string to pandas as NaN."""
    return missing if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _label(chain: Any) -> str:
    """A chain's label in effect, and the labeler's when a review changed it."""
    if chain.label_source == "review":
        return f"{chain.label} (review; the labeler said {chain.machine_label})"
    return f"{chain.label} (machine)"


def _tick(value: bool | None) -> str:
    return "-" if value is None or pd.isna(value) else ("right" if value else "wrong")
