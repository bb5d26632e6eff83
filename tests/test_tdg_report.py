"""`rplat report tdg`: every number of Tables 1 and 2 recomputed here from the predictions rows it reads."""

from __future__ import annotations

import csv
import io
import json
import random
from typing import Any

import pytest
from sqlalchemy import select

from rplat.errors import UserError
from rplat.models import Dataset, Evaluation, Experiment, Job, Model, Prediction, Problem
from rplat.reports import rationalyst_report, tdg_report
from rplat.store import transaction

SUBJECTS = ["carry", "no-carry", "rare"]
# 13 problems: 6 carry, 5 no-carry, 1 rare (solved by no model: an empty union), 1 without a subject.
PROBLEM_SUBJECTS = ["carry"] * 6 + ["no-carry"] * 5 + ["rare"] + [None]
TRAINED = ["sft", "kd", "mix", "nt", "ul", "neg", "nat", "nce"]


class Seeder:
    """Writes jobs, models, predictions and evaluations the way the pipeline's jobs would, without running them."""

    def __init__(self, s: Any) -> None:
        self.s = s
        self.experiments: dict[str, int] = {}
        imp = self.job("import-problems", {}, None)
        ds = Dataset(name="test", kind="problems", job_id=imp)
        s.add(ds)
        s.flush()
        self.problems = []
        for i, subject in enumerate(PROBLEM_SUBJECTS):
            p = Problem(dataset_id=ds.id, job_id=imp, external_id=f"p{i}", subject=subject, question=f"q{i}",
                        answer=str(i), content_hash=f"h{i}")
            s.add(p)
            s.flush()
            self.problems.append(p)

    def job(self, kind: str, params: dict[str, Any], experiment: str | None, status: str = "succeeded") -> int:
        exp = None
        if experiment is not None:
            if experiment not in self.experiments:
                e = Experiment(name=experiment)
                self.s.add(e)
                self.s.flush()
                self.experiments[experiment] = e.id
            exp = self.experiments[experiment]
        job = Job(kind=kind, params=params, experiment_id=exp, status=status)
        self.s.add(job)
        self.s.flush()
        return job.id

    def model(self, name: str, made_by: int | None) -> int:
        m = Model(name=name, format="base" if made_by is None else "lora", fingerprint=name, job_id=made_by)
        self.s.add(m)
        self.s.flush()
        return m.id

    def evaluated(self, experiment: str, model: str, model_id: int, solved: set[int], *, temperature: float = 0.0,
                  n: int = 1, method: str = "greedy") -> int:
        """A sample job of `model` and its evaluate job, whose predictions say the problems `solved` are right."""
        sample = self.job("sample", {"model": model, "problems": "test", "n": n, "temperature": temperature},
                          experiment)
        evaluate = self.job("evaluate", {"sample_job": sample, "solve_job": None}, experiment)
        self.predictions_and_evaluations(evaluate, model_id, method, solved)
        return evaluate

    def predictions_and_evaluations(self, evaluate: int, model_id: int, method: str, solved: set[int]) -> None:
        counts: dict[str, list[int]] = {}
        for p in self.problems:
            ok = p.id in solved
            self.s.add(Prediction(job_id=evaluate, problem_id=p.id, model_id=model_id, method=method, answer="x",
                                  correct=ok, credit=float(ok)))
            for key in ([p.subject] if p.subject else []) + ["all"]:
                c = counts.setdefault(key, [0, 0])
                c[0] += 1
                c[1] += ok
        for subject, (total, right) in counts.items():
            self.s.add(Evaluation(job_id=evaluate, model_id=model_id, method=method, subject=subject, n=total,
                                  n_correct=float(right), accuracy=right / total))
        self.s.flush()


def _seed(db: Any) -> dict[str, Any]:
    rng = random.Random(7)
    with transaction(db.engine()) as s:
        seed = Seeder(s)
        ids = [p.id for p in seed.problems]
        rare = seed.problems[PROBLEM_SUBJECTS.index("rare")].id
        pool = [i for i in ids if i != rare]
        student = seed.model("student", None)
        models = {"base": ("student", student)}
        for setting in TRAINED:
            train = seed.job(f"train-{setting}", {"model": "student"}, "e")
            models[setting] = (f"e-{setting}", seed.model(f"e-{setting}", train))
        evaluate_jobs = {}
        solved = {}
        # Decoys first (smaller job ids), each of which the report must not read:
        seed.evaluated("e", "e-kd", models["kd"][1], set(pool))  # an older evaluation of kd: superseded
        seed.evaluated("e", "e-nat", models["nat"][1], set(pool), temperature=0.8, n=4, method="sc")  # not greedy
        seed.evaluated("other", "e-sft", models["sft"][1], set(pool[:1]))  # another experiment
        solve = seed.job("solve", {"model": "student", "method": "greedy"}, "e")
        solve_eval = seed.job("evaluate", {"solve_job": solve, "sample_job": None}, "e")
        seed.predictions_and_evaluations(solve_eval, student, "greedy", set(pool))  # a RATIONALYST evaluation
        for setting, (name, model_id) in models.items():
            solved[setting] = set(rng.sample(pool, rng.randint(2, 8)))
            evaluate_jobs[setting] = seed.evaluated("e", name, model_id, solved[setting])
    return {"evaluate": evaluate_jobs, "models": models, "solve_eval": solve_eval}


Solved = dict[str, dict[str, set[int]]]  # setting -> subject (or all) -> problem ids


def _recompute(db: Any, evaluate_jobs: dict[str, int]) -> tuple[dict[str, dict[str, Any]], Solved]:
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


def test_report_tdg_tables_recomputed_from_the_prediction_rows(db) -> None:  # type: ignore[no-untyped-def]
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


def test_report_tdg_cli_prints_both_tables_json_and_csv(db) -> None:  # type: ignore[no-untyped-def]
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


def test_report_tdg_gain_is_none_without_an_sft_row_and_an_empty_experiment_is_one_sentence(db) -> None:  # type: ignore[no-untyped-def]
    with transaction(db.engine()) as s:
        seed = Seeder(s)
        train = seed.job("train-kd", {}, "e")
        seed.evaluated("e", "e-kd", seed.model("e-kd", train), {seed.problems[0].id})
        seed.job("probe", {}, "empty")
        zero = seed.job("train-sft", {}, "zero")
        seed.evaluated("zero", "z-sft", seed.model("z-sft", zero), set())
        seed.evaluated("zero", "e-kd", s.scalar(select(Model.id).where(Model.name == "e-kd")), {seed.problems[0].id})
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
