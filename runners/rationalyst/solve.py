"""`solve` (RATIONALYST A6) step by step, with or without rationale guidance (`evaluate` judges the result).

All trajectories of a chunk of problems advance one step together, so every model call is one batch. Each
chunk is written in one fenced transaction: trajectories, their steps, and every candidate with its score.
A re-claimed job skips the problems already written; the generation cache replays a half-done chunk's
calls, so it reaches the same choices without asking the model again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rplat.llm import Backend, Completion, Sampling
from rplat.llm.cache import CachedBackend
from rplat.llm.load import open_backend
from rplat.llm.resolve import BackendSpec, prepare_backend
from rplat.lookup import dataset_id
from rplat.methods.answers import extract_answer, has_final_answer, is_correct, normalize
from rplat.methods.guided import (
    GUIDED,
    agent_messages,
    choose,
    fewshot_messages,
    mean_logprob,
    scorer_messages,
    trajectory_text,
)
from rplat.models import Problem, SolveTrajectory, Step, StepCandidate
from rplat.prompts import TEMPLATES, ensure_template
from rplat.reviews import problem_answer
from rplat.runners.framework.context import JobContext
from rplat.runners.rationalyst.kinds import SolveParams


@dataclass
class StepRecord:
    text: str
    chosen: int
    candidates: list[Completion]
    scores: list[float | None]
    rationale: str | None = None
    rationale_logprob: float | None = None


@dataclass
class Trajectory:
    problem_id: int
    question: str
    gold: str | None
    sample_idx: int
    steps: list[StepRecord] = field(default_factory=list)
    stopped: str | None = None

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.steps]


@dataclass
class Models:
    agent: CachedBackend
    rationalyst: CachedBackend | None
    scorer: CachedBackend | None


def _cached(ctx: JobContext, backend: Backend) -> CachedBackend:
    return CachedBackend(backend, ctx.engine, job_id=ctx.job_id)


class Solver:
    """Advances a batch of trajectories one step at a time with the chosen method."""

    def __init__(self, p: SolveParams, models: Models, fewshot: list[dict[str, str]]) -> None:
        self.p = p
        self.m = models
        self.fewshot = fewshot
        self.agent_system = TEMPLATES["agent-gsm8k"].system
        self.scorer_system = TEMPLATES["implicit-scorer"].system

    def _agent_prompt(self, t: Trajectory) -> str:
        rationales = [s.rationale for s in t.steps] if self.p.method == "rationalyst-explicit" else []
        return self.m.agent.chat_prompt(agent_messages(self.agent_system, self.fewshot, t.question, t.texts,
                                                       rationales))

    def _candidates(self, active: list[Trajectory]) -> list[list[Completion]]:
        p = self.p
        prompts = [self._agent_prompt(t) for t in active]
        if p.method == "greedy":
            return self.m.agent.generate(prompts, Sampling(max_tokens=p.step_tokens, stop=("\n",)))
        if p.method == "sc":
            # One seed per sample index, so sample k of a problem differs from sample j from the first step on;
            # the k-th samples of all problems share one batched call.
            out: list[list[Completion]] = [[] for _ in active]
            for k in sorted({t.sample_idx for t in active}):
                rows = [i for i, t in enumerate(active) if t.sample_idx == k]
                sampling = Sampling(temperature=p.temperature, max_tokens=p.step_tokens, stop=("\n",),
                                    seed=p.seed * 1000 + k)
                for i, completions in zip(rows, self.m.agent.generate([prompts[i] for i in rows], sampling),
                                          strict=True):
                    out[i] = completions
            return out
        sampling = Sampling(temperature=p.temperature, max_tokens=p.step_tokens, stop=("\n",), seed=p.seed)
        return self.m.agent.generate(prompts, sampling, n=p.n_candidates)

    def _rationales(self, texts: list[str]) -> list[Completion]:
        assert self.m.rationalyst is not None
        prompts = [self.m.rationalyst.chat_prompt([{"role": "user", "content": text}]) for text in texts]
        return [c[0] for c in self.m.rationalyst.generate(prompts, Sampling(max_tokens=self.p.rationale_tokens))]

    def step(self, active: list[Trajectory], step_idx: int) -> None:
        p = self.p
        candidates = self._candidates(active)
        if p.method in ("greedy", "sc"):
            records = [StepRecord(c[0].text.strip(), 0, c, [None]) for c in candidates]
        elif p.method == "random-candidate":
            records = []
            for t, cands in zip(active, candidates, strict=True):
                rng = random.Random(f"{p.seed}:{t.problem_id}:{t.sample_idx}:{step_idx}")
                k = rng.randrange(len(cands))
                records.append(StepRecord(cands[k].text.strip(), k, cands, [None] * len(cands)))
        elif p.method == "rationalyst-implicit":
            rats = self._rationales([trajectory_text(t.question, t.texts) for t in active])
            assert self.m.scorer is not None
            contexts, conts = [], []
            for t, r, cands in zip(active, rats, candidates, strict=True):
                ctx_text = self.m.scorer.chat_prompt(
                    scorer_messages(self.scorer_system, self.fewshot, t.question, t.texts, r.text.strip()))
                contexts += [ctx_text] * len(cands)
                conts += [c.text.strip() for c in cands]
            scored = self.m.scorer.score(contexts, conts)
            records, pos = [], 0
            for r, cands in zip(rats, candidates, strict=True):
                scores = [mean_logprob(scored[pos + k]) for k in range(len(cands))]
                pos += len(cands)
                k = choose(scores)
                records.append(StepRecord(cands[k].text.strip(), k, cands, list(scores), r.text.strip(),
                                          mean_logprob(r.token_logprobs)))
        else:  # rationalyst-explicit
            texts = [trajectory_text(t.question, [*t.texts, c.text.strip()])
                     for t, cands in zip(active, candidates, strict=True) for c in cands]
            rats = self._rationales(texts)
            records, pos = [], 0
            for cands in candidates:
                mine = rats[pos:pos + len(cands)]
                pos += len(cands)
                scores = [mean_logprob(r.token_logprobs) for r in mine]
                k = choose(scores)
                records.append(StepRecord(cands[k].text.strip(), k, cands, list(scores), mine[k].text.strip(),
                                          scores[k]))
        for t, record in zip(active, records, strict=True):
            t.steps.append(record)
            if has_final_answer(record.text):
                t.stopped = "answer"
            elif not record.text:
                t.stopped = "empty-step"

    def solve(self, batch: list[Trajectory], check: Any) -> None:
        for step_idx in range(self.p.max_solve_steps):
            active = [t for t in batch if t.stopped is None]
            if not active:
                return
            check()
            self.step(active, step_idx)
        for t in batch:
            if t.stopped is None:
                t.stopped = "max-steps"


def _write(session: Session, job_id: int, method: str, batch: list[Trajectory]) -> None:
    """Write a chunk's trajectories; one the job already wrote (a replayed chunk) is left as it is. The caller's
    fenced transaction makes this job's runner the only writer, so check-then-insert cannot race."""
    existing = set(session.execute(select(SolveTrajectory.problem_id, SolveTrajectory.sample_idx).where(
        SolveTrajectory.job_id == job_id,
        SolveTrajectory.problem_id.in_({t.problem_id for t in batch}))).all())
    for t in batch:
        if (t.problem_id, t.sample_idx) in existing:
            continue
        prediction = extract_answer(" ".join(t.texts))
        traj = SolveTrajectory(
            job_id=job_id, problem_id=t.problem_id, sample_idx=t.sample_idx, method=method,
            final_text=trajectory_text(t.question, t.texts), prediction=prediction,
            normalized_pred=normalize(prediction), correct=is_correct(prediction, t.gold), n_steps=len(t.steps),
            stopped_reason=t.stopped or "max-steps")
        session.add(traj)
        session.flush()
        for k, s in enumerate(t.steps):
            step = Step(job_id=job_id, trajectory_id=traj.id, step_idx=k, rationale_text=s.rationale,
                        rationale_mean_logprob=s.rationale_logprob, chosen_candidate_idx=s.chosen, text=s.text)
            session.add(step)
            session.flush()
            session.add_all([StepCandidate(job_id=job_id, step_id=step.id, candidate_idx=j, text=c.text.strip(),
                                           token_logprobs=list(c.token_logprobs),
                                           score=s.scores[j] if j < len(s.scores) else None, chosen=j == s.chosen)
                             for j, c in enumerate(s.candidates)])


