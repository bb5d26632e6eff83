"""The Chains, Votes and Training pages (AppTest, in-process) and their queries, on the hand-known TDG world."""

from __future__ import annotations

from collections.abc import Iterator

import apptests
import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from dashboard_seed_tdg import EXPERIMENT, seed_tdg
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from rplat import asc
from rplat.dashboard import ALLOW_REVIEW
from rplat.dashboard import tdg_queries as queries
from rplat.dashboard.common import EMPTY, REVIEW_OFF, literal
from rplat.dashboard.render import to_markdown
from rplat.models import Review
from rplat.stats import wilson
from rplat.store import transaction

from stores import MigratedTemplates, Store, make_store

ASC = ["f1", "f2", "f3"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          _templates: MigratedTemplates) -> Iterator[tuple[Store, dict[str, int]]]:
    """One seeded store per backend, shared by the tests (they only read it)."""
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param), templates=_templates):
        yield store, seed_tdg(store)


def page(name: str) -> AppTest:
    return apptests.page("tdg_pages", name)


def shown(at: AppTest) -> list[str]:
    """Everything the page says in text, info boxes and markdown, in order."""
    return [e.value for e in [*at.info, *at.markdown, *at.text]]


def metrics(at: AppTest) -> dict[str, str]:
    assert not at.exception, [e.value for e in at.exception]
    return {m.label: m.value for m in at.metric}


def chart_data(at: AppTest, n: int) -> pd.DataFrame:
    """The rows behind the page's n-th altair chart (Streamlit ships them as Arrow IPC streams)."""
    proto = at.get("vega_lite_chart")[n].proto
    return pd.concat([pa.ipc.open_stream(d.data.data).read_pandas() for d in proto.datasets], ignore_index=True)


# --- queries ------------------------------------------------------------------------------------------


def test_chain_counts_follow_every_filter(duck: duckdb.DuckDBPyConnection) -> None:
    assert queries.chain_counts(duck) == {"chains": 10, "pos": 4, "neg": 6, "problems": 4,
                                          "problems_with_positive": 3}
    assert queries.chain_counts(duck, teachers=["gpt-3.5"]) == {"chains": 8, "pos": 2, "neg": 6, "problems": 4,
                                                                 "problems_with_positive": 2}
    assert queries.chain_counts(duck, subjects=["Prealgebra"], label="pos") == {
        "chains": 2, "pos": 2, "neg": 0, "problems": 2, "problems_with_positive": 2}
    assert queries.chain_counts(duck, levels=["Level 1"], label="neg") == {
        "chains": 2, "pos": 0, "neg": 2, "problems": 2, "problems_with_positive": 0}


def test_labeler_disagreement_chooses_problems_and_shows_all_their_chains_marked(
        duck: duckdb.DuckDBPyConnection) -> None:
    rows = queries.chains(duck, disagree_only=True)
    # m1 and m2 each have one unboxed right answer (the labelers disagree on it) beside a chain they agree on
    assert [(r.problem, r.teacher, r.sample_idx, r.label, r.extracted_answer, r.gold, r.hendrycks_correct,
             r.math_verify_correct, r.labelers_disagree) for r in rows.itertuples()] == [
        ("m1", "gpt-3.5", 0, "neg", "42", "42", False, True, True),
        ("m1", "gpt-3.5", 1, "neg", "48", "42", False, False, False),
        ("m2", "gpt-3.5", 0, "pos", "6", "6", True, True, False),
        ("m2", "gpt-3.5", 1, "neg", "6", "6", False, True, True)]
    assert queries.chain_texts(duck, rows["chain_id"].tolist()) == dict(zip(
        rows["chain_id"], ["7 * 6 = 42. The answer is 42.", "7 * 6 = 48, so \\boxed{48}.",
                           "10 - 4 = 6, so \\boxed{6}.", "10 - 4 = 6\n#### 6"], strict=True))
    assert queries.chain_counts(duck, disagree_only=True) == {"chains": 4, "pos": 1, "neg": 3, "problems": 2,
                                                              "problems_with_positive": 1}
    # the label then chooses among those problems' chains
    assert queries.chains(duck, disagree_only=True, label="pos")["chain_id"].tolist() == [rows["chain_id"][2]]


