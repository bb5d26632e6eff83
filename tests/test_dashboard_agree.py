"""The pages agree: Failures, Votes and Intersections report each run's accuracy from the same credits (a tie's share
counts), and the baseline comparisons on Intersections and Votes are `rplat report compare`'s numbers (AppTest)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apptests
import duckdb
import pytest
from dashboard_seed_tdg import RAN, seed_tdg
from streamlit.testing.v1 import AppTest
from test_dashboard import seed

from rplat.dashboard import queries, tdg_queries
from rplat.models import Experiment, Model, Problem
from rplat.reports import compare_report
from rplat.stats import compare_credits
from rplat.store import transaction

import factories as make
from stores import MigratedTemplates, Store, make_store

# A second aggregate job over the TDG world's problems m0..m3 (gold 5, 42, 6, 18): per method (answer, tie size,
# credit). SC ties 6 and 4 on m2 and names 6 first, for half the credit; asc-f1 names 6 alone, for all of it: the
# same answer, another credit. On m1 asc-f1 says 42 where SC said 41; m3 is a tie without a right answer.
RESOLVING: dict[str, list[tuple[str, int, float]]] = {
    "sc": [("5", 1, 1.0), ("41", 1, 0.0), ("6", 2, 0.5), ("17", 2, 0.0)],
    "asc-f1": [("5", 1, 1.0), ("42", 1, 1.0), ("6", 1, 1.0), ("17", 1, 0.0)],
}


def seed_resolving(store: Store, tdg: dict[str, int]) -> int:
    """The aggregate job of RESOLVING, on the TDG world's sample and score-samples jobs; its id."""
    with transaction(store.engine()) as s:
        experiment = s.get(Experiment, tdg["experiment"])
        student = s.get(Model, tdg["student"])
        job = make.job(s, "aggregate", {"sample_job": tdg["sample"], "score_job": tdg["score-samples"]},
                       experiment=experiment, **RAN)
        problems = [s.get(Problem, tdg[f"problem{k}"]) for k in range(4)]
        for method, voted in RESOLVING.items():
            for problem, (answer, tie, credit) in zip(problems, voted, strict=True):
                make.prediction(s, job, problem, student, method, answer, credit, vote_mass=2.0, tie_size=tie,
                                margin=0.0 if tie > 1 else 1.0)
            make.evaluations(s, job, student, method,
                             {p: credit for p, (_, _, credit) in zip(problems, voted, strict=True)})
        return job.id


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          _templates: MigratedTemplates) -> Iterator[tuple[Store, dict[str, int]]]:
    """One store per backend: the RATIONALYST world, the TDG world and the resolving aggregate job; only read."""
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param), templates=_templates):
        ids = {**seed(store), **seed_tdg(store)}
        yield store, {**ids, "resolving": seed_resolving(store, ids)}


def run_name(method: str, job: int, model: str = "student") -> str:
    return f"{method} / {model} / job {job}"


def checked(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def labelled(elements: Any, label: str) -> Any:
    return next(e for e in elements if e.label == label)


def frame_with(at: AppTest, column: str) -> Any:
    """The page's first table with that column."""
    return next(f.value for f in at.dataframe if column in f.value.columns)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in checked(at).metric}


# --- the pages agree -----------------------------------------------------------------------------------


def test_failures_votes_and_intersections_report_the_same_accuracy_for_every_run(ids: dict[str, int]) -> None:
    intersections = frame_with(checked(apptests.page("app", "intersections_page")), "n_correct")
    from_intersections = {r.run: (int(r.n), float(r.n_correct), float(r.accuracy)) for r in intersections.itertuples()}
    assert len(from_intersections) == 10  # greedy and implicit; 6 methods of one aggregate job and 2 of the other
    # SC's tie on m2 counts half a problem everywhere
    assert from_intersections[run_name("sc", ids["aggregate"])] == (4, 1.5, 0.375)
    assert from_intersections[run_name("sc", ids["resolving"])] == (4, 1.5, 0.375)

    failures = checked(apptests.page("app", "failures_page"))
    assert sorted(failures.selectbox[0].options) == sorted(from_intersections)  # every run misses some problem
    from_failures = {}
    for run in from_intersections:
        failures.selectbox[0].set_value(run).run()
        shown = metrics(failures)
        credit, of = shown["credit earned"].split(" of ")
        from_failures[run] = (int(of), float(credit), float(shown["accuracy"]))
        assert float(shown["accuracy"]) == pytest.approx(from_intersections[run][2], abs=5e-5)
    assert {run: (n, credit) for run, (n, credit, _) in from_failures.items()} == {
        run: (n, credit) for run, (n, credit, _) in from_intersections.items()}

    votes = checked(apptests.page("tdg_pages", "votes_page"))
    from_votes = {}
    for job in (ids["aggregate"], ids["resolving"]):
        votes.selectbox[0].set_value(job).run()
        accuracy = frame_with(checked(votes), "n_correct")
        assert labelled(votes.selectbox, "baseline run").value == run_name("sc", job)  # follows the job
        from_votes.update({run_name(r.method, job): (int(r.n), float(r.n_correct), float(r.accuracy))
                           for r in accuracy.itertuples()})
        # against this job's SC, over all four problems, each method's accuracy is the same once more
        compared = frame_with(votes, "McNemar p").set_index("run")
        assert compared["common problems"].tolist() == [4] * len(compared)
        for run, row in compared.iterrows():
            assert row["accuracy"] == pytest.approx(from_intersections[run][2])
    assert from_votes == {run: value for run, value in from_intersections.items() if run in from_votes}
    assert len(from_votes) == 8