def run(ctx: JobContext, p: SolveParams) -> dict[str, Any]:
    def prepare(name: str) -> BackendSpec:
        return prepare_backend(ctx.engine, name, backend=p.backend, endpoint=p.endpoint, home=ctx.home)

    agent_spec = prepare(p.model)
    rationalyst_spec = prepare(p.rationalyst) if p.method in GUIDED and p.rationalyst else None
    scorer_spec = prepare(p.scorer or p.model) if p.method == "rationalyst-implicit" else None
    through = ctx.reviews_seen()  # the gold answers as reviewed
    with ctx.transaction() as s:
        for name in ("agent-gsm8k", "implicit-scorer"):
            ensure_template(s, TEMPLATES[name])
        problems_id = dataset_id(s, p.problems, "problems")
        examples: list[tuple[str, str]] = []
        if p.fewshot and p.n_fewshot:
            pool = s.execute(select(Problem.question, Problem.solution).where(
                Problem.dataset_id == dataset_id(s, p.fewshot, "problems"), Problem.solution.is_not(None)
            ).order_by(Problem.id)).all()
            examples = [(q, sol) for q, sol in random.Random(p.seed).sample(list(pool), min(p.n_fewshot, len(pool)))]
        problems = s.execute(select(Problem.id, Problem.question, problem_answer(through).label("answer"))
                             .where(Problem.dataset_id == problems_id).order_by(Problem.id)).all()
        written = set(s.execute(select(SolveTrajectory.problem_id, SolveTrajectory.sample_idx)
                                .where(SolveTrajectory.job_id == ctx.job_id)).all())
    if p.limit is not None:
        problems = problems[:p.limit]
    samples = p.n_samples if p.method == "sc" else 1
    todo = [Trajectory(pid, q, gold, k) for pid, q, gold in problems for k in range(samples)
            if (pid, k) not in written]
    agent, rationalyst, scorer = (open_backend(spec) if spec else None
                                  for spec in (agent_spec, rationalyst_spec, scorer_spec))
    models = Models(_cached(ctx, agent), _cached(ctx, rationalyst) if rationalyst else None,
                    _cached(ctx, scorer) if scorer else None)
    solver = Solver(p, models, fewshot_messages(examples))
    total = len(problems) * samples
    done = total - len(todo)
    ctx.progress(done, total)
    for start in range(0, len(todo), p.batch_size):
        batch = todo[start:start + p.batch_size]
        solver.solve(batch, ctx.check)
        with ctx.transaction() as s:
            _write(s, ctx.job_id, p.method, batch)
        done += len(batch)
        ctx.progress(done, total)
    with ctx.read() as s:
        n, correct = s.execute(select(func.count(), func.count().filter(SolveTrajectory.correct.is_(True)))
                               .where(SolveTrajectory.job_id == ctx.job_id)).one()
    return {"trajectories": n, "correct": correct, "method": p.method,
            "agent_cache_misses": models.agent.misses, "agent_cache_hits": models.agent.hits}