def test_votes_keep_the_problems_where_asc_and_sc_disagree_or_every_method_failed(
        duck: duckdb.DuckDBPyConnection, ids: dict[str, int]) -> None:
    job = ids["aggregate"]
    assert queries.votes(duck, job)["problem"].unique().tolist() == ["m0", "m1", "m2", "m3"]
    # m1: f3 says 42 where SC says 41; m2: SC ties 4 and 6, the ASC votes name 6; m3: every vote says 17.
    assert queries.votes(duck, job, disagree_only=True)["problem"].unique().tolist() == ["m1", "m2"]
    # m2's SC tie earns half a credit, so only m3 fails under every method.
    assert queries.votes(duck, job, all_failed_only=True)["problem"].unique().tolist() == ["m3"]
    assert queries.votes(duck, job, disagree_only=True, all_failed_only=True).empty


def test_votes_wide_gives_each_method_its_answer_and_margin_per_problem(duck: duckdb.DuckDBPyConnection,
                                                                         ids: dict[str, int]) -> None:
    wide = queries.votes_wide(queries.votes(duck, ids["aggregate"]))
    assert wide.columns.tolist() == [
        "problem_id", "problem", "question", "subject", "gold", "greedy", "greedy margin", "sc", "sc margin", "asc-f0",
        "asc-f0 margin", "asc-f1", "asc-f1 margin", "asc-f2", "asc-f2 margin", "asc-f3", "asc-f3 margin"]
    m1 = wide.set_index("problem").loc["m1"]
    assert (m1["greedy"], m1["sc"], m1["sc margin"], m1["asc-f1"], m1["asc-f1 margin"], m1["asc-f3"],
            m1["asc-f3 margin"]) == ("42 ✓", "41", 1.0, "41 (tie of 2: 41, 42; credit 0.5)", 0.0, "42 ✓", 0.5)
    # a tie whose answers its job did not record shows its size alone
    assert wide.set_index("problem").loc["m3", "asc-f3"] == "17 (tie of 2, credit 0)"


def test_run_accuracies_carry_the_wilson_interval_of_the_stored_credit(duck: duckdb.DuckDBPyConnection,
                                                                       ids: dict[str, int]) -> None:
    rows = queries.run_accuracies(duck, ids["aggregate"])
    assert [(r.method, r.n, r.n_correct, r.accuracy) for r in rows.itertuples()] == [
        ("greedy", 4, 2.0, 0.5), ("sc", 4, 1.5, 0.375), ("asc-f0", 4, 1.5, 0.375), ("asc-f1", 4, 2.5, 0.625),
        ("asc-f2", 4, 2.0, 0.5), ("asc-f3", 4, 3.0, 0.75)]
    sc = rows.set_index("method").loc["sc"]
    assert (sc["ci_low"], sc["ci_high"]) == pytest.approx(wilson(1.5, 4))
    assert sc["ci_low"] < 0.375 < sc["ci_high"]


def test_asc_curve_at_all_samples_is_the_full_votes_accuracy_and_at_one_the_same_for_every_method(
        duck: duckdb.DuckDBPyConnection, ids: dict[str, int]) -> None:
    curve = queries.asc_curve(duck, ids["sample"], ids["score-samples"], ASC, repeats=5, seed=3)
    assert curve["method"].unique().tolist() == ["sc", "asc-f1", "asc-f2", "asc-f3"]
    assert curve["k"].unique().tolist() == [1, 2, 3, 4]
    full = curve[curve["k"] == 4].set_index("method")
    # the stored votes' credits: SC 1 + 0 + 1/2 + 0, f1 1 + 1/2 + 1 + 0, f2 1 + 0 + 1 + 0, f3 1 + 1 + 1 + 0
    assert full["accuracy"].to_dict() == pytest.approx({"sc": 0.375, "asc-f1": 0.625, "asc-f2": 0.5,
                                                        "asc-f3": 0.75})
    assert (full.loc["asc-f3", "ci_low"], full.loc["asc-f3", "ci_high"]) == pytest.approx(wilson(3.0, 4))
    # one sample wins its vote whatever its weight, and every method draws the same subsets
    assert curve[curve["k"] == 1]["accuracy"].nunique() == 1


