"""Whole chains of thought: `collect-chains` (TDG B1) and `sample` (B6; `evaluate` judges a sample job).

Both generating kinds prompt with `Problem:\\n{q}\\nSolution:` after few-shot demonstrations, stop where the
model starts another problem, and ask the model only for what is not stored yet: each batch of problems is one
`generate` call with `n_samples` samples per prompt (the hf backend encodes a prompt once for them), through the
generation cache, committed in one fenced transaction with insert-ignore writes. A killed job resumes at the
first batch it had not committed, and that batch's chains come back from the cache.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rplat.chainsets import relabel
from rplat.errors import UserError
from rplat.llm import Backend, Completion, Sampling
from rplat.llm.cache import CachedBackend
from rplat.llm.load import open_backend
from rplat.llm.resolve import prepare_backend
from rplat.lookup import dataset_id
from rplat.methods.labelers import LabelPool, default_workers
from rplat.models import Problem, Sample, TeacherChain
from rplat.prompts import TDG_PROBLEM_PREFIX, TEMPLATES, ensure_template, tdg_prompt
from rplat.registry import get_model
from rplat.reviews import problem_answer
from rplat.runners.framework.context import JobContext
from rplat.runners.tdg.kinds import CollectChainsParams, SampleParams
from rplat.store import insert_ignore

STOP = "\n\n" + TDG_PROBLEM_PREFIX.rstrip("\n")  # a model that goes on to a next problem has ended its chain
Demonstrations = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Item:
    """One problem to generate chains for: its prompt and the sample indexes still missing."""

    problem_id: int
    gold: str | None
    prompt: str
    missing: tuple[int, ...]


def chain_text(completion: str) -> str:
    """The chain in a completion: cut where the model starts another problem, stripped."""
    cut = completion.find(STOP)
    return (completion if cut < 0 else completion[:cut]).strip()


def demonstrations(pool: Sequence[tuple[int, str, str]], problem_id: int, question: str, k: int, seed: int
                   ) -> Demonstrations:
    """k (question, solution) pairs from `pool` (id, question, solution), never the problem itself (by id or by
    question), drawn from the seed and the problem's id: the same problem always gets the same demonstrations."""
    if k <= 0 or not pool:
        return ()
    rng = random.Random(f"{seed}:{problem_id}")
    draw = rng.sample(range(len(pool)), min(len(pool), k + 4))
    picked = [pool[i] for i in draw if pool[i][0] != problem_id and pool[i][1] != question][:k]
    if len(picked) < k and len(draw) < len(pool):  # many copies of the problem in the pool: look at all of it
        rest = [pool[i] for i in rng.sample(range(len(pool)), len(pool))]
        picked = [r for r in rest if r[0] != problem_id and r[1] != question][:k]
    return tuple((q, s) for _, q, s in picked)


def sample_chains(llm: Backend, sampling: Sampling, items: Sequence[Item]) -> list[tuple[Item, int, Completion]]:
    """(item, sample index, completion) for every missing sample of `items`: one call per set of missing indexes
    (normally one: all n_samples). Samples a..b-1 are drawn with a seed of their own when a > 0, so topping up an
    n_samples=3 collection to n_samples=8 gives five new chains, not repeats of the first ones."""
    groups: dict[tuple[int, ...], list[Item]] = {}
    for item in items:
        groups.setdefault(item.missing, []).append(item)
    out: list[tuple[Item, int, Completion]] = []
    for missing, group in groups.items():
        seeded = sampling
        if not sampling.greedy and missing[0] > 0:
            seeded = dataclasses.replace(sampling, seed=(sampling.seed or 0) * 1000 + missing[0])
        completions = llm.generate([it.prompt for it in group], seeded, n=len(missing))
        for item, outs in zip(group, completions, strict=True):
            out += [(item, k, c) for k, c in zip(missing, outs, strict=True)]
    return out


def chain_sampling(temperature: float, max_tokens: int, seed: int) -> Sampling:
    """The decoding of a chain; greedy has no seed, so greedy chains of one prompt are shared across jobs."""
    return Sampling(temperature=temperature, max_tokens=max_tokens, stop=(STOP,),
                    seed=None if temperature <= 0 else seed)


