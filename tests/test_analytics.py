"""`rplat.analytics` and `rplat sql`: the DuckDB views give the right values and cannot write."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from test_cli_errors import assert_one_clear_sentence, snapshot

from rplat import analytics
from rplat.cli import main
from rplat.errors import UserError
from rplat.models import (
    Experiment,
    Model,
    Problem,
    RationaleScore,
    SolveTrajectory,
    Step,
    StepCandidate,
)
from rplat.prompts import TEMPLATES, ensure_template
from rplat.store import transaction

import factories as make
from stores import Store, make_store

T0 = dt.datetime(2026, 1, 5, 10, 0, 0)
# Every job ran once on runner-1, from T0 + 5 s to T0 + 65 s.
RAN: dict[str, Any] = {"attempts": 1, "created_at": T0, "started_at": T0 + dt.timedelta(seconds=5),
                       "finished_at": T0 + dt.timedelta(seconds=65), "lease_owner": "runner-1"}
# (gold, greedy's answer, self-consistency's answer): greedy solves p0 and p1, SC solves p1 and p2, none solves p3.
PROBLEMS = [("5", "5", "4"), ("42", "42", "42"), ("6", "7", "6"), ("18", "1", "2")]
# (rationale, S_without, S_with, kept at tau = 0.1)
RATIONALES = [("add the apples he buys", -2.0, -1.5, True), ("apples are fruit", -2.0, -1.95, False)]


def seed(store: Store) -> Store:
    """Write one small RATIONALYST experiment row by row (no model runs): an extraction with two scored
    rationales, a greedy and a sampling solve job with their evaluations, and a failed job."""
    with transaction(store.engine()) as s:
        exp = make.experiment(s, "exp")
        imported = make.job(s, "import", **RAN)
        model = make.model(s, "tiny")
        scorer = make.model(s, "tiny-scorer")
        problems = make.problems(s, make.dataset(s, "gsm", imported), [
            {"external_id": f"p{k}", "subject": "arith", "question": f"q{k}", "answer": gold}
            for k, (gold, _, _) in enumerate(PROBLEMS)])
        [doc] = make.documents(s, make.dataset(s, "wiki", imported, "documents"),
                               {"d0": "Tom has 3 apples. He buys 4 more."}, source="wiki")

        extract = make.job(s, "extract-rationales", experiment=exp, model=model, **RAN)
        template_id = ensure_template(s, TEMPLATES["extract-reasoning"])
        extraction = make.extraction(s, extract, model, template_id, doc.text, "...", document=doc, fidelity=0.95)
        score = make.job(s, "score-rationales", {"extract_job": extract.id}, experiment=exp, **RAN)
        for k, (text, s_without, s_with, kept) in enumerate(RATIONALES):
            rationale = make.rationale(s, extraction, "Tom has 3.", text, "He buys 4 more.", position=k,
                                       left_step=k, source="wiki")
            s.add(RationaleScore(job_id=score.id, rationale_id=rationale.id, scorer_model_id=scorer.id,
                                 lp_without=[s_without], lp_with=[s_with], gamma=0.9, s_without=s_without,
                                 s_with=s_with, loss_delta=s_with - s_without, tau=0.1, kept=kept))

        greedy = make.job(s, "solve", {"method": "greedy", "model": "tiny"}, experiment=exp, model=model, **RAN)
        sample = make.job(s, "solve", {"method": "sample", "model": "tiny"}, experiment=exp, model=model, **RAN)
        trajectory = SolveTrajectory(job_id=greedy.id, problem_id=problems[0].id, method="greedy",
                                     final_text="5", prediction="5", normalized_pred="5", correct=True,
                                     n_steps=1, stopped_reason="answer")
        s.add(trajectory)
        s.flush()
        step = Step(job_id=greedy.id, trajectory_id=trajectory.id, step_idx=0, rationale_text="add them",
                    rationale_mean_logprob=-0.5, chosen_candidate_idx=1, text="2 + 3 = 5")
        s.add(step)
        s.flush()
        s.add_all([StepCandidate(job_id=greedy.id, step_id=step.id, candidate_idx=0, text="2 + 3 = 6", score=-3.0,
                                 chosen=False),
                   StepCandidate(job_id=greedy.id, step_id=step.id, candidate_idx=1, text="2 + 3 = 5", score=-1.0,
                                 chosen=True)])

        for solve, method, column in ((greedy, "greedy", 1), (sample, "sc", 2)):
            evaluate = make.job(s, "evaluate", {"solve_job": solve.id}, experiment=exp, **RAN)
            credits = [float(row[column] == row[0]) for row in PROBLEMS]
            for problem, row, credit in zip(problems, PROBLEMS, credits, strict=True):
                make.prediction(s, evaluate, problem, model, method, row[column], credit, vote_mass=1.0)
            make.evaluation(s, evaluate, model, method, "arith", credits)
        make.job(s, "solve", experiment=exp, status="failed",
                 **{**RAN, "attempts": 3, "finished_at": None, "lease_owner": "runner-2"},
                 error="CUDA out of memory\nTraceback ...")
    return store


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def seeded_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One seeded store per backend, shared by the tests that only read it (a migration per test is slow)."""
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param)):
        yield seed(store)