def test_asc_curve_shows_the_same_numbers_as_rplat_report_asc(world: tuple[Store, dict[str, int]],
                                                               duck: duckdb.DuckDBPyConnection) -> None:
    store, ids = world
    report = pd.DataFrame(asc.asc_curve(store.engine(), EXPERIMENT))
    report = report[report["method"] != "asc-f0"][["method", "k", "accuracy", "n", "ci_low", "ci_high"]]
    ours = queries.asc_curve(duck, ids["sample"], ids["score-samples"], ASC)
    pd.testing.assert_frame_equal(ours, report.reset_index(drop=True), check_dtype=False)


def test_asc_curve_without_scores_is_sc_alone(duck: duckdb.DuckDBPyConnection, ids: dict[str, int]) -> None:
    curve = queries.asc_curve(duck, ids["sample"], None, ASC, repeats=2)
    assert curve["method"].unique().tolist() == ["sc"]


def test_samples_of_a_problem_carry_their_answers_and_ranker_scores(duck: duckdb.DuckDBPyConnection,
                                                                    ids: dict[str, int]) -> None:
    rows = queries.samples_of(duck, ids["sample"], ids["score-samples"], ids["problem1"])
    assert [(r.sample_idx, None if pd.isna(r.extracted_answer) else r.extracted_answer, r.correct, r.score)
            for r in rows.itertuples()] == [(0, "41", False, 0.125), (1, "41", False, 0.25), (2, "42", True, 0.875),
                                            (3, None, False, 0.5)]


def test_training_curves_hold_loss_lr_and_every_numeric_extra_key(duck: duckdb.DuckDBPyConnection,
                                                                  ids: dict[str, int]) -> None:
    curves = queries.training_curves(duck, [ids["train-neg"]])
    assert sorted(curves["metric"].unique()) == ["eval_loss", "grad_norm", "loss", "lr"]
    assert curves["job"].unique().tolist() == [f"train-neg job {ids['train-neg']} (neg-dash)"]
    by_metric = {m: list(zip(g["step"], g["value"], strict=True)) for m, g in curves.groupby("metric")}
    assert by_metric["loss"] == [(1, 2.0), (2, 1.5), (3, 1.25), (4, 1.0)]
    assert by_metric["eval_loss"] == [(2, 2.5), (4, 2.0)]
    assert queries.training_curves(duck, [])["metric"].tolist() == []


# --- the pages -----------------------------------------------------------------------------------------


def test_chains_page_counts_and_lists_the_chains_and_narrows_to_labeler_disagreements(ids: dict[str, int]) -> None:
    at = page("chains_page")
    assert metrics(at) == {"positive chains": "4", "negative chains": "6", "problems": "4",
                           "problems with a positive": "3"}
    assert len(at.dataframe[0].value) == 10
    # the first problem is open: its question and its three chains in full, rendered (\boxed as math)
    assert "What is 2 \\+ 3\\?" in shown(at) and "2 \\+ 3 \\= 6\\, so $\\boxed{6}$\\." in shown(at)

    at.checkbox[0].check().run()
    assert metrics(at) == {"positive chains": "1", "negative chains": "3", "problems": "2",
                           "problems with a positive": "1"}
    shown_rows = at.dataframe[0].value
    assert shown_rows["chain_id"].tolist() == [3, 4, 5, 6]
    assert shown_rows["labelers_disagree"].tolist() == [True, False, False, True]
    at.selectbox[1].set_value(ids["problem2"]).run()  # [0] is the rows per page
    assert to_markdown("10 - 4 = 6\n#### 6") in shown(at)
    assert to_markdown("7 * 6 = 42. The answer is 42.") not in shown(at)


