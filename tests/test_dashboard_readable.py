"""Readable everywhere (issue 19): whole run names, the Training page's experiment, smoothing, log scale, x axes and
differing parameters, the Jobs page's why panel and timeline, the SQL page's views, the Slices page and empty-store
hints that say what the store holds (AppTest, in-process, on both backends)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import apptests
import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from dashboard_seed_tdg import EXPERIMENT, T0, seed_tdg
from streamlit.testing.v1 import AppTest
from test_dashboard import seed

from rplat import analytics
from rplat.dashboard import queries, tdg_queries
from rplat.dashboard.common import EMPTY, empty_hint
from rplat.models import JobEvent, TrainingMetric
from rplat.stats import wilson
from rplat.store import transaction

import factories as make
from stores import MigratedTemplates, Store, make_store

TRACEBACK = ("Traceback (most recent call last):\n  File \"runners/solve.py\", line 12, in run\n    model.generate()\n"
             "RuntimeError: CUDA out of memory on device 0")
RANKER_LOSS = [2.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625]  # 8 steps against train-neg's 4


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def seed_jobs(store: Store, ranker_job: int) -> dict[str, int]:
    """Beside both dashboard worlds: a job that failed after a retry (its events), one running, one queued, one
    that took no time, and the ranker's 8 training steps."""
    with transaction(store.engine()) as s:
        failed = make.job(s, "solve", {"method": "greedy"}, status="failed", attempts=2, max_attempts=2,
                          created_at=at(0), started_at=at(1), finished_at=at(3), error=TRACEBACK, lease_owner="gpu-1")
        s.add_all([JobEvent(job_id=failed.id, at=at(0), event="enqueued"),
                   JobEvent(job_id=failed.id, at=at(2), event="retry", runner="gpu-1", attempt=1,
                            message="attempt 1 failed, retrying in 30s: RuntimeError: CUDA out of memory"),
                   JobEvent(job_id=failed.id, at=at(2.5), event="claimed", runner="gpu-1", attempt=2),
                   JobEvent(job_id=failed.id, at=at(3), event="failed", runner="gpu-1", attempt=2, message=TRACEBACK)])
        running = make.job(s, "sample", {"n": 4}, status="running", attempts=1, created_at=at(0), started_at=at(4),
                           heartbeat_at=at(9), progress_done=3, progress_total=10, lease_owner="gpu-2")
        queued = make.job(s, "aggregate", {}, status="queued", created_at=at(5))
        instant = make.job(s, "evaluate", {}, attempts=1, created_at=at(6), started_at=at(6), finished_at=at(6))
        s.add_all([TrainingMetric(job_id=ranker_job, step=k + 1, loss=loss, lr=1e-4, extra={"margin": k - 3.0})
                   for k, loss in enumerate(RANKER_LOSS)])
    return {"failed": failed.id, "running": running.id, "queued": queued.id, "instant": instant.id}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          _templates: MigratedTemplates) -> Iterator[tuple[Store, dict[str, int]]]:
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param), templates=_templates):
        ids = {**seed(store), **seed_tdg(store)}
        yield store, {**ids, **seed_jobs(store, ids["train-ranker"])}


def page(module: str, name: str) -> AppTest:
    found = apptests.page(module, name)
    assert not found.exception, [e.value for e in found.exception]
    return found


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def chart_data(at: AppTest, n: int) -> pd.DataFrame:
    proto = at.get("vega_lite_chart")[n].proto
    return pd.concat([pa.ipc.open_stream(d.data.data).read_pandas() for d in proto.datasets], ignore_index=True)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def find(spec: object, key: str) -> list[object]:
    """Every value of `key` anywhere in a Vega-Lite spec."""
    if isinstance(spec, dict):
        return [*([spec[key]] if key in spec else []), *(v for x in spec.values() for v in find(x, key))]
    if isinstance(spec, list):
        return [v for x in spec for v in find(x, key)]
    return []


# --- whole run names ----------------------------------------------------------------------------------------


def test_intersections_charts_write_every_run_name_whole_on_lines_of_its_own(ids: dict[str, int]) -> None:
    at = page("app", "intersections_page")
    accuracy, upset = charts(at)[:2]
    for spec in (accuracy, upset):
        axes = [a for a in find(spec, "axis") if isinstance(a, dict) and "labelExpr" in a]
        assert axes and all(a["labelLimit"] == 0 and a["labelExpr"] == "split(datum.label, ' / ')" for a in axes)