# --- Failures: credit, not argmax ------------------------------------------------------------------------


def test_failures_count_a_tie_that_earned_half_credit_as_a_tie_not_as_wrong(ids: dict[str, int]) -> None:
    at = checked(apptests.page("app", "failures_page"))
    at.selectbox[0].set_value(run_name("sc", ids["resolving"])).run()
    summary = ["accuracy", "credit earned", "problems answered wrongly", "ties earning part of the credit"]
    assert [metrics(at)[label] for label in summary] == ["0.3750", "1.5 of 4", "2", "1"]
    rows = frame_with(at, "prediction")
    assert rows[["problem", "prediction", "credit", "tie_size", "gold"]].values.tolist() == [
        ["m1", "41", 0.0, 1, "42"], ["m2", "6 (tie of 2, credit 0.5)", 0.5, 2, "6"],
        ["m3", "17 (tie of 2, credit 0)", 0.0, 2, "18"]]
    labelled(at.radio, "show").set_value("answered wrongly (credit 0)").run()
    assert frame_with(at, "prediction")["problem"].tolist() == ["m1", "m3"]
    labelled(at.radio, "show").set_value("ties earning part of the credit").run()
    assert frame_with(at, "prediction")["problem"].tolist() == ["m2"]
    assert metrics(at)["prediction"] == "6 (tie of 2, credit 0.5)"


def test_a_run_earning_full_credit_on_every_tie_is_not_among_the_failures(duck: duckdb.DuckDBPyConnection,
                                                                         ids: dict[str, int]) -> None:
    assert queries.failures(duck, run_name("asc-f1", ids["resolving"]))["problem"].tolist() == ["m3"]
    assert queries.run_credit(duck, run_name("asc-f1", ids["resolving"])) == {
        "problems": 4, "credit": 3.0, "wrong": 1, "partial": 0}


# --- Votes: tie marks, disagreements in credit -----------------------------------------------------------


def test_answer_shown_marks_full_credit_and_every_tie() -> None:
    assert queries.answer_shown("5", 1, 1.0) == "5 ✓"
    assert queries.answer_shown("41", 1, 0.0) == "41"
    assert queries.answer_shown("6", 2, 0.5) == "6 (tie of 2, credit 0.5)"
    assert queries.answer_shown("6", 3, 1 / 3) == "6 (tie of 3, credit 0.333)"
    assert queries.answer_shown(None, 1, 0.0) == "-"


def test_votes_count_a_difference_in_credit_as_a_disagreement(duck: duckdb.DuckDBPyConnection,
                                                              ids: dict[str, int]) -> None:
    # m1: another answer; m2: the same answer "6", half the credit under SC and all of it under asc-f1
    assert tdg_queries.votes(duck, ids["resolving"], disagree_only=True)["problem"].unique().tolist() == ["m1", "m2"]


def test_votes_page_marks_a_tied_answer_beside_gold(ids: dict[str, int]) -> None:
    at = checked(apptests.page("tdg_pages", "votes_page"))
    assert at.selectbox[0].value == ids["resolving"]  # the newest aggregate job
    wide = frame_with(at, "sc margin").set_index("problem")
    assert wide.loc["m2", ["gold", "sc", "asc-f1"]].tolist() == ["6", "6 (tie of 2, credit 0.5)", "6 ✓"]
    labelled(at.checkbox, "only problems where ASC and SC disagree (answer or credit)").check().run()
    assert metrics(at)["problems shown"] == "2"
    assert frame_with(at, "sc margin")["problem"].tolist() == ["m1", "m2"]


# --- against a baseline ---------------------------------------------------------------------------------