def _pool(s: Session, name: str | None, k: int) -> list[tuple[int, str, str]]:
    if name is None or k <= 0:
        return []
    pool = s.execute(select(Problem.id, Problem.question, Problem.solution)
                     .where(Problem.dataset_id == dataset_id(s, name, "problems"), Problem.solution.is_not(None))
                     .order_by(Problem.id)).all()
    if not pool:
        raise UserError(f"dataset {name!r} has no worked solutions to use as demonstrations; pick a fewshot "
                        "dataset imported with --solution-field, or set n_fewshot=0.")
    return [tuple(r) for r in pool]  # type: ignore[misc]


def _items(problems: Sequence[Any], have: set[tuple[int, int]], n: int, pool: list[tuple[int, str, str]], k: int,
           seed: int) -> list[Item]:
    items = []
    for pid, question, gold in problems:
        missing = tuple(i for i in range(n) if (pid, i) not in have)
        if missing:
            items.append(Item(pid, gold, tdg_prompt(question, demonstrations(pool, pid, question, k, seed)), missing))
    return items


def _fill(ctx: JobContext, spec: Any, p: CollectChainsParams | SampleParams, todo: list[Any], total: int,
          row: Any, table: type, keys: list[str], workers: int = 1) -> tuple[CachedBackend, list[tuple[int, int]]]:
    """Generate every missing sample of `todo`, `p.batch_size` problems per call through the generation cache,
    label each batch's chains in a pool of `workers` processes, and store its rows (`row(item, k, completion,
    chain, verdict)`) in its own transaction, idempotently on `keys`: a job killed mid-run resumes with what it
    stored. Returns the cached backend (its hit counts) and the (problem id, sample index) of every chain of
    this run on which math-verify timed out."""
    done = total - sum(len(it.missing) for it in todo)
    ctx.progress(done, total)
    llm = CachedBackend(open_backend(spec), ctx.engine, job_id=ctx.job_id)
    sampling = chain_sampling(p.temperature, p.max_tokens, p.seed)
    timed_out: list[tuple[int, int]] = []
    with LabelPool(workers) as pool:
        for start in range(0, len(todo), p.batch_size):
            ctx.check()
            sampled = [(item, k, c, chain_text(c.text))
                       for item, k, c in sample_chains(llm, sampling, todo[start:start + p.batch_size])]
            labelled = pool.label([(text, item.gold) for item, _, _, text in sampled], p.labeler)
            rows = [row(item, k, c, text, verdict)
                    for (item, k, c, text), verdict in zip(sampled, labelled.verdicts, strict=True)]
            timed_out += [(sampled[i][0].problem_id, sampled[i][1]) for i in labelled.timeouts]
            with ctx.transaction() as s:
                insert_ignore(s, table, rows, keys)
            done += len(rows)
            ctx.progress(done, total)
    return llm, timed_out