# --- Training ---------------------------------------------------------------------------------------------


def test_training_opens_on_every_job_of_the_newest_experiment(ids: dict[str, int]) -> None:
    at = page("tdg_pages", "training_page")
    assert at.selectbox(key="training_experiment").value == EXPERIMENT
    assert at.multiselect[0].value == [ids["train-ranker"], ids["train-nat"], ids["train-neg"]]
    legends = [legend for legend in find(charts(at)[0], "legend") if isinstance(legend, dict)]
    assert legends and all(legend["labelLimit"] == 0 for legend in legends)


def test_training_against_the_fraction_of_training_lines_up_an_8_step_and_a_4_step_job(ids: dict[str, int]) -> None:
    at = page("tdg_pages", "training_page")
    at.radio(key="training_x").set_value(tdg_queries.FRACTION).run()
    loss = chart_data(at, 0)
    ends = loss.groupby("job_id")["x"].max().to_dict()
    assert ends == {ids["train-ranker"]: 1.0, ids["train-nat"]: 1.0, ids["train-neg"]: 1.0}
    ranker = loss[loss["job_id"] == ids["train-ranker"]]
    assert ranker.loc[ranker["step"] == 4, "x"].tolist() == [0.5]
    assert loss.loc[loss["job_id"] == ids["train-neg"], "x"].tolist() == [0.25, 0.5, 0.75, 1.0]


def test_training_smoothing_is_an_exponential_moving_average_per_job(ids: dict[str, int]) -> None:
    at = page("tdg_pages", "training_page")
    at.slider(key="training_smoothing").set_value(0.5).run()
    loss = chart_data(at, 0)
    neg = loss[loss["job_id"] == ids["train-neg"]].drop_duplicates("step")
    # 2, then 0.5 * 2 + 0.5 * 1.5, ...: the raw values stay beside it
    assert neg["smoothed"].tolist() == [2.0, 1.75, 1.5, 1.25]
    assert neg["value"].tolist() == [2.0, 1.5, 1.25, 1.0]


def test_training_log_scale_draws_a_log_axis_and_leaves_out_values_at_or_below_zero(ids: dict[str, int]) -> None:
    at = page("tdg_pages", "training_page")
    at.multiselect[1].set_value(["loss", "margin"]).run()
    at.checkbox(key="training_log").check().run()
    assert "log" in [s.get("type") for s in find(charts(at)[0], "scale") if isinstance(s, dict)]
    assert "4 values at or below 0 left out of the log scale." in [c.value for c in at.caption]
    assert sorted(chart_data(at, 1)["value"]) == [1.0, 2.0, 3.0, 4.0]


def test_training_lists_the_parameters_on_which_the_chosen_jobs_differ(ids: dict[str, int]) -> None:
    at = page("tdg_pages", "training_page")
    differ = at.dataframe[0].value
    assert differ.columns.tolist() == ["job", "adapter_name", "ranker_name"]
    assert differ.values.tolist() == [
        [f"train-ranker job {ids['train-ranker']} (ranker-dash)", "-", "ranker-dash"],
        [f"train-nat job {ids['train-nat']} (nat-dash)", "nat-dash", "-"],
        [f"train-neg job {ids['train-neg']} (neg-dash)", "neg-dash", "-"]]


def test_differing_params_flatten_nested_ones_and_leave_shared_ones_out() -> None:
    params = {1: {"lr": 1e-4, "lora": {"r": 8, "alpha": 16}}, 2: {"lr": 1e-4, "lora": {"r": 16, "alpha": 16}}}
    got = tdg_queries.differing_params(params, {1: "one", 2: "two"})
    assert got.values.tolist() == [["one", "8"], ["two", "16"]] and got.columns.tolist() == ["job", "lora.r"]


# --- Jobs -------------------------------------------------------------------------------------------------


def test_jobs_table_shows_an_errors_last_line_and_the_why_panel_the_whole_of_it_with_its_events(
        ids: dict[str, int]) -> None:
    at = page("app", "jobs_page")
    jobs = at.dataframe[0].value.set_index("job_id")
    assert jobs.loc[ids["failed"], "error"] == "RuntimeError: CUDA out of memory on device 0"
    assert at.selectbox(key="jobs_why").value == ids["failed"]  # the newest failed job first
    assert metrics(at)["attempts"] == "2 of 2"
    assert [c.value for c in at.code] == [TRACEBACK]
    events = at.dataframe[1].value
    assert events["event"].tolist() == ["enqueued", "retry", "claimed", "failed"]
    assert events["attempt"].tolist()[1:] == [1, 2, 2]


