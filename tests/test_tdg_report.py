"""`rplat report tdg`: every number of Tables 1 and 2 recomputed here from the predictions rows it reads."""

from __future__ import annotations

import csv
import io
import json
import random
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.models import Experiment, Job, Model, Prediction, Problem
from rplat.reports import rationalyst_report, tdg_report
from rplat.store import transaction

import factories as make
from stores import Store

SUBJECTS = ["carry", "no-carry", "rare"]
# 13 problems: 6 carry, 5 no-carry, 1 rare (solved by no model: an empty union), 1 without a subject.
PROBLEM_SUBJECTS = ["carry"] * 6 + ["no-carry"] * 5 + ["rare"] + [None]
TRAINED = ["sft", "kd", "mix", "nt", "ul", "neg", "nat", "nce"]


class Seeder:
    """Writes jobs, models, predictions and evaluations the way the pipeline's jobs would, without running them: the
    problems of PROBLEM_SUBJECTS (dataset `test`), then whatever a test asks for, in experiments made on first use."""

    def __init__(self, s: Session) -> None:
        self.s = s
        self.experiments: dict[str, Experiment] = {}
        self.problems = make.problems(s, make.dataset(s, "test", make.job(s, "import-problems")), [
            {"external_id": f"p{i}", "subject": subject, "question": f"q{i}", "answer": str(i)}
            for i, subject in enumerate(PROBLEM_SUBJECTS)])

    def job(self, kind: str, params: dict[str, Any], experiment: str | None, **columns: Any) -> Job:
        if experiment is not None and experiment not in self.experiments:
            self.experiments[experiment] = make.experiment(self.s, experiment)
        in_experiment = self.experiments[experiment] if experiment is not None else None
        return make.job(self.s, kind, params, experiment=in_experiment, **columns)

    def evaluated(self, experiment: str, model: Model, solved: set[int], *, temperature: float = 0.0, n: int = 1,
                  method: str = "greedy") -> Job:
        """A sample job of `model` and its evaluate job, whose predictions say the problems `solved` are right."""
        sample = self.job("sample", {"model": model.name, "problems": "test", "n": n, "temperature": temperature},
                          experiment)
        evaluate = self.job("evaluate", {"sample_job": sample.id, "solve_job": None}, experiment)
        self.predictions_and_evaluations(evaluate, model, method, solved)
        return evaluate

    def predictions_and_evaluations(self, evaluate: Job, model: Model, method: str, solved: set[int]) -> None:
        credits = {p: float(p.id in solved) for p in self.problems}
        for problem, credit in credits.items():
            make.prediction(self.s, evaluate, problem, model, method, "x", credit)
        make.evaluations(self.s, evaluate, model, method, credits)


def _seed(db: Store) -> dict[str, Any]:
    rng = random.Random(7)
    with transaction(db.engine()) as s:
        seed = Seeder(s)
        ids = [p.id for p in seed.problems]
        rare = seed.problems[PROBLEM_SUBJECTS.index("rare")].id
        pool = [i for i in ids if i != rare]
        student = make.model(s, "student")
        models = {"base": student}
        for setting in TRAINED:
            train = seed.job(f"train-{setting}", {"model": "student"}, "e")
            models[setting] = make.model(s, f"e-{setting}", "lora", job=train)
        evaluate_jobs = {}
        solved = {}
        # Decoys first (smaller job ids), each of which the report must not read:
        seed.evaluated("e", models["kd"], set(pool))  # an older evaluation of kd: superseded
        seed.evaluated("e", models["nat"], set(pool), temperature=0.8, n=4, method="sc")  # not greedy
        seed.evaluated("other", models["sft"], set(pool[:1]))  # another experiment
        solve = seed.job("solve", {"model": "student", "method": "greedy"}, "e")
        solve_eval = seed.job("evaluate", {"solve_job": solve.id, "sample_job": None}, "e")
        seed.predictions_and_evaluations(solve_eval, student, "greedy", set(pool))  # a RATIONALYST evaluation
        for setting, model in models.items():
            solved[setting] = set(rng.sample(pool, rng.randint(2, 8)))
            evaluate_jobs[setting] = seed.evaluated("e", model, solved[setting]).id
        return {"evaluate": evaluate_jobs, "models": {setting: (m.name, m.id) for setting, m in models.items()},
                "solve_eval": solve_eval.id}


Solved = dict[str, dict[str, set[int]]]  # setting -> subject (or all) -> problem ids


def _recompute(db: Store, evaluate_jobs: dict[str, int]) -> tuple[dict[str, dict[str, Any]], Solved]:
    """Table 2's accuracies and each setting's solved problems per subject, from the predictions rows."""
    with transaction(db.engine()) as s:
        rows = s.execute(select(Prediction.job_id, Prediction.problem_id, Prediction.correct, Problem.subject)
                         .join(Problem, Problem.id == Prediction.problem_id)
                         .where(Prediction.job_id.in_(list(evaluate_jobs.values())))).all()
    accuracy: dict[str, dict[str, Any]] = {}
    solved: Solved = {}
    for setting, job_id in evaluate_jobs.items():
        mine = [r for r in rows if r.job_id == job_id]
        accuracy[setting] = {"avg": 100 * sum(r.correct for r in mine) / len(mine), "n": len(mine)}
        solved[setting] = {"all": {r.problem_id for r in mine if r.correct}}
        for subject in SUBJECTS:
            of = [r for r in mine if r.subject == subject]
            accuracy[setting][subject] = 100 * sum(r.correct for r in of) / len(of)
            solved[setting][subject] = {r.problem_id for r in of if r.correct}
    return accuracy, solved