def test_votes_page_shows_sc_against_asc_per_problem_with_samples_margins_and_the_curve(ids: dict[str, int]) -> None:
    at = page("votes_page")
    assert metrics(at) == {"problems shown": "4"}
    accuracy, _, _, wide, votes, samples, curve = (frame.value for frame in at.dataframe)  # _: the baseline's
    assert accuracy["accuracy"].tolist() == [0.5, 0.375, 0.375, 0.625, 0.5, 0.75]
    assert wide["asc-f3"].tolist() == ["5 ✓", "42 ✓", "6 ✓", "17 (tie of 2, credit 0)"]
    assert votes["method"].tolist() == ["greedy", "sc", "asc-f0", "asc-f1", "asc-f2", "asc-f3"]  # of m0
    assert samples["score"].tolist() == [0.875, 0.75, 0.125, 0.25]
    assert curve[curve["k"] == 4].set_index("method")["accuracy"].to_dict() == pytest.approx(
        {"sc": 0.375, "asc-f1": 0.625, "asc-f2": 0.5, "asc-f3": 0.75})
    margins = chart_data(at, 2)  # after the accuracy and the difference from the baseline
    assert sorted(margins.loc[margins["method"] == "sc", "margin"]) == [0.0, 1.0, 1.0, 1.0]

    at.checkbox[1].check().run()  # only problems every method failed
    assert metrics(at) == {"problems shown": "1"}
    assert at.dataframe[3].value["problem"].tolist() == ["m3"]
    assert at.dataframe[5].value["extracted_answer"].tolist()[:3] == ["17", "19", "17"]


def test_training_page_overlays_the_chosen_jobs_and_draws_nat_w_neg_per_layer(ids: dict[str, int]) -> None:
    at = page("training_page")
    assert not at.exception, [e.value for e in at.exception]
    assert at.multiselect[0].value == [ids["train-nat"], ids["train-neg"]]  # every job of the experiment
    assert at.multiselect[1].value == ["loss", "eval_loss"]
    assert at.multiselect[1].options == ["loss", "eval_loss", "grad_norm", "lr"]
    loss = chart_data(at, 0)
    assert {job: g["value"].tolist() for job, g in loss.groupby("job")} == {
        f"train-nat job {ids['train-nat']} (nat-dash)": [3.0, 2.5, 2.0, 1.75],
        f"train-neg job {ids['train-neg']} (neg-dash)": [2.0, 1.5, 1.25, 1.0]}
    alpha = chart_data(at, 2)
    assert alpha.loc[alpha["step"] == 4, ["layer", "proj", "mean_w_neg"]].values.tolist() == [
        [0, "q_proj", -0.375], [0, "v_proj", -0.25], [1, "q_proj", 0.25], [1, "v_proj", 0.375]]
    at.selectbox[2].set_value("v_proj").run()  # after the experiment and the train-nat job
    assert chart_data(at, 2)["mean_w_neg"].tolist() == [-0.125, 0.25, -0.25, 0.375]


def test_every_tdg_page_says_so_when_the_store_is_empty(db: Store) -> None:
    for name, what in [("chains_page", "teacher chains"), ("votes_page", "aggregated votes"),
                       ("training_page", "training metrics")]:
        at = page(name)
        assert not at.exception, [e.value for e in at.exception]
        assert [i.value for i in at.info] == [EMPTY.format(what=what)]


# --- reviews -------------------------------------------------------------------------------------------


