"""Guided solving (A6) and evaluation: the implicit choice, every method end to end on a tiny model, and scoring."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import func, select

from rplat.llm import Completion, Message, Sampling
from rplat.models import Evaluation, Job, Prediction, SolveTrajectory, Step, StepCandidate
from rplat.queue import Queue
from rplat.registry import register_model
from rplat.runners.kinds import SolveParams
from rplat.runners.loop import Runner, RunnerOptions
from rplat.runners.solve import Models, Solver, Trajectory, self_consistency
from rplat.store import transaction

from tiny_lm import save_tiny


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
    solver = Solver(SolveParams(problems="p", method="sample", n_samples=2, seed=5), Models(backend, None, None), [])  # type: ignore[arg-type]
    batch = [Trajectory(pid, f"question q{pid}", "7", k) for pid in (1, 2, 3) for k in (0, 1)]
    solver.step(batch, 0)
    assert [(seed, [p[-2:] for p in prompts]) for seed, prompts in backend.calls] == \
        [(5000, ["q1", "q2", "q3"]), (5001, ["q1", "q2", "q3"])]
    assert [t.steps[0].text for t in batch] == [f"seed {5000 + t.sample_idx} for q{t.problem_id}" for t in batch]


def test_self_consistency_reports_ties() -> None:
    assert self_consistency(["7", "8", "7", None]) == ("7", 2.0, ["7"])
    assert self_consistency(["7", "8"]) == ("7", 1.0, ["7", "8"])
    assert self_consistency([None]) == (None, 0.0, [])


def test_rationalyst_methods_need_a_rationalyst_model() -> None:
    with pytest.raises(ValueError, match="needs a rationalyst model"):
        SolveParams(problems="p", method="rationalyst-explicit")


@pytest.mark.parametrize("method", ["greedy", "sample", "random-candidate", "rationalyst-implicit",
                                    "rationalyst-explicit"])
def test_every_method_solves_and_evaluates_end_to_end(db, tmp_path, method: str) -> None:  # type: ignore[no-untyped-def]
    with transaction(db.engine()) as s:
        register_model(s, "tiny", "base", save_tiny(tmp_path / "tiny"), role="agent")
    problems = tmp_path / "gsm.jsonl"
    assert db.rplat("generate", "reasoning-gym", "gsm_symbolic", "--size", "3", "--out", str(problems)).returncode == 0
    db.rplat("import", "problems", str(problems), "--dataset", "gsm", "--id-field", "id", "--subject-field",
             "subject", check=True)
    queue = Queue(db.engine())
    solve_job, _ = queue.enqueue("solve", {
        "problems": "gsm", "fewshot": "gsm", "n_fewshot": 1, "model": "tiny", "method": method, "rationalyst": "tiny",
        "max_steps": 2, "step_tokens": 4, "rationale_tokens": 4, "n_samples": 2, "batch_size": 2})
    eval_job, _ = queue.enqueue("evaluate", {"solve_job": solve_job}, after=[solve_job])
    Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    with transaction(db.engine()) as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([solve_job, eval_job])))}
        assert jobs[solve_job].status == "succeeded", jobs[solve_job].error
        assert jobs[eval_job].status == "succeeded", jobs[eval_job].error
        n_traj = s.scalar(select(func.count()).select_from(SolveTrajectory).where(SolveTrajectory.job_id == solve_job))
        steps = s.scalars(select(Step).where(Step.job_id == solve_job)).all()
        candidates = s.scalars(select(StepCandidate).where(StepCandidate.job_id == solve_job)).all()
        predictions = s.scalar(select(func.count()).select_from(Prediction).where(Prediction.job_id == eval_job))
        overall = s.scalar(select(Evaluation).where(Evaluation.job_id == eval_job, Evaluation.subject == "all"))
    assert n_traj == (6 if method == "sample" else 3)
    assert predictions == 3
    assert overall is not None and overall.n == 3 and 0.0 <= overall.accuracy <= 1.0
    assert steps and all(1 <= st.step_idx + 1 <= 2 for st in steps)
    per_step = 3 if method in ("random-candidate", "rationalyst-implicit", "rationalyst-explicit") else 1
    assert len(candidates) == per_step * len(steps)
    assert sum(c.chosen for c in candidates) == len(steps)
    if method.startswith("rationalyst"):
        assert all(st.rationale_text is not None for st in steps)
        assert all(c.score is not None for c in candidates)