def test_the_comparison_with_a_baseline_is_rplat_report_compares(world: tuple[Store, dict[str, int]],
                                                                 duck: duckdb.DuckDBPyConnection) -> None:
    store, ids = world
    job = ids["resolving"]
    rows = queries.baseline_comparison(duck, [run_name("asc-f1", job)], run_name("sc", job)).iloc[0]
    report = compare_report(store.engine(), f"{job}:asc-f1", f"{job}:sc")
    assert (rows["common problems"], rows["accuracy"], rows["baseline accuracy"], rows["difference"],
            rows["ci_low"], rows["ci_high"], rows["McNemar p"], rows["only run solves"],
            rows["only baseline solves"]) == (
        report["n"], report["a"]["accuracy"], report["b"]["accuracy"], report["difference"], report["ci_low"],
        report["ci_high"], report["p_mcnemar"], report["only_a"], report["only_b"])
    assert (report["difference"], report["only_a"], report["p_mcnemar"]) == (0.375, 1, 1.0)  # m2's 0.5 -> 1 is no
    # discordant pair for McNemar, but it is a win: m1 and m2 won, m0 and m3 the same
    assert (rows["wins"], rows["losses"], rows["ties"]) == (2, 0, 2)
    assert rows["same numbers"] == f"rplat report compare {job}:asc-f1 {job}:sc"


def test_compare_credits_pairs_the_common_problems_and_counts_wins_losses_and_ties() -> None:
    c = compare_credits({1: 1.0, 2: 0.5, 3: 0.0, 4: 1.0}, {2: 1.0, 3: 0.0, 4: 0.5, 5: 1.0}, resamples=200)
    assert (c.n, c.credit_a, c.credit_b, c.wins, c.losses, c.ties) == (3, 1.5, 1.5, 1, 1, 1)
    assert compare_credits({1: 1.0}, {2: 1.0}).n == 0


def test_flips_list_every_change_of_credit_with_the_tie_resolutions(duck: duckdb.DuckDBPyConnection,
                                                                    ids: dict[str, int]) -> None:
    job = ids["resolving"]
    flipped = queries.flips(duck, run_name("asc-f1", job), run_name("sc", job))
    assert flipped[["problem", "gold", "baseline answer", "answer", "change", "flip"]].values.tolist() == [
        ["m1", "42", "41", "42 ✓", "0 → 1", "solved"],
        ["m2", "6", "6 (tie of 2, credit 0.5)", "6 ✓", "0.5 → 1", "tie resolved right"]]
    back = queries.flips(duck, run_name("sc", job), run_name("asc-f1", job))
    assert back[["problem", "change", "flip"]].values.tolist() == [["m1", "1 → 0", "lost"],
                                                                   ["m2", "1 → 0.5", "into a tie"]]


def test_flip_kinds_name_what_happened_to_the_credit() -> None:
    assert [queries.flip_kind(b, a) for b, a in [(0.0, 1.0), (1.0, 0.0), (0.5, 1.0), (0.5, 0.0), (1.0, 0.5),
                                                 (0.5, 1 / 3)]] == [
        "solved", "lost", "tie resolved right", "tie resolved wrong", "into a tie", "tie, other share"]


def test_votes_page_compares_every_method_with_the_runs_sc_and_lists_the_flips(ids: dict[str, int]) -> None:
    at = checked(apptests.page("tdg_pages", "votes_page"))
    job = ids["resolving"]
    picker = labelled(at.selectbox, "baseline run")
    assert picker.value == run_name("sc", job)
    compared = frame_with(at, "McNemar p")
    assert compared["run"].tolist() == [run_name("asc-f1", job)]
    row = compared.iloc[0]
    assert (row["common problems"], row["difference"], row["McNemar p"], row["wins"], row["losses"],
            row["ties"]) == (4, 0.375, 1.0, 2, 0, 2)
    low, high = row["ci_low"], row["ci_high"]
    assert row["95% interval"] == f"[{low:+.3f}, {high:+.3f}]" and low <= 0.375 <= high
    flipped = frame_with(at, "flip")
    assert flipped[["problem", "change", "flip"]].values.tolist() == [["m1", "0 → 1", "solved"],
                                                                      ["m2", "0.5 → 1", "tie resolved right"]]
    # another baseline: the older aggregate job's sc, over the same four problems
    picker.set_value(run_name("sc", ids["aggregate"])).run()
    compared = frame_with(checked(at), "McNemar p").set_index("run")
    assert compared.loc[run_name("sc", job), ["difference", "wins", "losses", "ties"]].tolist() == [0.0, 0, 0, 4]