def chain_id(at: AppTest, problem: str, teacher: str, sample_idx: int) -> int:
    rows = at.dataframe[0].value
    found = rows[(rows["problem"] == problem) & (rows["teacher"] == teacher) & (rows["sample_idx"] == sample_idx)]
    return int(found["chain_id"].iloc[0])


def review_chain(at: AppTest, chain: int, label: str, reason: str, reviewer: str | None = None) -> AppTest:
    """Fill in the Chains page's review form of `chain` (chosen in the chain box) and save it."""
    at.selectbox[2].set_value(chain).run()  # after the rows per page and the problem
    key = f"review-chain-{chain}"
    at.radio(key=f"{key}-value").set_value(label)
    at.text_area(key=f"{key}-reason").input(reason)
    if reviewer is not None:
        at.text_input(key=f"{key}-reviewer").input(reviewer)
    return at.button(key=f"{key}-save").click().run()


def test_chains_page_has_no_review_form_without_allow_review_whatever_the_url_says(
        ids: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_REVIEW, raising=False)
    at = AppTest.from_string("from rplat.dashboard.tdg_pages import chains_page\nchains_page()",
                             default_timeout=apptests.RUN_TIMEOUT)
    at.query_params["allow_review"] = "1"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert REVIEW_OFF in [c.value for c in at.caption]
    assert [b.label for b in at.button] == [] and len(at.text_area) == 0
    assert [t.label for t in at.text_input] == ["search problems"]
    assert at.dataframe[0].value["label_source"].unique().tolist() == ["machine"]
    assert f"No review of chain {at.selectbox[2].value} yet." in [c.value for c in at.caption]


def test_a_chain_review_from_the_page_changes_the_shown_label_and_writes_one_review(
        db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_tdg(db)
    monkeypatch.setenv(ALLOW_REVIEW, "1")
    monkeypatch.setenv("RPLAT_REVIEWER", "grace")
    at = page("chains_page")
    assert metrics(at)["positive chains"] == "4"
    assert REVIEW_OFF not in [c.value for c in at.caption]
    wrong = chain_id(at, "m0", "gpt-3.5", 1)  # "2 + 3 = 6", neg: a person relabels it (the test needs any change)
    at.selectbox[2].set_value(wrong).run()
    assert at.text_input(key=f"review-chain-{wrong}-reviewer").value == "grace"  # the default reviewer
    assert at.radio(key=f"review-chain-{wrong}-value").value == "neg"  # the label in effect

    review_chain(at, wrong, "pos", "   ")
    assert [e.value for e in at.error] == ["a review needs its reason (the audit trail says why a value was "
                                           "changed); write it in the reason box."]
    with transaction(db.engine()) as s:
        assert s.scalars(select(Review)).all() == []

    review_chain(at, wrong, "pos", "the grader accepts 6 here", reviewer="ada")
    assert not at.error
    with transaction(db.engine()) as s:
        (row,) = s.scalars(select(Review)).all()
        assert (row.target_table, row.target_id, row.field, row.machine_value, row.new_value, row.reviewer,
                row.reason) == ("teacher_chains", wrong, "label", "neg", "pos", "ada", "the grader accepts 6 here")
    assert [m.value for m in at.success] == [literal(f"review #{row.id}: chain {wrong} label neg (machine) -> pos, "
                                                     "by ada.")]
    assert metrics(at)["positive chains"] == "5"
    shown_row = at.dataframe[0].value.set_index("chain_id").loc[wrong]
    assert (shown_row["label"], shown_row["machine_label"], shown_row["label_source"]) == ("pos", "neg", "review")
    assert any(f"chain {wrong}, gpt-3.5 sample 1: pos (review; the labeler said neg)" in m for m in shown(at))
    history = at.dataframe[1].value
    assert history[["review_id", "reviewer", "machine_value", "new_value", "reason", "in_effect"]].values.tolist() == [
        [row.id, "ada", "neg", "pos", "the grader accepts 6 here", True]]