def test_the_why_panel_of_a_running_job_gives_its_heartbeat_progress_and_eta(ids: dict[str, int]) -> None:
    at = page("app", "jobs_page")
    at.selectbox(key="jobs_why").set_value(ids["running"]).run()
    assert set(metrics(at)) >= {"status", "attempts", "heartbeat", "progress", "ETA"}
    assert metrics(at)["progress"] == "3 of 10"
    assert f"Job {ids['running']} has no event recorded." in [c.value for c in at.caption]


def test_job_why_reads_heartbeat_age_and_eta_from_the_pace_so_far(duck: duckdb.DuckDBPyConnection,
                                                                   ids: dict[str, int]) -> None:
    job = queries.job_row(duck, ids["running"])
    # started at minute 4, 3 of 10 done at minute 10: 2 min per item, 7 left
    assert queries.job_why(job, pd.Timestamp(at(10))) == {
        "status": "running", "attempts": "1 of 3", "heartbeat": "1 min 0 s ago", "progress": "3 of 10",
        "ETA": "in 14 min 0 s"}
    assert queries.job_why(queries.job_row(duck, ids["queued"]), pd.Timestamp(at(65))) == {
        "status": "queued", "attempts": "0 of 3", "queued for": "1 h 0 min"}
    assert queries.eta_seconds(30.0, 0, 10) is None


def test_the_timeline_holds_queued_jobs_a_bar_for_a_job_of_no_time_and_a_24_hour_utc_axis(
        ids: dict[str, int]) -> None:
    at = page("app", "jobs_page")
    bars = chart_data(at, 0)
    phases = {(int(j), p) for j, p in zip(bars["job_id"], bars["phase"], strict=True)}
    assert (ids["queued"], "queued") in phases and (ids["queued"], "ran") not in phases
    instant = bars[(bars["job_id"] == ids["instant"]) & (bars["phase"] == "ran")].iloc[0]
    assert instant["seconds"] == 0 and instant["end"] > instant["start"]
    spec = charts(at)[0]
    assert spec["encoding"]["x"]["scale"]["type"] == "utc"
    assert "%H" in spec["encoding"]["x"]["axis"]["format"] and "%I" not in spec["encoding"]["x"]["axis"]["format"]


def test_timeline_segments_widen_only_the_bars_below_the_least_width() -> None:
    jobs = pd.DataFrame({"job_id": [1, 2], "kind": ["a", "b"], "status": ["succeeded", "succeeded"],
                         "runner": ["r", "r"], "created_at": [pd.Timestamp(at(0))] * 2,
                         "started_at": [pd.Timestamp(at(0)), pd.Timestamp(at(100))],
                         "finished_at": [pd.Timestamp(at(1000)), pd.Timestamp(at(100))]})
    got = queries.timeline_segments(jobs, pd.Timestamp(at(2000)), min_share=0.01)
    widths = {(r.job_id, r.phase): (r.end - r.start, r.seconds) for r in got.itertuples()}
    assert widths[(1, "ran")] == (pd.Timedelta(minutes=1000), 60000.0)
    assert widths[(2, "ran")] == (pd.Timedelta(minutes=10), 0.0)  # 1% of the 1000 minutes shown
    assert widths[(2, "queued")] == (pd.Timedelta(minutes=100), 6000.0)
    assert widths[(1, "queued")] == (pd.Timedelta(minutes=10), 0.0)


# --- SQL --------------------------------------------------------------------------------------------------


def test_sql_page_lists_every_view_as_an_expander_with_its_columns(ids: dict[str, int],
                                                                   duck: duckdb.DuckDBPyConnection) -> None:
    at = page("app", "sql_page")
    columns = analytics.view_columns(duck)
    assert [e.label for e in at.expander] == [f"{v} ({len(c)} columns)" for v, c in columns.items()]
    assert at.dataframe[list(columns).index("job_events")].value["column"].tolist() == [
        "event_id", "job_id", "kind", "at", "event", "message", "runner", "attempt"]
    at.text_input[0].input("heartbeat").run()
    assert [e.label for e in at.expander] == [f"job_timeline ({len(columns['job_timeline'])} columns)"]


