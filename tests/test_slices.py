"""Named slices (issue 19): a filter over the predictions saved with `rplat slice add`, listed by `rplat slice ls`
and the `slices` view, measured on any run by `rplat slice show` and the dashboard's Slices page. Both databases.
The refusals of a bad predicate are cases of tests/test_cli_errors.py ("named slices")."""

from __future__ import annotations

import json

import apptests
import pytest
from sqlalchemy import func, select
from test_cli_errors import run_main

from rplat import slices
from rplat.analytics import connect, run_query
from rplat.cli.slices import METRICS
from rplat.dashboard.app import NO_SLICE
from rplat.errors import UserError
from rplat.models import SLICE_METRICS, Slice
from rplat.stats import wilson
from rplat.store import transaction

import factories as make
from stores import Store

# (external id, subject, level); and each run's credit per problem, a tie earning its share
PROBLEMS = [("a1", "Algebra", "Level 1"), ("a4", "Algebra", "Level 4"), ("a5", "Algebra", "Level 5"),
            ("g5", "Geometry", "Level 5")]
CREDITS = {"greedy": [1.0, 0.5, 0.0, 1.0], "sc": [0.5, 0.5, 1.0, 0.0]}
ALGEBRA = "subject = 'Algebra'"
HARD_ALGEBRA = ("subject = 'Algebra' AND problem_id IN (SELECT problem_id FROM problems "
                "WHERE level IN ('Level 4', 'Level 5'))")


def seed(db: Store) -> dict[str, str]:
    """Two runs (greedy on job 1's model, sc on a later job) over the four problems: the run names."""
    with transaction(db.engine()) as s:
        dataset = make.dataset(s, "math", make.job(s, "import-problems"))
        problems = make.problems(s, dataset, [{"external_id": e, "question": f"Question {e}?", "answer": "6",
                                               "subject": subject, "level": level} for e, subject, level in PROBLEMS])
        model = make.model(s, "student")
        runs = {}
        for method, credits in CREDITS.items():
            job = make.job(s, "evaluate", model=model)
            for problem, credit in zip(problems, credits, strict=True):
                make.prediction(s, job, problem, model, method, "6", credit, tie_size=2 if credit == 0.5 else 1)
            runs[method] = f"{method} / student / job {job.id}"
    return runs


