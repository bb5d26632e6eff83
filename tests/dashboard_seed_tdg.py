"""A small, fully hand-known Turning-Dust-into-Gold world for the dashboard's tests: chains, votes, training.

Four test problems; teacher chains from two teachers (two of them judged differently by the two labelers); a
sample job with 4 samples per problem, their ranker scores, and an aggregate job's predictions for greedy, sc
and asc-f0..f3 computed by hand from those samples (see VOTES); two training jobs' metrics and NAT's w_neg.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from rplat.models import NatWNeg, RankerScore, TrainingMetric
from rplat.store import transaction

import factories as make
from stores import Store

T0 = dt.datetime(2026, 2, 2, 9, 0, 0)
# Every job ran once, from T0 + 5 s to T0 + 65 s.
RAN: dict[str, Any] = {"attempts": 1, "progress_done": 1, "progress_total": 1, "created_at": T0,
                       "started_at": T0 + dt.timedelta(seconds=5), "finished_at": T0 + dt.timedelta(seconds=65)}
EXPERIMENT = "tdg-dash"
STUDENT = "student"
RANKER = "ranker-dash"

# (question, gold, subject, level)
PROBLEMS = [
    ("What is 2 + 3?", "5", "Algebra", "Level 1"),
    ("What is 7 * 6?", "42", "Algebra", "Level 2"),
    ("What is 10 - 4?", "6", "Prealgebra", "Level 1"),
    ("What is 9 + 9?", "18", "Prealgebra", "Level 3"),
]

# (problem index, teacher, sample_idx, chain, extracted answer, hendrycks_correct, math_verify_correct); the label
# is the Hendrycks verdict. The two labelers disagree on the two unboxed right answers (problems 1 and 2).
CHAINS = [
    (0, "gpt-3.5", 0, "2 + 3 = 5, so \\boxed{5}.", "5", True, True),
    (0, "gpt-3.5", 1, "2 + 3 = 6, so \\boxed{6}.", "6", False, False),
    (1, "gpt-3.5", 0, "7 * 6 = 42. The answer is 42.", "42", False, True),
    (1, "gpt-3.5", 1, "7 * 6 = 48, so \\boxed{48}.", "48", False, False),
    (2, "gpt-3.5", 0, "10 - 4 = 6, so \\boxed{6}.", "6", True, True),
    (2, "gpt-3.5", 1, "10 - 4 = 6\n#### 6", "6", False, True),
    (3, "gpt-3.5", 0, "9 + 9 = 19, so \\boxed{19}.", "19", False, False),
    (3, "gpt-3.5", 1, "9 + 9 = 81, so \\boxed{81}.", "81", False, False),
    (0, "smol", 0, "\\boxed{5}", "5", True, True),
    (3, "smol", 0, "\\boxed{18}", "18", True, True),
]

# Per problem: the 4 samples' extracted answers (None: none extracted) and their ranker scores (binary fractions,
# so every vote mass below is exact).
SAMPLES = [
    (["5", "5", "6", "7"], [0.875, 0.75, 0.125, 0.25]),
    (["41", "41", "42", None], [0.125, 0.25, 0.875, 0.5]),
    (["6", "4", "4", "6"], [0.875, 0.25, 0.375, 0.625]),
    (["17", "19", "17", None], [0.375, 0.625, 0.25, 0.5]),
]
GREEDY = ["5", "42", "4", "16"]

# method -> per problem (answer, vote_mass, tie_size, margin, credit), by hand from SAMPLES with f0 = 1,
# f1 = 1 + 2s, f2 = 1 + s, f3 = s; a tie's answer is the first of the tied answers in sorted order.
VOTES: dict[str, list[tuple[str, float, int, float, float]]] = {
    "sc": [("5", 2.0, 1, 1.0, 1.0), ("41", 2.0, 1, 1.0, 0.0), ("4", 2.0, 2, 0.0, 0.5), ("17", 2.0, 1, 1.0, 0.0)],
    "asc-f0": [("5", 2.0, 1, 1.0, 1.0), ("41", 2.0, 1, 1.0, 0.0), ("4", 2.0, 2, 0.0, 0.5),
               ("17", 2.0, 1, 1.0, 0.0)],
    "asc-f1": [("5", 5.25, 1, 3.75, 1.0), ("41", 2.75, 2, 0.0, 0.5), ("6", 5.0, 1, 1.75, 1.0),
               ("17", 3.25, 1, 1.0, 0.0)],
    "asc-f2": [("5", 3.625, 1, 2.375, 1.0), ("41", 2.375, 1, 0.5, 0.0), ("6", 3.5, 1, 0.875, 1.0),
               ("17", 2.625, 1, 1.0, 0.0)],
    "asc-f3": [("5", 1.625, 1, 1.375, 1.0), ("42", 0.875, 1, 0.5, 1.0), ("6", 1.5, 1, 0.875, 1.0),
               ("17", 0.625, 2, 0.0, 0.0)],
}
METHODS = ["greedy", *VOTES]
# The tied answers recorded with two of the ties (by hand from SAMPLES); the others' stay unrecorded, as a job
# written before predictions.tied_answers leaves them.
TIED = {("sc", 2): '["4", "6"]', ("asc-f1", 1): '["41", "42"]'}

# Per training job: (step, loss, lr, extra). eval_loss every second step; grad_norm every step.
TRAINING = {
    "train-neg": [(1, 2.0, 1e-4, {"grad_norm": 4.0}), (2, 1.5, 2e-4, {"grad_norm": 3.0, "eval_loss": 2.5}),
                  (3, 1.25, 2e-4, {"grad_norm": 2.0}), (4, 1.0, 1e-4, {"grad_norm": 1.0, "eval_loss": 2.0})],
    "train-nat": [(1, 3.0, 1e-4, {"grad_norm": 8.0}), (2, 2.5, 2e-4, {"grad_norm": 6.0, "eval_loss": 3.5}),
                  (3, 2.0, 2e-4, {"grad_norm": 4.0}), (4, 1.75, 1e-4, {"grad_norm": 2.0, "eval_loss": 3.0})],
}
# train-nat's (step, layer, proj, mean_w_neg)
NAT_ALPHA = [(2, 0, "q_proj", -0.25), (2, 0, "v_proj", -0.125), (2, 1, "q_proj", 0.125), (2, 1, "v_proj", 0.25),
             (4, 0, "q_proj", -0.375), (4, 0, "v_proj", -0.25), (4, 1, "q_proj", 0.25), (4, 1, "v_proj", 0.375)]


def seed_tdg(store: Store) -> dict[str, int]:
    """Fill the store with the world above; returns the ids of its jobs, models and problems by name."""
    with transaction(store.engine()) as s:
        experiment = make.experiment(s, EXPERIMENT)
        imported = make.job(s, "import-problems", experiment=experiment, **RAN)
        dataset = make.dataset(s, "math-test", imported)
        student = make.model(s, STUDENT, role="agent", job=imported)
        problems = make.problems(s, dataset, [
            {"external_id": f"m{k}", "benchmark": "math", "split": "test", "subject": subject, "level": level,
             "question": q, "answer": gold} for k, (q, gold, subject, level) in enumerate(PROBLEMS)])
        ids: dict[str, int] = {"experiment": experiment.id, "student": student.id,
                               **{f"problem{k}": p.id for k, p in enumerate(problems)}}

        chain_jobs = {"gpt-3.5": make.job(s, "import-chains", {"teacher": "gpt-3.5"}, experiment=experiment, **RAN),
                      "smol": make.job(s, "collect-chains", {"problems": "math-test", "teacher": "smol"},
                                       experiment=experiment, model=student, **RAN)}
        ids.update({f"chains-{t}": job.id for t, job in chain_jobs.items()})
        for k, teacher, idx, text, answer, hendrycks, verify in CHAINS:
            make.chain(s, problems[k], teacher, text, "pos" if hendrycks else "neg", sample_idx=idx,
                       job=chain_jobs[teacher], extracted_answer=answer, labeler="hendrycks",
                       hendrycks_correct=hendrycks, math_verify_correct=verify)

        training = {kind: make.job(s, kind, {"problems": "math-test", "teacher": "gpt-3.5",
                                             "adapter_name": f"{kind[6:]}-dash"},
                                   experiment=experiment, model=student, **RAN) for kind in TRAINING}
        for kind, rows in TRAINING.items():
            ids[kind] = training[kind].id
            s.add_all([TrainingMetric(job_id=training[kind].id, step=step, loss=loss, lr=lr, extra=extra)
                       for step, loss, lr, extra in rows])
        s.add_all([NatWNeg(job_id=training["train-nat"].id, step=step, layer=layer, proj=proj, mean_w_neg=w)
                   for step, layer, proj, w in NAT_ALPHA])
        train_ranker = make.job(s, "train-ranker", {"problems": "math-test", "teacher": "gpt-3.5",
                                                    "ranker_name": RANKER}, experiment=experiment, **RAN)
        ranker = make.model(s, RANKER, "ranker", role="ranker", job=train_ranker)

        greedy_job = make.job(s, "sample", {"problems": "math-test", "n": 1, "temperature": 0.0},
                              experiment=experiment, model=student, **RAN)
        sample_job = make.job(s, "sample", {"problems": "math-test", "n": 4, "temperature": 0.7},
                              experiment=experiment, model=student, **RAN)
        score_job = make.job(s, "score-samples", {"sample_job": sample_job.id, "ranker": RANKER},
                             experiment=experiment, **RAN)
        aggregate = make.job(s, "aggregate", {"sample_job": sample_job.id, "score_job": score_job.id,
                                              "greedy_job": greedy_job.id}, experiment=experiment, **RAN)
        ids.update({"train-ranker": train_ranker.id, "ranker": ranker.id, "greedy-sample": greedy_job.id,
                    "sample": sample_job.id, "score-samples": score_job.id, "aggregate": aggregate.id})
        for problem, answer in zip(problems, GREEDY, strict=True):
            make.sample(s, greedy_job, problem, student, f"The answer is {answer}.", sample_idx=0, decoding="greedy",
                        extracted_answer=answer, correct=answer == problem.answer, finish_reason="stop")
        for problem, (answers, scores) in zip(problems, SAMPLES, strict=True):
            for idx, (answer, score) in enumerate(zip(answers, scores, strict=True)):
                sample = make.sample(s, sample_job, problem, student,
                                     f"... so the answer is {answer}." if answer else "...", sample_idx=idx,
                                     decoding="sample", extracted_answer=answer, correct=answer == problem.answer,
                                     finish_reason="stop" if answer else "length")
                s.add(RankerScore(job_id=score_job.id, sample_id=sample.id, ranker_model_id=ranker.id, score=score,
                                  truncated=False))

        votes = {"greedy": [(a, 1.0, 1, 1.0, float(a == p[1])) for a, p in zip(GREEDY, PROBLEMS, strict=True)],
                 **VOTES}
        for method, voted in votes.items():
            credits = {}
            for k, (problem, (answer, mass, tie, margin, credit)) in enumerate(zip(problems, voted, strict=True)):
                make.prediction(s, aggregate, problem, student, method, answer, credit, vote_mass=mass, tie_size=tie,
                                margin=margin, tied_answers=TIED.get((method, k)))
                credits[problem] = credit
            make.evaluations(s, aggregate, student, method, credits)
    return ids