# --- Slices -----------------------------------------------------------------------------------------------


def test_slices_give_the_share_of_positive_chains_per_level_subject_and_teacher(ids: dict[str, int]) -> None:
    at = page("app", "slices_page")
    shares = at.dataframe[0].value.set_index(["teacher", "subject", "level"])
    assert shares.loc[("gpt-3.5", "Prealgebra", "Level 1"), ["chains", "positive", "share"]].tolist() == [2, 1, 0.5]
    assert shares.loc[("smol", "Algebra", "Level 1"), ["chains", "positive"]].tolist() == [1, 1]
    assert (shares.loc[("gpt-3.5", "Algebra", "Level 2"), ["ci_low", "ci_high"]].tolist()
            == pytest.approx(wilson(0, 2)))
    assert len(shares) == 6


def test_slices_give_each_runs_accuracy_per_subject_with_its_interval(ids: dict[str, int]) -> None:
    at = page("app", "slices_page")
    f0, sc = f"asc-f0 / student / job {ids['aggregate']}", f"sc / student / job {ids['aggregate']}"
    at.multiselect(key="slices_runs").set_value([f0, sc]).run()
    rows = at.dataframe[1].value.set_index(["run", "subject"])
    # asc-f0: Algebra m0 right, m1 wrong; Prealgebra m2 a tie for half, m3 wrong
    assert rows.loc[(f0, "Algebra"), ["n", "credit", "accuracy"]].tolist() == [2, 1.0, 0.5]
    assert rows.loc[(f0, "Prealgebra"), ["n", "credit", "accuracy"]].tolist() == [2, 0.5, 0.25]
    assert rows.loc[(f0, "Prealgebra"), ["ci_low", "ci_high"]].tolist() == pytest.approx(wilson(0.5, 2))
    assert set(chart_data(at, 1)["run"]) == {f0, sc}


# --- empty-store hints ------------------------------------------------------------------------------------


EVERY_PAGES_WHAT = [("app", "rationales_page", "rationales"), ("app", "failures_page", "wrong predictions"),
                    ("app", "jobs_page", "jobs"), ("app", "intersections_page", "evaluated runs"),
                    ("app", "slices_page", "teacher chains or predictions"),
                    ("tdg_pages", "chains_page", "teacher chains"), ("tdg_pages", "votes_page", "aggregated votes"),
                    ("tdg_pages", "training_page", "training metrics")]


def test_an_empty_stores_hint_says_to_fill_it(db: Store) -> None:
    for module, name, what in EVERY_PAGES_WHAT:
        assert [i.value for i in page(module, name).info] == [EMPTY.format(what=what)]


def test_the_hint_says_to_start_a_runner_while_jobs_wait_and_no_job_runs(db: Store) -> None:
    with transaction(db.engine()) as s:
        for _ in range(3):
            make.job(s, "sample", status="queued")
    hint = "No training metrics yet: 3 jobs are queued and none running; start one with `rplat runner` (the " \
           "Jobs page lists them)."
    assert [i.value for i in page("tdg_pages", "training_page").info] == [hint]
    for module, name, what in EVERY_PAGES_WHAT:
        if name != "jobs_page":  # the Jobs page lists the three
            assert [i.value for i in page(module, name).info] == [hint.replace("training metrics", what)]


def test_the_hint_says_to_wait_while_a_job_runs(db: Store) -> None:
    with transaction(db.engine()) as s:
        make.job(s, "sample", status="running")
        make.job(s, "sample", status="queued")
    con = analytics.connect(db.url)
    assert empty_hint(con, "evaluated runs") == (
        "No evaluated runs yet: 1 job is running and 1 job is queued; wait for them and reload (the Jobs page "
        "shows their progress).")
    con.close()


def test_the_hint_of_a_store_whose_jobs_ended_says_which_failed_and_what_to_enqueue(db: Store) -> None:
    with transaction(db.engine()) as s:
        make.job(s, "sample", status="failed")
        make.job(s, "sample")
    con = analytics.connect(db.url)
    assert empty_hint(con, "training metrics").startswith(
        "No training metrics in this store: its 2 jobs ended, 1 of them failed (the Jobs page says why) without "
        "writing any; enqueue the jobs that make them")
    con.close()
