"""Guided solving (A6) and evaluation: the implicit choice, every method end to end, scoring."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rplat.llm import Completion, Message, Sampling
from rplat.methods.guided import SOLVE_METHODS
from rplat.models import (
    Evaluation,
    Job,
    Prediction,
    SolveTrajectory,
    Step,
    StepCandidate,
)
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.runners.rationalyst.kinds import SolveParams
from rplat.runners.rationalyst.solve import Models, Solver, Trajectory
from rplat.store import transaction

import factories as make
from stores import Store
from tiny_lm import register_tiny


class Scripted:
    """A fake backend: fixed candidates, a fixed rationale, and log-probs chosen per continuation."""

    fingerprint = "scripted"

    def __init__(self, candidates: list[str], logprobs: dict[str, list[float]]) -> None:
        self.candidates = candidates
        self.logprobs = logprobs
        self.scored_contexts: list[str] = []

    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        if n == 1 and sampling.greedy:  # the rationale model
            return [[Completion("add the two numbers", (-0.1, -0.2))] for _ in prompts]
        return [[Completion(c, (-1.0,)) for c in self.candidates[:n]] for _ in prompts]

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        self.scored_contexts += list(contexts)
        return [self.logprobs[c] for c in continuations]

    def chat_prompt(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def test_implicit_supervision_picks_the_candidate_with_the_highest_mean_logprob() -> None:
    # Sums would prefer the short candidate (-1.0); means prefer the long one (-0.5 per token).
    backend = Scripted(["3 + 4 = 8.", "3 + 4 = 7.", "Maybe 9."],
                       {"3 + 4 = 8.": [-2.0, -2.0], "3 + 4 = 7.": [-0.5, -0.5, -0.5, -0.5], "Maybe 9.": [-1.0]})
    params = SolveParams(problems="p", method="rationalyst-implicit", rationalyst="r")
    solver = Solver(params, Models(backend, backend, backend), [])  # type: ignore[arg-type]
    t = Trajectory(1, "Tom has 3 apples and buys 4. How many?", "7", 0)
    solver.step([t], 0)
    [record] = t.steps
    assert record.chosen == 1 and record.text == "3 + 4 = 7."
    assert record.scores == [pytest.approx(-2.0), pytest.approx(-0.5), pytest.approx(-1.0)]
    assert record.rationale == "add the two numbers" and record.rationale_logprob == pytest.approx(-0.15)
    assert all(ctx.endswith("assistant: Rationale: add the two numbers") for ctx in backend.scored_contexts)
    assert t.stopped is None


def test_a_step_stating_the_answer_ends_the_trajectory() -> None:
    backend = Scripted(["The answer is: 7"], {})
    solver = Solver(SolveParams(problems="p", method="random-candidate", n_candidates=1),
                    Models(backend, None, None), [])  # type: ignore[arg-type]
    t = Trajectory(1, "q", "7", 0)
    solver.solve([t], lambda: None)
    assert t.stopped == "answer" and len(t.steps) == 1


def test_self_consistency_samples_one_batched_call_per_sample_index_with_its_own_seed() -> None:
    class Recording(Scripted):
        def __init__(self) -> None:
            super().__init__(["3 + 4 = 7."], {})
            self.calls: list[tuple[int, list[str]]] = []

        def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
            self.calls.append((sampling.seed, list(prompts)))
            return [[Completion(f"seed {sampling.seed} for {p[-2:]}", (-1.0,))] for p in prompts]

    backend = Recording()
    solver = Solver(SolveParams(problems="p", method="sc", n_samples=2, seed=5), Models(backend, None, None), [])  # type: ignore[arg-type]
    batch = [Trajectory(pid, f"question q{pid}", "7", k) for pid in (1, 2, 3) for k in (0, 1)]
    solver.step(batch, 0)
    assert [(seed, [p[-2:] for p in prompts]) for seed, prompts in backend.calls] == \
        [(5000, ["q1", "q2", "q3"]), (5001, ["q1", "q2", "q3"])]
    assert [t.steps[0].text for t in batch] == [f"seed {5000 + t.sample_idx} for q{t.problem_id}" for t in batch]


def test_a_job_stored_with_the_old_method_name_sample_loads_as_sc() -> None:
    assert SolveParams.model_validate({"problems": "p", "method": "sample"}).method == "sc"


def test_rationalyst_methods_need_a_rationalyst_model() -> None:
    with pytest.raises(ValueError, match="needs a rationalyst model"):
        SolveParams(problems="p", method="rationalyst-explicit")


@pytest.mark.parametrize("method", SOLVE_METHODS)
def test_every_method_solves_and_evaluates_end_to_end(db: Store, tmp_path: Path, method: str) -> None:
    with transaction(db.engine()) as s:
        register_tiny(s, tmp_path)
    problems = tmp_path / "gsm.jsonl"
    assert db.rplat("generate", "reasoning-gym", "gsm_symbolic", "--size", "3", "--out", str(problems)).returncode == 0
    db.rplat("import", "problems", str(problems), "--dataset", "gsm", "--id-field", "id", "--subject-field",
             "subject", check=True)
    queue = Queue(db.engine())
    solve_job, _ = queue.enqueue("solve", {
        "problems": "gsm", "fewshot": "gsm", "n_fewshot": 1, "model": "tiny", "method": method, "rationalyst": "tiny",
        "max_steps": 2, "step_tokens": 4, "rationale_tokens": 4, "n_samples": 2, "batch_size": 2})
    eval_job, _ = queue.enqueue("evaluate", {"solve_job": solve_job}, after=[solve_job])
    lines: list[str] = []
    Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=30), echo=lines.append).run()
    with transaction(db.engine()) as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([solve_job, eval_job])))}
        assert jobs[solve_job].status == "succeeded", jobs[solve_job].error
        assert jobs[eval_job].status == "succeeded", jobs[eval_job].error
        n_traj = s.scalar(select(func.count()).select_from(SolveTrajectory).where(SolveTrajectory.job_id == solve_job))
        steps = s.scalars(select(Step).where(Step.job_id == solve_job)).all()
        candidates = s.scalars(select(StepCandidate).where(StepCandidate.job_id == solve_job)).all()
        predictions = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.job_id == eval_job))
        overall = s.scalar(select(Evaluation).where(Evaluation.job_id == eval_job, Evaluation.subject == "all"))
    assert n_traj == (6 if method == "sc" else 3)
    assert re.fullmatch(rf"job {solve_job} \(solve\): succeeded, {n_traj}/{n_traj} in \d+ s", lines[1]), lines
    assert predictions == 3
    assert overall is not None and overall.n == 3 and 0.0 <= overall.accuracy <= 1.0
    assert steps and all(1 <= st.step_idx + 1 <= 2 for st in steps)
    per_step = 3 if method in ("random-candidate", "rationalyst-implicit", "rationalyst-explicit") else 1
    assert len(candidates) == per_step * len(steps)
    assert sum(c.chosen for c in candidates) == len(steps)
    if method.startswith("rationalyst"):
        assert all(st.rationale_text is not None for st in steps)
        assert all(c.score is not None for c in candidates)


def test_evaluate_votes_an_old_sample_job_as_sc_with_tie_credit_and_micro_accuracy(db: Store) -> None:
    # (gold, subject, the normalized answers of the job's samples)
    problems = [("7", "algebra", ["7", "7", "8"]), ("3", "algebra", ["4", "3"]), ("5", "geometry", [None, "6"])]
    with transaction(db.engine()) as s:
        importer = make.job(s, "import-problems")
        make.model(s, "tiny")
        dataset = make.dataset(s, "gsm", importer)
        # Stored before self-consistency was called `sc`: the job's JSON still says "sample".
        solve = make.job(s, "solve", {"problems": "gsm", "model": "tiny", "method": "sample"})
        rows = make.problems(s, dataset, [{"external_id": f"p{k}", "subject": subject, "question": f"q{k}",
                                           "answer": gold} for k, (gold, subject, _) in enumerate(problems)])
        for problem, (gold, _, answers) in zip(rows, problems, strict=True):
            s.add_all([SolveTrajectory(job_id=solve.id, problem_id=problem.id, sample_idx=i, method="sample",
                                       final_text=str(a), prediction=a, normalized_pred=a, correct=a == gold,
                                       n_steps=1, stopped_reason="answer") for i, a in enumerate(answers)])
        solve_id = solve.id
    queue = Queue(db.engine())
    eval_job, _ = queue.enqueue("evaluate", {"solve_job": solve_id})
    Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    with transaction(db.engine()) as s:
        assert s.get(Job, eval_job).status == "succeeded", s.get(Job, eval_job).error
        got = [(p.method, p.answer, p.vote_mass, p.tie_size, p.credit, p.correct) for p in s.scalars(
            select(Prediction).where(Prediction.job_id == eval_job).order_by(Prediction.problem_id))]
        accuracy = {e.subject: (e.method, e.n, e.n_correct, e.accuracy) for e in s.scalars(
            select(Evaluation).where(Evaluation.job_id == eval_job))}
    assert got == [("sc", "7", 2.0, 1, 1.0, True), ("sc", "3", 1.0, 2, 0.5, False), ("sc", "6", 1.0, 1, 0.0, False)]
    assert accuracy == {"algebra": ("sc", 2, 1.5, 0.75), "geometry": ("sc", 1, 0.0, 0.0), "all": ("sc", 3, 1.5, 0.5)}


def test_evaluating_a_solve_job_whose_params_no_longer_fit_fails_with_one_sentence(db: Store) -> None:
    with transaction(db.engine()) as s:
        solve_id = make.job(s, "solve", {"problems": "gsm", "method": "beam-search"}).id
    queue = Queue(db.engine())
    eval_job, _ = queue.enqueue("evaluate", {"solve_job": solve_id})
    Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    with transaction(db.engine()) as s:
        job = s.get(Job, eval_job)
        assert job.status == "failed" and job.attempts == 1
        assert job.error.startswith(f"solve_job {solve_id}'s stored params no longer fit kind 'solve': ")
