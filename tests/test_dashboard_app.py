"""The Rationales, Failures, Intersections, Jobs and SQL pages (AppTest, in-process) and their queries."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apptests
import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from apptests import RUN_TIMEOUT
from dashboard_seed_tdg import seed_tdg
from sqlalchemy import select
from streamlit.testing.v1 import AppTest
from test_dashboard import DROPPED_RATIONALE, KEPT_RATIONALE, LEAK_RATIONALE, seed

from rplat import analytics
from rplat.dashboard import ALLOW_REVIEW, queries
from rplat.dashboard.common import REVIEW_OFF, literal
from rplat.errors import UserError
from rplat.models import Evaluation, Review
from rplat.stats import wilson
from rplat.store import transaction

import factories as make
from stores import MigratedTemplates, Store, make_store


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          _templates: MigratedTemplates) -> Iterator[tuple[Store, dict[str, int]]]:
    """One store per backend with both hand-known worlds (the RATIONALYST one, then the TDG one), only read."""
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param), templates=_templates):
        yield store, {**seed(store), **seed_tdg(store)}


def page(name: str) -> AppTest:
    return apptests.page("app", name)


def metrics(at: AppTest) -> dict[str, str]:
    assert not at.exception, [e.value for e in at.exception]
    return {m.label: m.value for m in at.metric}


def radio(at: AppTest, label: str) -> Any:
    return next(r for r in at.radio if r.label == label)


def chart_data(at: AppTest, n: int) -> pd.DataFrame:
    """The rows behind the page's n-th altair chart (Streamlit ships them as Arrow IPC streams)."""
    proto = at.get("vega_lite_chart")[n].proto
    return pd.concat([pa.ipc.open_stream(d.data.data).read_pandas() for d in proto.datasets], ignore_index=True)


def asc_runs(ids: dict[str, int]) -> list[str]:
    """The aggregate job's runs, as the Intersections page names and orders them (newest job, then by name)."""
    return [f"{m} / student / job {ids['aggregate']}" for m in ["asc-f0", "asc-f1", "asc-f2", "asc-f3", "greedy", "sc"]]


# --- Rationales -----------------------------------------------------------------------------------------


def test_rationales_show_overlap_and_leak_and_the_leak_filter_keeps_only_leaks(ids: dict[str, int]) -> None:
    at = page("rationales_page")
    assert metrics(at)["leaks"] == "1"
    shown = at.dataframe[0].value
    assert [(r.rationale, r.loss_delta, r.overlap, r.leak, r.kept) for r in shown.itertuples()] == [
        (LEAK_RATIONALE, 4.5, 1.0, True, False), (KEPT_RATIONALE, 1.25, 0.125, False, True),
        (DROPPED_RATIONALE, -0.375, 0.0, False, False)]
    radio(at, "leaks").set_value("leaks").run()
    assert at.dataframe[0].value["rationale"].tolist() == [LEAK_RATIONALE]
    radio(at, "leaks").set_value("no leaks").run()
    assert at.dataframe[0].value["rationale"].tolist() == [KEPT_RATIONALE, DROPPED_RATIONALE]


def test_the_loss_delta_histogram_puts_each_rationale_in_kept_dropped_or_leak(ids: dict[str, int]) -> None:
    data = chart_data(page("rationales_page"), 0)
    assert sorted(zip(data["group"], data["loss_delta"], strict=True)) == [
        ("dropped", -0.375), ("kept", 1.25), ("leak", 4.5)]


def rationale_id(at: AppTest, text: str) -> int:
    rows = at.dataframe[0].value
    return int(rows.loc[rows["rationale"] == text, "rationale_id"].iloc[0])


def test_rationales_page_has_no_review_form_without_allow_review(ids: dict[str, int],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_REVIEW, raising=False)
    at = page("rationales_page")
    assert not at.exception, [e.value for e in at.exception]
    assert REVIEW_OFF in [c.value for c in at.caption]
    assert [b.label for b in at.button] == [] and len(at.text_area) == 0 and len(at.text_input) == 0
    assert at.dataframe[0].value["kept_source"].unique().tolist() == ["machine"]


