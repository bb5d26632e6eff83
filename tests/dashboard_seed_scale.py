"""A MATH-like store at the scale of the released teacher chains, for the dashboard's scale test: 7,500 problems
keyed by 64-character content hashes, 14 chains each (105,000), and one aggregate run's votes over every problem.

Bulk inserts (SQLAlchemy Core executemany, batched multi-row VALUES on both backends): a few seconds, not the
minutes the ORM would take. Every question is "... {WORDS[k % 50]} ... {NOUNS[k // 50]} ...", so two question
words name exactly one problem (`words_of`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import insert

from rplat.models import Dataset, Evaluation, Experiment, Job, Model, Prediction, Problem, TeacherChain
from rplat.store import transaction

from stores import Store

PROBLEMS = 7_500
TEACHERS = {"gpt-3.5": 7, "gpt-4": 7}  # chains per problem of each teacher
SUBJECTS = ["Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory", "Prealgebra",
            "Precalculus"]
WORDS = [f"{w}" for w in (
    "apple", "bridge", "candle", "dragon", "engine", "forest", "garden", "harbor", "island", "jungle", "kettle",
    "ladder", "magnet", "needle", "orange", "parrot", "quartz", "rabbit", "saddle", "tunnel", "umbrella", "violin",
    "walnut", "yogurt", "zephyr", "anchor", "basket", "cactus", "dolphin", "emerald", "falcon", "glacier", "hammer",
    "igloo", "jasmine", "kayak", "lantern", "meadow", "nutmeg", "oyster", "pebble", "quiver", "ribbon", "saffron",
    "thimble", "velvet", "whistle", "yarrow", "zigzag", "acorn")]
NOUNS = [f"token{n:03d}" for n in range(PROBLEMS // len(WORDS))]
T0 = dt.datetime(2026, 3, 1, 9, 0, 0)
RAN: dict[str, Any] = {"status": "succeeded", "attempts": 1, "progress_done": 1, "progress_total": 1,
                       "created_at": T0, "started_at": T0, "finished_at": T0 + dt.timedelta(minutes=5)}
BATCH = 5_000


def external_id(k: int) -> str:
    return hashlib.sha256(f"math-{k}".encode()).hexdigest()


def words_of(k: int) -> str:
    """Two question words only problem k has."""
    return f"{WORDS[k % len(WORDS)]} {NOUNS[k // len(WORDS)]}"


def question(k: int) -> str:
    return (f"A {WORDS[k % len(WORDS)]} costs $\\frac{{{k}}}{{7}}$ dollars and a {NOUNS[k // len(WORDS)]} twice "
            f"as much. What is the total cost of $3$ of each, in dollars?")


def _chain(k: int, teacher: str, idx: int) -> tuple[str, str, bool, bool]:
    """(text, extracted answer, Hendrycks' verdict, math-verify's) of one chain; about one in 40 is a right answer
    left unboxed, on which the two labelers disagree."""
    gold = str(9 * k)
    right = (k + idx) % 3 != 0
    answer = gold if right else str(9 * k + 1)
    unboxed = right and (k * 7 + idx) % 40 == 0
    steps = " ".join(f"Step {s}: we multiply and add the {WORDS[(k + s) % len(WORDS)]} terms." for s in range(8))
    ending = f"The answer is {answer}." if unboxed else f"So the answer is $\\boxed{{{answer}}}$."
    return f"{teacher} solution {idx}. {steps} {ending}", answer, right and not unboxed, right


def _insert(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), BATCH):
        conn.execute(insert(table), rows[start:start + BATCH])


def seed_scale(store: Store, problems: int = PROBLEMS, sc_alone: int | None = None) -> dict[str, Any]:
    """Fill the store; returns the ids of its jobs and the number of chains. The three runs solve the same problems
    (three in four), but for problem `sc_alone` when given: sc alone solves it, a combination of its own on
    Intersections."""
    engine = store.engine()
    with transaction(engine) as s:
        experiment = Experiment(name="math-scale")
        s.add(experiment)
        s.flush()
        jobs = {name: Job(kind=kind, params=params, experiment_id=experiment.id, **RAN) for name, kind, params in [
            ("import", "import-problems", {"benchmark": "math"}),
            *((t, "import-chains", {"teacher": t}) for t in TEACHERS),
            ("sample", "sample", {"problems": "math-test", "n": 8}),
            ("aggregate", "aggregate", {"sample_job": 0})]}
        s.add_all(jobs.values())
        s.flush()
        jobs["aggregate"].params = {"sample_job": jobs["sample"].id}
        dataset = Dataset(name="math-test", kind="problems", job_id=jobs["import"].id)
        student = Model(name="student", format="base", fingerprint="0" * 64, job_id=jobs["import"].id)
        s.add_all([dataset, student])
        s.flush()
        ids = {name: job.id for name, job in jobs.items()} | {"dataset": dataset.id, "student": student.id}
    with engine.begin() as conn:
        _insert(conn, Problem.__table__, [
            {"dataset_id": ids["dataset"], "job_id": ids["import"], "external_id": external_id(k), "benchmark": "math",
             "split": "test", "subject": SUBJECTS[k % len(SUBJECTS)], "level": f"Level {k % 5 + 1}",
             "question": question(k), "solution": f"Each costs ... so $\\boxed{{{9 * k}}}$.", "answer": str(9 * k),
             "content_hash": external_id(k)} for k in range(problems)])
        first = conn.exec_driver_sql("SELECT min(id) FROM problems").scalar_one()
        chains = []
        for teacher, n in TEACHERS.items():
            for k in range(problems):
                for idx in range(n):
                    text, answer, hendrycks, verify = _chain(k, teacher, idx)
                    chains.append({"job_id": ids[teacher], "problem_id": first + k, "teacher": teacher,
                                   "sample_idx": idx, "text": text, "extracted_answer": answer,
                                   "label": "pos" if hendrycks else "neg", "labeler": "hendrycks",
                                   "hendrycks_correct": hendrycks, "math_verify_correct": verify,
                                   "n_chars": len(text)})
        _insert(conn, TeacherChain.__table__, chains)
        predictions, evaluations = [], []
        for method in ("greedy", "sc", "asc-f1"):
            credits = [float(method == "sc") if k == sc_alone else 1.0 if (k + len(method)) % 4 else 0.0
                       for k in range(problems)]
            predictions += [{"job_id": ids["aggregate"], "problem_id": first + k, "model_id": ids["student"],
                             "method": method, "answer": str(9 * k if c else 9 * k + 1), "correct": c == 1.0,
                             "credit": c, "vote_mass": 5.0, "tie_size": 1, "margin": 2.0}
                            for k, c in enumerate(credits)]
            evaluations.append({"job_id": ids["aggregate"], "model_id": ids["student"], "method": method,
                                "subject": "all", "n": problems, "n_correct": sum(credits),
                                "accuracy": sum(credits) / problems})
        _insert(conn, Prediction.__table__, predictions)
        _insert(conn, Evaluation.__table__, evaluations)
    return ids | {"chains": len(chains), "first_problem": first}