def cli(db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    out, err, code = run_main(list(args), monkeypatch, capsys, db.home)
    assert code == 0, err
    return out


def test_a_slice_added_is_listed_with_its_metric_and_who_saved_it(db: Store, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    seed(db)
    out = cli(db, monkeypatch, capsys, "slice", "add", "hard-algebra", "--where", HARD_ALGEBRA,
              "--description", "levels 4 and 5", "--created-by", "ada")
    assert out.startswith("saved slice hard-algebra (accuracy of the predictions where subject = 'Algebra'")
    cli(db, monkeypatch, capsys, "slice", "add", "algebra-count", "--where", ALGEBRA, "--metric", "n")
    listed = json.loads(cli(db, monkeypatch, capsys, "slice", "ls", "--json"))
    assert [(r["name"], r["metric"], r["predicate"], r["description"]) for r in listed] == [
        ("algebra-count", "n", ALGEBRA, None), ("hard-algebra", "accuracy", HARD_ALGEBRA, "levels 4 and 5")]
    assert listed[1]["created_by"] == "ada" and listed[0]["created_by"]
    assert "hard-algebra" in cli(db, monkeypatch, capsys, "slice", "ls")


def test_the_slices_view_shows_the_stored_slices(db: Store, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    seed(db)
    cli(db, monkeypatch, capsys, "slice", "add", "algebra", "--where", ALGEBRA, "--created-by", "ada")
    con = connect(db.url)
    try:
        rows = run_query(con, "SELECT name, predicate, metric, created_by FROM slices")[1]
    finally:
        con.close()
    assert rows == [("algebra", ALGEBRA, "accuracy", "ada")]


def test_the_accuracy_of_a_slice_is_its_mean_credit_with_ties_counting_half(
        db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    runs = seed(db)
    cli(db, monkeypatch, capsys, "slice", "add", "algebra", "--where", ALGEBRA)
    shown = {r["run"]: r for r in json.loads(cli(db, monkeypatch, capsys, "slice", "show", "algebra", "--json"))}
    # greedy on Algebra: 1 + 0.5 (a tie) + 0 over 3; sc: 0.5 + 0.5 + 1 over 3
    assert [shown[runs["greedy"]][k] for k in ("n", "credit", "value")] == [3, 1.5, 0.5]
    assert [shown[runs["sc"]][k] for k in ("n", "credit")] == [3, 2.0]
    assert shown[runs["sc"]]["value"] == pytest.approx(2 / 3)
    assert [shown[runs["greedy"]]["ci_low"], shown[runs["greedy"]]["ci_high"]] == pytest.approx(wilson(1.5, 3))
    assert list(shown) == [runs["sc"], runs["greedy"]]  # newest run first


def test_a_slice_is_measured_on_the_runs_named_by_name_or_job_id(db: Store, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    runs = seed(db)
    cli(db, monkeypatch, capsys, "slice", "add", "hard-algebra", "--where", HARD_ALGEBRA)
    job = runs["sc"].rsplit(" ", 1)[1]
    by_job = json.loads(cli(db, monkeypatch, capsys, "slice", "show", "hard-algebra", "--run", job, "--json"))
    by_name = json.loads(cli(db, monkeypatch, capsys, "slice", "show", "hard-algebra", "--run", runs["sc"], "--json"))
    assert by_job == by_name
    assert [(r["run"], r["n"], r["credit"], r["value"]) for r in by_job] == [(runs["sc"], 2, 1.5, 0.75)]
    table = cli(db, monkeypatch, capsys, "slice", "show", "hard-algebra")
    assert table.splitlines()[0] == f"slice hard-algebra: accuracy of the predictions where {HARD_ALGEBRA}"
    assert "0.2500" in table and "0.7500" in table  # greedy: (0.5 + 0) / 2; sc: (0.5 + 1) / 2


def test_a_run_with_nothing_in_the_slice_has_n_0_and_no_accuracy(db: Store) -> None:
    runs = seed(db)
    con = connect(db.url)
    try:
        measured = slices.measure(con, "subject = 'Geometry' AND credit < 1", "accuracy")
    finally:
        con.close()
    assert [(m.run, m.n, m.value, m.ci_low) for m in measured] == [(runs["sc"], 1, 0.0, 0.0),
                                                                   (runs["greedy"], 0, None, None)]


def test_the_metric_n_counts_the_slices_predictions(db: Store) -> None:
    runs = seed(db)
    con = connect(db.url)
    try:
        measured = slices.measure(con, "tie_size > 1", "n")
    finally:
        con.close()
    assert [(m.run, m.n, m.value, m.ci_low) for m in measured] == [(runs["sc"], 2, 2.0, None),
                                                                   (runs["greedy"], 1, 1.0, None)]


def test_a_refused_predicate_writes_nothing(db: Store) -> None:
    seed(db)
    con = connect(db.url)
    try:
        for bad in ("subjects = 'Algebra'", "true; DROP TABLE store.slices", "EXISTS (SELECT * FROM glob('*'))"):
            with pytest.raises(UserError):
                slices.add(db.engine(), con, "bad", bad, created_by="ada")
    finally:
        con.close()
    with db.engine().connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Slice)) == 0


def test_the_cli_offers_the_metrics_a_slice_can_store() -> None:
    assert METRICS == SLICE_METRICS


# --- the dashboard's Slices page ---------------------------------------------------------------------------


def slices_page(db: Store, monkeypatch: pytest.MonkeyPatch) -> apptests.AppTest:
    db.set_env(monkeypatch)
    at = apptests.page("app", "slices_page")
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_slices_page_says_how_to_save_a_slice_when_there_is_none(db: Store,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seed(db)
    assert NO_SLICE in [i.value for i in slices_page(db, monkeypatch).info]


def test_the_slices_page_lists_the_slices_and_measures_the_chosen_one_on_every_run(
        db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    runs = seed(db)
    cli(db, monkeypatch, capsys, "slice", "add", "algebra", "--where", ALGEBRA)
    cli(db, monkeypatch, capsys, "slice", "add", "hard-algebra", "--where", HARD_ALGEBRA)
    at = slices_page(db, monkeypatch)
    listed, first = at.dataframe[-2].value, at.dataframe[-1].value
    assert listed["name"].tolist() == ["algebra", "hard-algebra"]
    assert first.set_index("run").loc[runs["greedy"], ["n", "credit", "accuracy"]].tolist() == [3, 1.5, 0.5]
    at.selectbox(key="slices_named").set_value("hard-algebra").run()
    measured = at.dataframe[-1].value.set_index("run")
    assert measured.loc[runs["sc"], ["n", "credit", "accuracy"]].tolist() == [2, 1.5, 0.75]
    assert measured.loc[runs["greedy"], ["ci_low", "ci_high"]].tolist() == pytest.approx(wilson(0.5, 2))
    at.multiselect(key="slices_named_runs").set_value([runs["greedy"]]).run()
    assert at.dataframe[-1].value["run"].tolist() == [runs["greedy"]]
    assert not at.exception
