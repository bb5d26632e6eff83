"""Runs against a baseline run, as the Intersections and Votes pages show it: `rplat report compare`'s numbers."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from rplat.config import get_settings
from rplat.dashboard import queries
from rplat.dashboard.common import store, table


def baseline_section(runs: list[str], choices: list[str], default: str, key: str | None = None) -> None:
    """Pick a baseline among `choices` (`default` first chosen); each of `runs` but the baseline against it, and
    the problems where one of them earns another credit than the baseline (its flips). With a `key` the picked
    baseline stays while `default` changes, and the URL carries it (`?KEY=RUN`); without one, a new default
    replaces it."""
    st.subheader("Against a baseline")
    st.caption("Each run against the baseline on the problems both answered: the difference in accuracy with its "
               "95% paired bootstrap interval (10,000 resamples of the problems, seed 0) and the exact McNemar p "
               "over the problems exactly one of them solves, as `rplat report compare RUN BASELINE` prints them; "
               "wins, losses and ties count the problems where the run earns more, less or the same credit (a "
               "tie's half credit turned whole is a win).")
    baseline = st.selectbox("baseline run", choices, index=choices.index(default) if default in choices else 0,
                            key=key, bind="query-params" if key else None)
    others = [run for run in runs if run != baseline]
    if not others:
        st.info("Choose a run other than the baseline to compare with it.")
        return
    rows = _comparison(get_settings().database_url, tuple(others), baseline)
    if not rows["common problems"].any():
        st.info(f"No chosen run answered a problem that {baseline} answered.")
        return
    table(rows.assign(**{"95% interval": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in
                                          zip(rows["ci_low"], rows["ci_high"], strict=True)]})[
        ["run", "common problems", "accuracy", "baseline accuracy", "difference", "95% interval", "ci_low", "ci_high",
         "McNemar p", "wins", "losses", "ties", "only run solves", "only baseline solves", "same numbers"]])
    st.altair_chart(_difference_chart(rows[rows["common problems"] > 0]))

    run = st.selectbox("flips of run", others)
    changed = _flips(get_settings().database_url, run, baseline)
    st.caption(f"{len(changed)} problem{'' if len(changed) == 1 else 's'} where {run} earns another credit than "
               f"the baseline {baseline}")
    table(changed)


@st.cache_data(show_spinner="Comparing with the baseline...", max_entries=32)
def _comparison(database_url: str, runs: tuple[str, ...], baseline: str) -> pd.DataFrame:
    # 10,000 bootstrap resamples per run, and a finished run's predictions never change: once per input.
    return queries.baseline_comparison(store(database_url), runs, baseline)


@st.cache_data(show_spinner=False, max_entries=32)
def _flips(database_url: str, run: str, baseline: str) -> pd.DataFrame:
    return queries.flips(store(database_url), run, baseline)


def _difference_chart(rows: pd.DataFrame) -> alt.LayerChart:
    """Each run's difference from the baseline as a point on its bootstrap interval, beside a rule at 0."""
    base = alt.Chart(rows[["run", "difference", "ci_low", "ci_high", "McNemar p"]]).encode(
        y=alt.Y("run:N", sort=None, title=None, axis=alt.Axis(labelLimit=400)))
    zero = alt.Chart(pd.DataFrame({"zero": [0.0]})).mark_rule(strokeDash=[4, 4], color="#888").encode(x="zero:Q")
    return (zero + base.mark_rule(strokeWidth=2).encode(
        x=alt.X("ci_low:Q", title="accuracy minus the baseline's (95% paired bootstrap interval)"), x2="ci_high:Q")
        + base.mark_point(filled=True, size=70).encode(x="difference:Q", tooltip=["run", "difference", "ci_low",
                                                                                   "ci_high", "McNemar p"]))