def test_a_rationale_review_from_the_page_drops_it_and_writes_one_review(db: Store,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seed(db)
    monkeypatch.setenv(ALLOW_REVIEW, "1")
    at = page("rationales_page")
    assert metrics(at)["kept"] == "1"
    kept = rationale_id(at, KEPT_RATIONALE)
    at.selectbox[0].set_value(kept).run()
    key = f"review-rationale-{kept}"
    assert at.radio(key=f"{key}-value").value == "keep"  # the decision in effect
    assert f"No review of rationale {kept} yet." in [c.value for c in at.caption]
    at.radio(key=f"{key}-value").set_value("drop")
    at.text_area(key=f"{key}-reason").input("it states the question, not a step")
    at.text_input(key=f"{key}-reviewer").input("ada")
    at.button(key=f"{key}-save").click().run()

    assert not at.error and not at.exception
    with transaction(db.engine()) as s:
        (row,) = s.scalars(select(Review)).all()
        assert (row.target_table, row.target_id, row.field, row.machine_value, row.new_value, row.reviewer) == (
            "rationales", kept, "kept", "true", "false", "ada")
    assert [m.value for m in at.success] == [
        literal(f"review #{row.id}: rationale {kept} kept true (machine) -> false, by ada.")]
    assert metrics(at)["kept"] == "0"
    shown_row = at.dataframe[0].value.set_index("rationale_id").loc[kept]
    assert (shown_row["kept"], shown_row["kept_source"]) == (False, "review")
    assert any("dropped by review (the threshold kept it)" in c.value for c in at.caption)
    history = at.dataframe[1].value
    assert history[["review_id", "reviewer", "new_value", "in_effect"]].values.tolist() == [
        [row.id, "ada", "false", True]]

    # the same decision again adds nothing, and says so
    at.button(key=f"{key}-save").click().run()
    assert at.success[0].value == literal(f"rationale {kept}: kept is already false (review #{row.id}); nothing "
                                          "added.")
    with transaction(db.engine()) as s:
        assert len(s.scalars(select(Review)).all()) == 1


# --- Failures and Jobs -------------------------------------------------------------------------------------


def test_failures_start_with_the_newest_run_and_say_when_no_solve_job_has_steps(ids: dict[str, int]) -> None:
    at = page("failures_page")
    assert at.selectbox[0].value == asc_runs(ids)[0]
    # asc-f0 misses m1 and m3; on m2 it ties 4 and 6 (gold 6) for half the credit
    assert (metrics(at)["problems answered wrongly"], metrics(at)["ties earning part of the credit"]) == ("2", "1")
    assert at.dataframe[0].value["prediction"].tolist() == ["41", "4 (tie of 2, credit 0.5)", "17"]
    assert "names no solve job" in at.info[0].value
    at.selectbox[0].set_value(f"greedy / tiny / job {ids['evaluate-greedy']}").run()
    assert metrics(at)["prediction"] == "41" and metrics(at)["gold"] == "42"
    assert at.markdown[-1].value == "chosen: The answer is 41\\."  # rendered: escaped Markdown


def test_jobs_count_every_status_and_filter_by_kind(ids: dict[str, int]) -> None:
    at = page("jobs_page")
    assert metrics(at)["succeeded"] == str(len(at.dataframe[0].value))
    at.multiselect[1].set_value(["aggregate"]).run()
    assert at.dataframe[0].value["job_id"].tolist() == [ids["aggregate"]]


# --- Intersections ---------------------------------------------------------------------------------------


def test_signatures_count_the_common_problems_each_exact_combination_of_runs_solves(
        duck: duckdb.DuckDBPyConnection, ids: dict[str, int]) -> None:
    greedy, sc = asc_runs(ids)[4], asc_runs(ids)[5]
    # greedy solves m0 and m1, sc only m0: m0 both (mask 0b11), m1 greedy alone (0b01), m2 and m3 neither.
    got = queries.signatures(duck, [greedy, sc])
    assert got[["mask", "problems", greedy, sc]].values.tolist() == [[0, 2, False, False], [1, 1, True, False],
                                                                     [3, 1, True, True]]
    assert got["combination"].tolist() == ["solved by none", f"solved only by {greedy}", "solved by all"]
    assert analytics.signature_answers(duck, [greedy, sc], 0, 10) == [
        (ids["problem2"], "m2", "math-test", "Prealgebra", "6", greedy, "4"),
        (ids["problem2"], "m2", "math-test", "Prealgebra", "6", sc, "4"),
        (ids["problem3"], "m3", "math-test", "Prealgebra", "18", greedy, "16"),
        (ids["problem3"], "m3", "math-test", "Prealgebra", "18", sc, "17")]
    assert analytics.signature_answers(duck, [sc, greedy], 0, 1) == [
        (ids["problem2"], "m2", "math-test", "Prealgebra", "6", sc, "4"),
        (ids["problem2"], "m2", "math-test", "Prealgebra", "6", greedy, "4")]


def test_signatures_of_runs_over_different_problems_are_empty(duck: duckdb.DuckDBPyConnection,
                                                             ids: dict[str, int]) -> None:
    assert queries.signatures(duck, [asc_runs(ids)[0], f"greedy / tiny / job {ids['evaluate-greedy']}"]).empty


def test_an_intersection_refuses_an_unknown_run_in_one_sentence(duck: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(UserError, match="there is no evaluated run 'nope / x / job 9'"):
        analytics.solved_signatures(duck, ["nope / x / job 9"])


def test_the_cache_takes_in_a_run_evaluated_after_the_first_query(db: Store) -> None:
    seed(db)
    con = analytics.connect(db.url)
    assert len(analytics.solved_runs(con)) == 2
    ids = seed_tdg(db)
    assert analytics.solved_runs(con)[:2] == [f"asc-f0 / student / job {ids['aggregate']}",
                                              f"asc-f1 / student / job {ids['aggregate']}"]
    assert len(analytics.solved_runs(con)) == 8
    con.close()


def test_the_cache_copies_an_evaluation_without_predictions_once(db: Store) -> None:
    seed(db)
    with transaction(db.engine()) as s:
        empty = make.job(s, "evaluate", attempts=1)
        s.add(Evaluation(job_id=empty.id, method="greedy", subject="all", n=0, n_correct=0, accuracy=0.0))
    con = analytics.connect(db.url)
    assert len(analytics.solved_runs(con)) == 2
    # Marked as copied, so the next refresh does not read predictions again looking for its rows.
    assert empty.id in [r[0] for r in con.execute(f"SELECT job_id FROM {analytics.CACHE}.jobs").fetchall()]
    con.close()


def test_intersections_page_draws_the_upset_of_the_newest_runs_and_lists_a_combinations_problems(
        ids: dict[str, int]) -> None:
    at = page("intersections_page")
    f0, f1, f2, f3 = asc_runs(ids)[:4]
    assert at.multiselect[0].value == [f0, f1, f2, f3]
    # Solved: f0 {m0}, f1 and f2 {m0, m2}, f3 {m0, m1, m2}; nobody solves m3.
    assert metrics(at) == {"common problems": "4", "solved by all": "1", "solved by none": "1"}
    upset = chart_data(at, 1)  # the first chart is the accuracy per run; this one, bars and matrix
    bars = upset.dropna(subset=["problems"])
    assert sorted(zip(bars["combination"], bars["problems"], strict=True)) == [
        ("solved by all", 1), ("solved by none", 1), (f"solved only by {f1}, {f2}, {f3}", 1),
        (f"solved only by {f3}", 1)]
    members = upset.dropna(subset=["run"]).drop_duplicates()  # the dots' rows, and the links' (members only)
    assert sorted(members.loc[members["member"].astype(bool)].query("combination == 'solved by all'")["run"]) == [
        f0, f1, f2, f3]
    at.selectbox[0].set_value(0b1110).run()
    problems = at.dataframe[1].value  # after the accuracy per run, before the baseline's tables
    assert problems[["problem", "gold", f0, f1, f2, f3]].values.tolist() == [["m2", "6", "4", "6", "6", "6"]]


def test_intersections_page_follows_the_chosen_runs(ids: dict[str, int]) -> None:
    at = page("intersections_page")
    greedy, sc = asc_runs(ids)[4], asc_runs(ids)[5]
    at.multiselect[0].set_value([greedy, sc]).run()
    assert metrics(at) == {"common problems": "4", "solved by all": "1", "solved by none": "2"}
    at.selectbox[0].set_value(0b01).run()
    assert at.dataframe[1].value[["problem", greedy, sc]].values.tolist() == [["m1", "42", "41"]]


def test_accuracy_per_run_carries_its_wilson_interval(duck: duckdb.DuckDBPyConnection, ids: dict[str, int]) -> None:
    rows = queries.accuracies(duck).set_index("run")
    f3 = rows.loc[asc_runs(ids)[3]]
    assert (f3["n"], f3["n_correct"], f3["accuracy"]) == (4, 3.0, 0.75)
    assert (f3["ci_low"], f3["ci_high"]) == pytest.approx(wilson(3, 4))
    greedy = rows.loc[f"greedy / tiny / job {ids['evaluate-greedy']}"]
    assert (greedy["ci_low"], greedy["ci_high"]) == pytest.approx(wilson(5, 7))


# --- SQL ------------------------------------------------------------------------------------------------


def test_sql_page_runs_a_query_and_lists_every_view(ids: dict[str, int]) -> None:
    at = page("sql_page")
    assert [e.label.split(" (")[0] for e in at.expander] == list(analytics.VIEWS)
    at.text_area[0].set_value("SELECT problem FROM solved_sets WHERE method = 'asc-f3' ORDER BY problem").run()
    at.button[0].click().run()
    assert not at.error
    assert at.dataframe[0].value["problem"].tolist() == ["m0", "m1", "m2"]


def test_sql_page_refuses_a_write_with_the_sentence_of_rplat_sql(ids: dict[str, int],
                                                                 duck: duckdb.DuckDBPyConnection) -> None:
    write = "DELETE FROM store.jobs"
    with pytest.raises(UserError) as refused:
        analytics.run_query(duck, write)
    at = page("sql_page")
    at.text_area[0].set_value(write).run()
    at.button[0].click().run()
    assert [e.value for e in at.error] == [str(refused.value)]
    assert len(at.dataframe) == len(analytics.VIEWS)  # the views' columns, no result


def test_intersections_page_shows_only_the_largest_combinations(ids: dict[str, int],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from rplat.dashboard import app

    monkeypatch.setattr(app, "SHOWN_COMBINATIONS", 2)
    at = page("intersections_page")
    assert "the 2 largest of 4 combinations" in [c.value for c in at.caption]
    assert at.selectbox[0].options == ["solved by none (1 problem)", f"solved only by {asc_runs(ids)[3]} (1 problem)"]
    assert chart_data(at, 1)["combination"].drop_duplicates().tolist() == [
        "solved by none", f"solved only by {asc_runs(ids)[3]}"]


def test_the_app_script_shows_nothing_of_its_own_above_a_pages_title(ids: dict[str, int]) -> None:
    from rplat.dashboard import app

    at = AppTest.from_file(app.__file__, default_timeout=RUN_TIMEOUT).run()
    assert not at.exception
    # Streamlit's magic would print any bare string of the script (an attribute docstring, say) before the page.
    first = next(e for e in at.main if type(e).__name__ != "SpecialBlock")
    assert (type(first).__name__, first.value) == ("Title", "Rationales")