def test_intersections_page_compares_the_chosen_runs_with_a_baseline(ids: dict[str, int]) -> None:
    at = checked(apptests.page("app", "intersections_page"))
    old = ids["aggregate"]
    labelled(at.multiselect, "runs").set_value([run_name("asc-f1", old), run_name("asc-f3", old),
                                                run_name("sc", old)]).run()
    picker = labelled(checked(at).selectbox, "baseline run")
    assert picker.value == run_name("asc-f1", old)  # at first the last of the runs chosen at first (the 4 newest)
    picker.set_value(run_name("sc", old)).run()
    compared = frame_with(at, "McNemar p").set_index("run")
    # sc earns 1, 0, 0.5, 0; f1 1, 0.5, 1, 0 (wins m1 and m2's tie); f3 1, 1, 1, 0 (solves m1 alone)
    assert compared[["difference", "wins", "losses", "ties", "only run solves", "McNemar p"]].values.tolist() == [
        [0.25, 2, 0, 2, 0, 1.0], [0.375, 2, 0, 2, 1, 1.0]]
    labelled(at.selectbox, "flips of run").set_value(run_name("asc-f1", old)).run()
    assert frame_with(checked(at), "flip")[["problem", "baseline answer", "answer", "change", "flip"]].values.tolist() \
        == [["m1", "41", "41 (tie of 2, credit 0.5)", "0 → 0.5", "into a tie"],
            ["m2", "4 (tie of 2, credit 0.5)", "6 ✓", "0.5 → 1", "tie resolved right"]]
    labelled(at.selectbox, "baseline run").set_value(run_name("greedy", old)).run()
    compared = frame_with(checked(at), "McNemar p").set_index("run")
    assert compared.index.tolist() == [run_name("asc-f1", old), run_name("asc-f3", old), run_name("sc", old)]
    # the picked baseline stays when another run is chosen
    labelled(at.multiselect, "runs").set_value([run_name("asc-f1", old), run_name("asc-f2", old)]).run()
    assert labelled(checked(at).selectbox, "baseline run").value == run_name("greedy", old)
    assert frame_with(at, "McNemar p")["run"].tolist() == [run_name("asc-f1", old), run_name("asc-f2", old)]


def test_the_baseline_section_says_when_there_is_nothing_to_compare(ids: dict[str, int]) -> None:
    at = checked(apptests.page("app", "intersections_page"))
    only = run_name("sc", ids["aggregate"])
    labelled(at.multiselect, "runs").set_value([only]).run()
    labelled(checked(at).selectbox, "baseline run").set_value(only).run()
    assert "Choose a run other than the baseline to compare with it." in [i.value for i in checked(at).info]
    elsewhere = run_name("greedy", ids["evaluate-greedy"], model="tiny")  # the RATIONALYST world's problems
    labelled(at.selectbox, "baseline run").set_value(elsewhere).run()
    assert f"No chosen run answered a problem that {elsewhere} answered." in [i.value for i in checked(at).info]


# --- the URL names what a page shows ---------------------------------------------------------------------


def opened(module: str, name: str, **params: str | list[str]) -> AppTest:
    """A page opened by a URL with these query parameters."""
    at = AppTest.from_string(f"from rplat.dashboard.{module} import {name}\n{name}()",
                             default_timeout=apptests.RUN_TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return checked(at.run())


def test_a_url_opens_failures_on_its_run_and_votes_on_its_aggregate_job(ids: dict[str, int]) -> None:
    run = run_name("sc", ids["resolving"])
    at = opened("app", "failures_page", run=run)
    assert at.selectbox(key="run").value == run
    assert metrics(at)["credit earned"] == "1.5 of 4"
    assert at.query_params["run"] in (run, [run])
    assert opened("app", "failures_page", run="no such run").selectbox(key="run").value != "no such run"

    for job in (ids["resolving"], ids["aggregate"]):
        at = opened("tdg_pages", "votes_page", job=str(job))
        assert at.selectbox[0].value == job
        assert at.query_params["job"] in (str(job), [str(job)])
    newest = max(ids["resolving"], ids["aggregate"])
    assert opened("tdg_pages", "votes_page", job="abc").selectbox[0].value == newest
    plain = opened("tdg_pages", "votes_page")  # opened without one, the URL then names the job shown
    assert plain.selectbox[0].value == newest and plain.query_params["job"] in (str(newest), [str(newest)])


def test_a_url_opens_intersections_on_its_runs_and_baseline(ids: dict[str, int]) -> None:
    runs = [run_name("sc", ids["resolving"]), run_name("asc-f1", ids["resolving"])]
    at = opened("app", "intersections_page", runs=runs, baseline=runs[0])
    assert at.multiselect(key="runs").value == runs
    assert at.selectbox(key="baseline").value == runs[0]
    comparison = frame_with(at, "McNemar p")
    assert comparison["run"].tolist() == [runs[1]]
