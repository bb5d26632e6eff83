"""RATIONALYST jobs: `extract-rationales` (A2/A3) and `score-rationales` (A4, with leak detection).

Both read their inputs, skip what this job already wrote (a re-claimed job resumes there), call the model
through the generation cache, and commit each batch in one fenced transaction with insert-ignore writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.llm import Backend, Sampling
from rplat.llm.cache import CachedBackend
from rplat.llm.load import open_backend
from rplat.llm.resolve import prepare_backend
from rplat.lookup import dataset_id, job_of_kind
from rplat.methods.leaks import is_leak, overlap
from rplat.methods.loss_delta import loss_delta, scoring_contexts, spans_nonempty
from rplat.methods.rationales import fidelity, insert_rationales, parse_triples, text_units
from rplat.models import (
    Document,
    Extraction,
    PrefilterScore,
    Problem,
    Rationale,
    RationaleScore,
)
from rplat.prompts import TEMPLATES, ensure_template, insert_prompt
from rplat.registry import get_model
from rplat.runners.framework.context import JobContext
from rplat.runners.rationalyst.kinds import ExtractParams, ScoreParams
from rplat.store import insert_ignore


@dataclass(frozen=True)
class Item:
    """One text to annotate: a document, or a problem rendered with its worked solution."""

    document_id: int | None
    problem_id: int | None
    source: str
    text: str


def _extract_items(session: Session, p: ExtractParams) -> list[Item]:
    """Every text the job annotates, in its fixed order: documents and worked solutions alternate, so a
    `limit` takes from both."""
    if p.documents is None and p.problems is None and p.prefilter_job is None:
        raise UserError("extract-rationales needs documents, prefilter_job or problems; pass one with --param.")
    items: list[Item] = []
    if p.documents is not None or p.prefilter_job is not None:
        q = select(Document.id, Document.source, Document.text)
        if p.documents is not None:
            q = q.where(Document.dataset_id == dataset_id(session, p.documents, "documents"))
        if p.prefilter_job is not None:
            job_of_kind(session, p.prefilter_job, "prefilter", "prefilter_job")
            q = q.join(PrefilterScore, and_(PrefilterScore.document_id == Document.id,
                                            PrefilterScore.job_id == p.prefilter_job, PrefilterScore.passed))
        items += [Item(i, None, src or "documents", text) for i, src, text in session.execute(q.order_by(Document.id))]
    solutions: list[Item] = []
    if p.problems is not None:
        q = select(Problem.id, Problem.benchmark, Problem.question, Problem.solution).where(
            Problem.dataset_id == dataset_id(session, p.problems, "problems"), Problem.solution.is_not(None))
        solutions = [Item(None, i, bench or "problems", f"Question: {q_}\nAnswer: {sol}")
                     for i, bench, q_, sol in session.execute(q.order_by(Problem.id))]
    mixed = [it for pair in zip(items, solutions, strict=False) for it in pair]
    shorter = min(len(items), len(solutions))
    return mixed + items[shorter:] + solutions[shorter:]


def _insert_mode(llm: CachedBackend, sampling: Sampling, texts: list[str], max_units: int
                 ) -> list[tuple[str, str]]:
    """(annotated text, annotated output) per text: one rationale per boundary between consecutive units (at most
    `max_units` units: the text annotated is that prefix), all boundaries of the batch in one model call."""
    units = [text_units(t)[:max_units] for t in texts]
    template = TEMPLATES["extract-insert"]
    prompts = [llm.chat_prompt(template.messages(insert_prompt(" ".join(u[:i]), u[i])))
               for u in units for i in range(1, len(u))]
    step = Sampling(temperature=sampling.temperature, max_tokens=min(sampling.max_tokens, 64), stop=("\n",),
                    seed=sampling.seed)
    rationales = [c[0].text.strip() for c in llm.generate(prompts, step)] if prompts else []
    out, pos = [], 0
    for u in units:
        if len(u) < 2:
            out.append(("\n".join(u), "\n".join(u)))
            continue
        out.append(("\n".join(u), insert_rationales(u, rationales[pos:pos + len(u) - 1])))
        pos += len(u) - 1
    return out


def extract(ctx: JobContext, p: ExtractParams) -> dict[str, Any]:
    spec = prepare_backend(ctx.engine, p.model, backend=p.backend, endpoint=p.endpoint, home=ctx.home)
    with ctx.transaction() as s:
        model_id = get_model(s, p.model).id
        template_ids = {name: ensure_template(s, TEMPLATES[name])
                        for name in ("extract-pile", "extract-reasoning", "extract-insert")}
    with ctx.read() as s:
        items = _extract_items(s, p)[:p.limit]
        written = set(s.execute(select(Extraction.document_id, Extraction.problem_id)
                                .where(Extraction.job_id == ctx.job_id)).all())
    # A re-claimed job skips what it already wrote: the order is fixed, so it continues where it stopped.
    total = len(items)
    items = [it for it in items if (it.document_id, it.problem_id) not in written]
    done = total - len(items)
    llm = CachedBackend(open_backend(spec), ctx.engine, job_id=ctx.job_id)
    sampling = Sampling(temperature=p.temperature, max_tokens=p.max_tokens, seed=p.seed)
    ctx.progress(done, total)
    for start in range(0, len(items), p.batch_size):
        ctx.check()
        batch = items[start:start + p.batch_size]
        if p.mode == "insert":
            names = ["extract-insert"] * len(batch)
            pairs = _insert_mode(llm, sampling, [it.text for it in batch], p.max_units)
        else:
            names = ["extract-pile" if it.document_id is not None else "extract-reasoning" for it in batch]
            prompts = [llm.chat_prompt(TEMPLATES[n].messages(it.text)) for n, it in zip(names, batch, strict=True)]
            pairs = [(it.text, c[0].text) for it, c in zip(batch, llm.generate(prompts, sampling), strict=True)]
        with ctx.transaction() as s:
            for it, name, (source, output) in zip(batch, names, pairs, strict=True):
                fid = fidelity(source, output)
                key = ["job_id", "document_id"] if it.document_id is not None else ["job_id", "problem_id"]
                insert_ignore(s, Extraction, [dict(
                    job_id=ctx.job_id, document_id=it.document_id, problem_id=it.problem_id, model_id=model_id,
                    prompt_template_id=template_ids[name], temperature=p.temperature, seed=p.seed,
                    input_text=source, raw_output=output, fidelity=fid, passed=fid >= p.min_fidelity)],
                    key)
                if fid < p.min_fidelity:
                    continue
                column = Extraction.document_id if it.document_id is not None else Extraction.problem_id
                extraction_id = s.scalar(select(Extraction.id).where(
                    Extraction.job_id == ctx.job_id, column == (it.document_id or it.problem_id)))
                insert_ignore(s, Rationale, [dict(
                    job_id=ctx.job_id, extraction_id=extraction_id, position=t.position, preceding=t.preceding,
                    rationale=t.rationale, following=t.following, left_step=t.left_step, source=it.source)
                    for t in parse_triples(output)], ["job_id", "extraction_id", "position"])
        done += len(batch)
        ctx.progress(done, total)
    with ctx.read() as s:
        n_ext, n_passed = s.execute(select(func.count(), func.count().filter(Extraction.passed.is_(True)))
                                    .where(Extraction.job_id == ctx.job_id)).one()
        n_rat = s.scalar(select(func.count()).select_from(Rationale).where(Rationale.job_id == ctx.job_id))
    return {"extractions": n_ext, "passed_fidelity": n_passed, "rationales": n_rat,
            "cache_hits": llm.hits, "cache_misses": llm.misses}


def score_pairs(llm: Backend, triples: list[tuple[str, str, str]]) -> list[list[float]]:
    """A4's two scorings of each (preceding, rationale, following), all without-scorings first. One call, so
    the backend can share every prefix (bench/loss_delta.py measures this path)."""
    system = TEMPLATES["score-future"].system
    contexts = [scoring_contexts(system, pre, rat) for pre, rat, _ in triples]
    without = [llm.chat_prompt(c) for c, _ in contexts]
    with_ = [llm.chat_prompt(c) for _, c in contexts]
    following = [fol for _, _, fol in triples]
    return llm.score(without + with_, following + following)


def score(ctx: JobContext, p: ScoreParams) -> dict[str, Any]:
    spec = prepare_backend(ctx.engine, p.model, backend=p.backend, endpoint=p.endpoint, home=ctx.home)
    with ctx.transaction() as s:
        job_of_kind(s, p.extract_rationales_job, "extract-rationales", "extract_rationales_job")
        scorer_id = get_model(s, p.model).id
        ensure_template(s, TEMPLATES["score-future"])
    with ctx.read() as s:
        rows = s.execute(select(Rationale.id, Rationale.preceding, Rationale.rationale, Rationale.following,
                                Rationale.source)
                         .where(Rationale.job_id == p.extract_rationales_job,
                                ~Rationale.id.in_(select(RationaleScore.rationale_id)
                                                  .where(RationaleScore.job_id == ctx.job_id)))
                         .order_by(Rationale.id)).all()
        done = s.scalar(select(func.count()).select_from(RationaleScore)
                        .where(RationaleScore.job_id == ctx.job_id)) or 0
    if p.limit is not None:
        rows = rows[:max(p.limit - done, 0)]
    llm = CachedBackend(open_backend(spec), ctx.engine, job_id=ctx.job_id)
    total = done + len(rows)
    ctx.progress(done, total)
    for start in range(0, len(rows), p.batch_size):
        ctx.check()
        batch = rows[start:start + p.batch_size]
        scored = score_pairs(llm, [(r.preceding, r.rationale, r.following) for r in batch])
        out = []
        for k, r in enumerate(batch):
            tau = p.tau_by_source.get(r.source or "", p.tau)
            lp_without, lp_with = scored[k], scored[len(batch) + k]
            ld = loss_delta(lp_without, lp_with, gamma=p.gamma, tau=tau,
                            spans_nonempty=spans_nonempty(r.preceding, r.rationale, r.following))
            # A copy of the following text lowers its loss most of all, so a leak is dropped whatever its delta.
            shared = overlap(r.preceding, r.rationale, r.following)
            leak = is_leak(shared, p.leak_threshold)
            out.append(dict(job_id=ctx.job_id, rationale_id=r.id, scorer_model_id=scorer_id, lp_without=lp_without,
                            lp_with=lp_with, gamma=p.gamma, s_without=ld.s_without, s_with=ld.s_with,
                            loss_delta=ld.delta, tau=tau, kept=ld.kept and not leak, overlap=shared, leak=leak))
        with ctx.transaction() as s:
            insert_ignore(s, RationaleScore, out, ["job_id", "rationale_id"])
        done += len(batch)
        ctx.progress(done, total)
    with ctx.read() as s:
        n, kept, mean = s.execute(select(func.count(), func.count().filter(RationaleScore.kept.is_(True)),
                                         func.avg(RationaleScore.loss_delta)).where(RationaleScore.job_id == ctx.job_id)
                                  ).one()
        leaks = s.execute(select(RationaleScore.loss_delta, RationaleScore.tau, Rationale.preceding,
                                 Rationale.rationale, Rationale.following)
                          .join(Rationale, Rationale.id == RationaleScore.rationale_id)
                          .where(RationaleScore.job_id == ctx.job_id, RationaleScore.leak.is_(True))).all()
    # The leaks the loss-delta filter alone would have kept: what leak detection changed.
    dropped = sum(ld >= tau and spans_nonempty(pre, rat, fol) for ld, tau, pre, rat, fol in leaks)
    return {"scored": n, "kept": kept, "leaks": len(leaks), "leaks_dropped": dropped,
            "mean_loss_delta": float(mean) if mean is not None else None,
            "cache_hits": llm.hits, "cache_misses": llm.misses}