@pytest.fixture
def seeded(seeded_store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The shared seeded store, with RPLAT_* pointing at it for in-process CLI calls."""
    seeded_store.set_env(monkeypatch)
    return seeded_store


@pytest.fixture
def duck(seeded: Store) -> Iterator[duckdb.DuckDBPyConnection]:
    con = analytics.connect(seeded.url)
    yield con
    con.close()


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    columns, values = analytics.run_query(con, sql)
    return [dict(zip(columns, row, strict=True)) for row in values]


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in this process (fast): exit code, stdout, stderr."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# --- the views --------------------------------------------------------------------------------------


def test_rationales_view_gives_each_rationale_its_loss_delta_scorer_and_both_jobs(duck: duckdb.DuckDBPyConnection
                                                                                    ) -> None:
    got = rows(duck, "SELECT * FROM rationales ORDER BY position")
    assert [(r["rationale"], r["s_without"], r["s_with"], r["loss_delta"], r["kept"]) for r in got] == [
        ("add the apples he buys", -2.0, -1.5, 0.5, True),
        ("apples are fruit", -2.0, -1.95, pytest.approx(0.05), False)]
    first = got[0]
    assert (first["document"], first["dataset"], first["source"], first["problem"]) == ("d0", "wiki", "wiki", None)
    assert (first["extractor"], first["scorer"], first["fidelity"], first["experiment"]) == (
        "tiny", "tiny-scorer", 0.95, "exp")
    assert {r["kind"] for r in rows(duck, f"SELECT kind FROM job_timeline WHERE job_id IN "
                                          f"({first['extract_job_id']}, {first['score_job_id']})")} == {
        "extract-rationales", "score-rationales"}


def test_predictions_view_joins_each_answer_to_its_gold_model_and_solve_job(duck: duckdb.DuckDBPyConnection) -> None:
    got = rows(duck, "SELECT p.*, t.kind AS solve_kind FROM predictions p "
                     "JOIN job_timeline t ON t.job_id = p.solve_job_id WHERE method = 'sc' ORDER BY problem")
    assert [(r["problem"], r["question"], r["answer"], r["gold"], r["correct"]) for r in got] == [
        ("p0", "q0", "4", "5", False), ("p1", "q1", "42", "42", True), ("p2", "q2", "6", "6", True),
        ("p3", "q3", "2", "18", False)]
    assert {(r["model"], r["experiment"], r["dataset"], r["solve_kind"]) for r in got} == {
        ("tiny", "exp", "gsm", "solve")}
    assert len({r["job_id"] for r in got}) == 1 and got[0]["job_id"] != got[0]["solve_job_id"]


def test_solved_sets_hold_exactly_the_problems_each_run_solved(duck: duckdb.DuckDBPyConnection) -> None:
    got = rows(duck, "SELECT method, list_sort(list(problem)) AS solved FROM solved_sets "
                     "GROUP BY method ORDER BY method")
    assert got == [{"method": "greedy", "solved": ["p0", "p1"]}, {"method": "sc", "solved": ["p1", "p2"]}]


def test_intersections_count_both_only_a_only_b_and_neither_for_each_pair_of_runs(duck: duckdb.DuckDBPyConnection
                                                                                  ) -> None:
    got = rows(duck, "SELECT * FROM intersections WHERE method_a = 'greedy' AND method_b = 'sc'")
    assert len(got) == 1
    pair = got[0]
    assert (pair["problems"], pair["both_solved"], pair["only_a"], pair["only_b"], pair["neither"]) == (4, 1, 1, 1, 1)
    p0, p2 = (rows(duck, f"SELECT problem_id FROM predictions WHERE problem = '{p}' LIMIT 1")[0]["problem_id"]
              for p in ("p0", "p2"))
    assert (pair["only_a_problem_ids"], pair["only_b_problem_ids"]) == ([p0], [p2])
    mirrored = rows(duck, "SELECT only_a, only_b, only_a_problem_ids FROM intersections "
                          "WHERE method_a = 'sc' AND method_b = 'greedy'")
    assert mirrored == [{"only_a": 1, "only_b": 1, "only_a_problem_ids": [p2]}]


def test_solved_sets_answer_which_problems_greedy_solves_that_sc_does_not(duck: duckdb.DuckDBPyConnection) -> None:
    got = rows(duck, "SELECT problem FROM solved_sets WHERE method = 'greedy' "
                     "EXCEPT SELECT problem FROM solved_sets WHERE method = 'sc'")
    assert got == [{"problem": "p0"}]


def test_step_candidates_view_lists_each_candidate_with_its_score_and_marks_the_chosen_one(
        duck: duckdb.DuckDBPyConnection) -> None:
    got = rows(duck, "SELECT * FROM step_candidates ORDER BY candidate_idx")
    assert [(r["candidate"], r["score"], r["chosen"]) for r in got] == [("2 + 3 = 6", -3.0, False),
                                                                         ("2 + 3 = 5", -1.0, True)]
    assert {(r["method"], r["model"], r["problem"], r["step_idx"], r["rationale"], r["experiment"]) for r in got} == {
        ("greedy", "tiny", "p0", 0, "add them", "exp")}


def test_job_timeline_gives_waiting_time_duration_attempts_runner_and_error(duck: duckdb.DuckDBPyConnection) -> None:
    done = rows(duck, "SELECT * FROM job_timeline WHERE kind = 'extract-rationales'")[0]
    assert (done["status"], done["queued_seconds"], done["duration_seconds"], done["runner"], done["experiment"],
            done["model"]) == ("succeeded", 5.0, 60.0, "runner-1", "exp", "tiny")
    failed = rows(duck, "SELECT * FROM job_timeline WHERE status = 'failed'")[0]
    assert (failed["attempts"], failed["duration_seconds"], failed["runner"]) == (3, None, "runner-2")
    assert failed["error"].startswith("CUDA out of memory")
    assert rows(duck, "SELECT count(*) AS n FROM job_timeline")[0]["n"] == 8


def test_evaluations_view_gives_accuracy_per_method_and_subject(duck: duckdb.DuckDBPyConnection) -> None:
    got = rows(duck, "SELECT method, model, subject, n, n_correct, accuracy, solve_job_id IS NOT NULL AS has_solve "
                     "FROM evaluations ORDER BY method")
    assert got == [
        dict(method="greedy", model="tiny", subject="arith", n=4, n_correct=2.0, accuracy=0.5, has_solve=True),
        dict(method="sc", model="tiny", subject="arith", n=4, n_correct=2.0, accuracy=0.5, has_solve=True)]


def test_evaluations_name_the_sample_job_and_the_models_maker_and_the_job_timeline_holds_params(
        db: Store) -> None:
    seeded = seed(db)
    with transaction(seeded.engine()) as s:
        exp = s.scalar(select(Experiment).where(Experiment.name == "exp"))
        train = make.job(s, "train-kd", {"adapter_name": "kd"}, experiment=exp, **RAN)
        kd = make.model(s, "kd", "lora", job=train)
        sample = make.job(s, "sample", {"model": "kd", "n": 1, "temperature": 0.0}, experiment=exp, **RAN)
        evaluate = make.job(s, "evaluate", {"sample_job": sample.id, "solve_job": None}, experiment=exp, **RAN)
        make.evaluation(s, evaluate, kd, "greedy", "all", [1.0])
        ids = (train.id, sample.id)
    con = analytics.connect(seeded.url)
    try:
        got = rows(con, "SELECT e.model, e.solve_job_id, e.sample_job_id, e.model_job_id, maker.kind AS made_by, "
                        "sample.params AS sample_params FROM evaluations e "
                        "LEFT JOIN job_timeline maker ON maker.job_id = e.model_job_id "
                        "LEFT JOIN job_timeline sample ON sample.job_id = e.sample_job_id ORDER BY e.job_id")
    finally:
        con.close()
    # the seeded solve evaluations (model tiny, imported: made by no job), then the sample job's
    assert [(r["model"], r["solve_job_id"] is not None, r["sample_job_id"], r["model_job_id"], r["made_by"])
            for r in got] == [("tiny", True, None, None, None)] * 2 + [("kd", False, ids[1], ids[0], "train-kd")]
    assert json.loads(got[-1]["sample_params"]) == {"model": "kd", "n": 1, "temperature": 0.0}


def test_chains_and_asc_vs_sc_are_valid_and_empty_until_a_job_fills_them(duck: duckdb.DuckDBPyConnection) -> None:
    assert rows(duck, "SELECT count(*) AS n FROM chains") == [{"n": 0}]
    assert rows(duck, "SELECT count(*) AS n FROM asc_vs_sc") == [{"n": 0}]


def test_chains_and_asc_vs_sc_show_labelled_chains_and_asc_beside_sc_per_problem(db: Store) -> None:
    seeded = seed(db)
    with transaction(seeded.engine()) as s:
        exp = s.scalar(select(Experiment).where(Experiment.name == "exp"))
        model = s.scalars(select(Model).where(Model.name == "tiny")).one()
        problem = s.scalars(select(Problem).where(Problem.external_id == "p0")).one()
        collect = make.job(s, "collect-chains", experiment=exp, **RAN)
        for k, (text, answer, label) in enumerate([("2+3=5", "5", "pos"), ("2+3=6", "6", "neg")]):
            make.chain(s, problem, "gpt-4", text, label, sample_idx=k, job=collect, extracted_answer=answer)
        vote = make.job(s, "asc-vote", experiment=exp, **RAN)
        make.prediction(s, vote, problem, model, "asc-f3", "5", 1.0, vote_mass=1.7, tie_size=1)
    con = analytics.connect(seeded.url)
    try:
        assert [(r["chain"], r["label"], r["gold"], r["teacher"]) for r in
                rows(con, "SELECT * FROM chains ORDER BY sample_idx")] == [("2+3=5", "pos", "5", "gpt-4"),
                                                                          ("2+3=6", "neg", "5", "gpt-4")]
        got = rows(con, "SELECT * FROM asc_vs_sc")
        assert [(r["problem"], r["asc_method"], r["asc_answer"], r["asc_correct"], r["sc_answer"], r["sc_correct"],
                 r["agree"]) for r in got] == [("p0", "asc-f3", "5", True, "4", False, False)]
    finally:
        con.close()


# --- locked down -------------------------------------------------------------------------------------


def test_the_store_is_attached_read_only_and_duckdb_is_locked(duck: duckdb.DuckDBPyConnection, seeded: Store,
                                                              tmp_path: Path) -> None:
    """Even bypassing `run_query`'s statement check, the connection itself cannot write or reach out."""
    before = snapshot(seeded)
    out = tmp_path / "out.csv"
    for statement in ["INSERT INTO store.experiments (name, created_at) VALUES ('x', now())",
                      "UPDATE store.jobs SET status = 'queued'", "DELETE FROM store.jobs",
                      f"ATTACH '{tmp_path / 'other.db'}' AS other", f"COPY (SELECT 1) TO '{out}'",
                      "INSTALL httpfs", "LOAD httpfs", f"SELECT * FROM read_csv('{tmp_path}/*.csv')",
                      "SET enable_external_access = true", "SET lock_configuration = false",
                      f"SET temp_directory = '{tmp_path}'", f"SET allowed_directories = ['{tmp_path}']"]:
        with pytest.raises(duckdb.Error):
            duck.execute(statement)
    assert not out.exists() and not (tmp_path / "other.db").exists()
    assert snapshot(seeded) == before


def test_the_scanner_extension_is_loaded_from_its_pip_package_without_the_network(
        seeded: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home-dir"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens: a download would fail
    con = analytics.connect(seeded.url)
    try:
        assert rows(con, "SELECT count(*) AS n FROM predictions") == [{"n": 8}]
    finally:
        con.close()
    assert list(home.iterdir()) == []  # no ~/.duckdb/extensions: nothing was installed


REFUSED = [
    "INSERT INTO store.jobs (kind) VALUES ('x')", "UPDATE store.jobs SET status = 'queued'", "DELETE FROM store.jobs",
    "CREATE TABLE t (x INTEGER)", "CREATE VIEW v AS SELECT 1", "DROP VIEW rationales", "ATTACH 'other.db' AS other",
    "COPY (SELECT 1) TO 'out.csv'", "INSTALL httpfs", "LOAD httpfs", "SET threads = 1", "DETACH store",
    "SELECT * FROM sqlite_scan('rplat.db', 'jobs')", "SELECT * FROM postgres_scan('host=127.0.0.1', 'public', 'jobs')",
    "SELECT * FROM query('SELECT 1')", "PREPARE p AS SELECT 1", "SELECT 1; SELECT 2",
]


def refusal(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one sentence `run_query` refuses `sql` with, checked as the CLI prints it."""
    with pytest.raises(UserError) as caught:
        analytics.run_query(con, sql)
    return assert_one_clear_sentence("", f"error: {caught.value}\n", 2, [])


def test_run_query_refuses_anything_but_one_read_only_query_in_one_sentence(seeded: Store,
                                                                             duck: duckdb.DuckDBPyConnection,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(seeded.home)
    before = snapshot(seeded)
    for statement in REFUSED:
        refusal(duck, statement)
    assert snapshot(seeded) == before
    assert not (seeded.home / "out.csv").exists() and not (seeded.home / "other.db").exists()


def test_run_query_names_what_it_refuses(duck: duckdb.DuckDBPyConnection) -> None:
    assert "not INSERT" in refusal(duck, "INSERT INTO store.jobs (kind) VALUES ('x')")
    assert "not COPY" in refusal(duck, "COPY (SELECT 1) TO 'out.csv'")
    assert "sqlite_scan" in refusal(duck, "SELECT * FROM (SELECT 1) JOIN sqlite_scan('a', 'b') ON true")
    assert "query" in refusal(duck, "EXPLAIN SELECT * FROM query('SELECT 1')")
    assert "exactly one query" in refusal(duck, "SELECT 1; SELECT 2")


def test_sql_refuses_writes_in_one_sentence_and_leaves_the_store_unchanged(
        seeded: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(seeded.home)
    before = snapshot(seeded)
    for statement in ("DELETE FROM store.jobs", "CREATE TABLE t (x INTEGER)", "ATTACH 'other.db' AS other",
                      "COPY (SELECT 1) TO 'out.csv'", "INSTALL httpfs"):
        code, out, err = run_cli(capsys, "sql", statement)
        assert_one_clear_sentence(out, err, code, ["read-only"])
    assert snapshot(seeded) == before
    assert not (seeded.home / "out.csv").exists() and not (seeded.home / "other.db").exists()


@pytest.mark.parametrize(("query", "says"), [
    ("SELEC 1", "not valid SQL"), ("SELECT * FROM no_such_view", "no_such_view"),
    ("SELECT loss_delta FROM rationales WHERE kept = 'maybe'", "maybe")])
def test_sql_reports_a_broken_query_in_one_sentence(seeded: Store, capsys: pytest.CaptureFixture[str], query: str,
                                                    says: str) -> None:
    code, out, err = run_cli(capsys, "sql", query)
    assert_one_clear_sentence(out, err, code, [says])


def test_a_postgresql_url_becomes_a_libpq_connection_string_with_its_values_quoted() -> None:
    url = make_url("postgresql+psycopg://bob:p%27w%5Cd@db.example:6543/rplat?sslmode=require")
    assert analytics._libpq(url) == (r"host='db.example' port='6543' user='bob' password='p\'w\\d' dbname='rplat' "
                                     "sslmode='require'")


# --- the command line --------------------------------------------------------------------------------


def test_sql_prints_a_table_for_people(seeded: Store) -> None:
    table = seeded.rplat("sql", "SELECT method, accuracy FROM evaluations ORDER BY method", check=True).stdout
    assert [line.split() for line in table.splitlines()] == [["method", "accuracy"], ["greedy", "0.5"], ["sc", "0.5"]]


def test_sql_prints_json_and_csv_for_scripts(seeded: Store, capsys: pytest.CaptureFixture[str]) -> None:
    query = "SELECT method, accuracy FROM evaluations ORDER BY method"
    code, out, _ = run_cli(capsys, "sql", query, "--json")
    assert code == 0
    assert json.loads(out) == [{"method": "greedy", "accuracy": 0.5}, {"method": "sc", "accuracy": 0.5}]
    code, out, _ = run_cli(capsys, "sql", query, "--csv")
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [["method", "accuracy"], ["greedy", "0.5"], ["sc", "0.5"]]
    code, out, _ = run_cli(capsys, "sql", "SELECT only_b, only_b_problem_ids FROM intersections "
                                          "WHERE method_a = 'greedy'", "--json")
    assert code == 0
    [pair] = json.loads(out)
    assert pair["only_b"] == 1 and len(pair["only_b_problem_ids"]) == 1


def test_sql_views_lists_every_view_with_its_columns(seeded: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "sql", "--views", "--json")
    assert code == 0
    listed = {v["view"]: [c["name"] for c in v["columns"]] for v in json.loads(out)}
    assert list(listed) == list(analytics.VIEWS)
    assert {"rationale", "s_without", "s_with", "loss_delta", "kept", "extract_job_id", "score_job_id"} <= set(
        listed["rationales"])
    code, out, _ = run_cli(capsys, "sql", "--views")
    assert code == 0 and out.splitlines()[0].split() == ["view", "columns"] and "intersections" in out


def test_sql_refuses_a_write_through_the_real_cli_with_exit_2(seeded: Store) -> None:
    before = snapshot(seeded)
    proc = seeded.rplat("sql", "INSERT INTO store.experiments (name) VALUES ('x')")
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, ["INSERT", "read-only"])
    assert snapshot(seeded) == before
    with seeded.engine().connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Experiment)) == 1