def collect(ctx: JobContext, p: CollectChainsParams) -> dict[str, Any]:
    spec = prepare_backend(ctx.engine, p.model, backend=p.backend, endpoint=p.endpoint, home=ctx.home)
    teacher = p.teacher or p.model
    with ctx.transaction() as s:
        ensure_template(s, TEMPLATES["tdg-chain"])
    gold = problem_answer(ctx.reviews_seen())  # gold answers as reviewed
    with ctx.read() as s:
        problems_id = dataset_id(s, p.problems, "problems")
        problems = s.execute(select(Problem.id, Problem.question, gold.label("answer"))
                             .where(Problem.dataset_id == problems_id, gold.is_not(None))
                             .order_by(Problem.id).limit(p.limit)).all()
        if not problems:
            raise UserError(f"dataset {p.problems!r} has no problems with a gold answer to label chains against; "
                            "import it with --answer-field naming the answers.")
        pool = _pool(s, p.fewshot or p.problems, p.n_fewshot)
        have = set(s.execute(select(TeacherChain.problem_id, TeacherChain.sample_idx).where(
            TeacherChain.teacher == teacher, TeacherChain.problem_id.in_([r.id for r in problems]),
            TeacherChain.sample_idx < p.n_samples)).all())
    todo = _items(problems, have, p.n_samples, pool, p.n_fewshot, p.seed)
    with ctx.transaction() as s:  # the chain set has one labeler: chains stored under the other one follow
        relabelled = relabel(s, problems_id, teacher, p.labeler)

    def row(item: Any, k: int, c: Completion, text: str, verdict: Any) -> dict[str, Any]:
        return dict(job_id=ctx.job_id, problem_id=item.problem_id, teacher=teacher, sample_idx=k, text=text,
                    extracted_answer=verdict.answer, label=verdict.label, labeler=p.labeler,
                    hendrycks_correct=verdict.hendrycks, math_verify_correct=verdict.math_verify, n_chars=len(text))

    workers = p.workers or default_workers()
    llm, timed_out = _fill(ctx, spec, p, todo, len(problems) * p.n_samples, row, TeacherChain,
                           ["problem_id", "teacher", "sample_idx"], workers)
    with ctx.read() as s:
        mine = (TeacherChain.teacher == teacher) & TeacherChain.problem_id.in_([r.id for r in problems])
        counts = dict(s.execute(select(TeacherChain.label, func.count()).where(mine)
                                .group_by(TeacherChain.label)).all())
        solved = s.scalar(select(func.count(func.distinct(TeacherChain.problem_id)))
                          .where(mine, TeacherChain.label == "pos")) or 0
        keys = set(timed_out)
        timeout_ids = sorted(cid for cid, pid, idx in s.execute(
            select(TeacherChain.id, TeacherChain.problem_id, TeacherChain.sample_idx)
            .where(TeacherChain.teacher == teacher, TeacherChain.problem_id.in_({pid for pid, _ in keys}))).all()
            if (pid, idx) in keys)
    return {"teacher": teacher, "problems": len(problems), "chains": sum(counts.values()),
            "pos": counts.get("pos", 0), "neg": counts.get("neg", 0), "problems_with_positive": solved,
            "cache_hits": llm.hits, "cache_misses": llm.misses, "labeler": p.labeler, "relabelled": relabelled,
            "workers": workers, "math_verify_timeouts": len(timeout_ids), "timeout_chain_ids": timeout_ids}


def sample(ctx: JobContext, p: SampleParams) -> dict[str, Any]:
    spec = prepare_backend(ctx.engine, p.model, backend=p.backend, endpoint=p.endpoint, home=ctx.home)
    decoding = "greedy" if p.temperature <= 0 else "sampled"
    with ctx.transaction() as s:
        ensure_template(s, TEMPLATES["tdg-chain"])
        model_id = get_model(s, p.model).id
    gold = problem_answer(ctx.reviews_seen())  # gold answers as reviewed
    with ctx.read() as s:
        problems = s.execute(select(Problem.id, Problem.question, gold.label("answer"))
                             .where(Problem.dataset_id == dataset_id(s, p.problems, "problems"))
                             .order_by(Problem.id).limit(p.limit)).all()
        pool = _pool(s, p.fewshot, p.n_fewshot)
        have = set(s.execute(select(Sample.problem_id, Sample.sample_idx).where(Sample.job_id == ctx.job_id)).all())
    todo = _items(problems, have, p.n_samples, pool, p.n_fewshot, p.seed)

    def row(item: Any, k: int, c: Completion, text: str, verdict: Any) -> dict[str, Any]:
        return dict(job_id=ctx.job_id, problem_id=item.problem_id, model_id=model_id, sample_idx=k,
                    decoding=decoding, text=text, extracted_answer=verdict.answer,
                    correct=None if item.gold is None else verdict.label == "pos", finish_reason=c.finish_reason)

    llm, _ = _fill(ctx, spec, p, todo, len(problems) * p.n_samples, row, Sample,
                   ["job_id", "problem_id", "sample_idx"])
    with ctx.read() as s:
        n, correct = s.execute(select(func.count(), func.count().filter(Sample.correct.is_(True)))
                               .where(Sample.job_id == ctx.job_id)).one()
    return {"samples": n, "correct": correct, "decoding": decoding, "problems": len(problems),
            "cache_hits": llm.hits, "cache_misses": llm.misses}