def test_report_tdg_tables_recomputed_from_the_prediction_rows(db: Store) -> None:
    seeded = _seed(db)
    accuracy, solved = _recompute(db, seeded["evaluate"])
    report = tdg_report(db.engine(), "e")

    assert report["subjects"] == SUBJECTS and report["sft_model"] == "e-sft"
    table2 = report["table2"]
    assert [r["setting"] for r in table2] == ["base", *TRAINED]  # the decoys added no rows
    sft = accuracy["sft"]["avg"]
    for row in table2:
        want = accuracy[row["setting"]]
        assert row["model"] == seeded["models"][row["setting"]][0]
        assert row["evaluate_job"] == seeded["evaluate"][row["setting"]] and row["n"] == want["n"] == 13
        assert row["avg"] == pytest.approx(want["avg"])
        assert row["accuracy"] == pytest.approx({s: want[s] for s in SUBJECTS})
        assert row["gain"] == pytest.approx((want["avg"] - sft) / sft)
    assert [row["gain"] for row in table2 if row["setting"] == "sft"] == [0.0]

    assert [(t["a"], t["b"]) for t in report["table1"]] == [("kd", "neg"), ("neg", "nat")]
    for t in report["table1"]:
        assert (t["evaluate_job_a"], t["evaluate_job_b"]) == (seeded["evaluate"][t["a"]], seeded["evaluate"][t["b"]])
        assert [c["subject"] for c in t["cells"]] == [*SUBJECTS, "all"]
        for c in t["cells"]:
            a, b = solved[t["a"]][c["subject"]], solved[t["b"]][c["subject"]]
            assert (c["intersection"], c["solved_a"], c["solved_b"], c["union"]) == (len(a & b), len(a), len(b),
                                                                                   len(a | b))
            assert c["iou"] == pytest.approx(len(a & b) / len(a | b) if a | b else 0.0)
        rare = next(c for c in t["cells"] if c["subject"] == "rare")
        assert rare["union"] == 0 and rare["iou"] == 0.0

    # The RATIONALYST report keeps its solve evaluation and ignores the sample jobs' ones.
    results = rationalyst_report(db.engine(), experiment="e")["results"]
    assert {r["evaluate_job"] for r in results} == {seeded["solve_eval"]}


def test_report_tdg_cli_prints_both_tables_json_and_csv(db: Store) -> None:
    seeded = _seed(db)
    accuracy, _ = _recompute(db, seeded["evaluate"])
    as_json = json.loads(db.rplat("report", "tdg", "--experiment", "e", "--json", check=True).stdout)
    assert as_json == json.loads(json.dumps(tdg_report(db.engine(), "e")))

    rows = list(csv.DictReader(io.StringIO(db.rplat("report", "tdg", "--experiment", "e", "--csv",
                                                    check=True).stdout)))
    assert [r["setting"] for r in rows] == ["base", *TRAINED]
    for r in rows:
        assert float(r["avg"]) == pytest.approx(accuracy[r["setting"]]["avg"])
        assert float(r["carry"]) == pytest.approx(accuracy[r["setting"]]["carry"])
    table1 = list(csv.DictReader(io.StringIO(db.rplat("report", "tdg", "--experiment", "e", "--csv", "--table", "1",
                                                      check=True).stdout)))
    assert [(r["pair"], r["subject"]) for r in table1] == [(p, s) for p in ("kd/neg", "neg/nat")
                                                            for s in (*SUBJECTS, "all")]

    printed = db.rplat("report", "tdg", "--experiment", "e", check=True).stdout
    assert "Table 2" in printed and "Table 1" in printed and "e-nce" in printed
    assert f"{accuracy['kd']['avg']:.2f}" in printed

    both = db.rplat("report", "tdg", "--experiment", "e", "--json", "--csv")
    assert both.returncode == 2 and "not both" in both.stderr


def test_report_tdg_gain_is_none_without_an_sft_row_and_an_empty_experiment_is_one_sentence(db: Store) -> None:
    with transaction(db.engine()) as s:
        seed = Seeder(s)
        kd = make.model(s, "e-kd", "lora", job=seed.job("train-kd", {}, "e"))
        seed.evaluated("e", kd, {seed.problems[0].id})
        seed.job("probe", {}, "empty")
        seed.evaluated("zero", make.model(s, "z-sft", "lora", job=seed.job("train-sft", {}, "zero")), set())
        seed.evaluated("zero", kd, {seed.problems[0].id})
    report = tdg_report(db.engine(), "e")
    assert [r["gain"] for r in report["table2"]] == [None] and report["sft_model"] is None
    assert report["table1"] == [] and report["missing_pairs"] == ["kd/neg", "neg/nat"]
    zero_report = tdg_report(db.engine(), "zero")
    assert [(r["setting"], r["gain"]) for r in zero_report["table2"]] == [("sft", None), ("kd", None)]
    assert "n/a" in db.rplat("report", "tdg", "--experiment", "zero", check=True).stdout
    with pytest.raises(UserError, match="no evaluated greedy sample jobs"):
        tdg_report(db.engine(), "empty")
    missing = db.rplat("report", "tdg", "--experiment", "nope")
    assert missing.returncode == 2 and "'nope'" in missing.stderr
