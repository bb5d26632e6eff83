"""`prefilter` (RATIONALYST A1): documents scored by cosine to a benchmark's reference centroid."""

from __future__ import annotations

from typing import Any

import torch
from sqlalchemy import func, select

from rplat.errors import UserError
from rplat.llm.embeddings import encode, load_encoder
from rplat.lookup import dataset_id
from rplat.methods.prefilter import centroid, cosine_to, keep, preprocess, reference_text
from rplat.models import Document, PrefilterScore, Problem
from rplat.registry import BUNDLED_EMBEDDER, ensure_bundled_embedder, get_model
from rplat.runners.framework.context import JobContext
from rplat.runners.rationalyst.kinds import PrefilterParams
from rplat.store import insert_ignore


def run(ctx: JobContext, p: PrefilterParams) -> dict[str, Any]:
    prep = preprocess if p.preprocess else (lambda t: t)
    with ctx.read() as s:
        docs = dataset_id(s, p.documents, "documents")
        refs = [dataset_id(s, name, "problems") for name in p.reference]
        todo = s.scalars(
            select(Document.id).where(Document.dataset_id == docs)
            .where(~Document.id.in_(select(PrefilterScore.document_id).where(PrefilterScore.job_id == ctx.job_id)))
            # Similar lengths in a batch mean little padding, so less wasted compute in the encoder.
            .order_by(Document.n_chars, Document.id)
        ).all()
        total = s.scalar(select(func.count()).select_from(Document).where(Document.dataset_id == docs)) or 0
    with ctx.transaction() as s:
        embedder = ensure_bundled_embedder(s) if p.embed_model == BUNDLED_EMBEDDER else get_model(s, p.embed_model)
        embedder_id, embedder_path = embedder.id, embedder.path
    encoder = load_encoder(embedder_path)

    saved = ctx.load_checkpoint()
    if saved is not None:
        center = saved[1]["centroid"]
    else:
        with ctx.read() as s:
            rows = s.execute(select(Problem.question, Problem.solution).where(Problem.dataset_id.in_(refs))
                             .order_by(Problem.id)).all()
        if not rows:
            raise UserError(f"the reference datasets {', '.join(p.reference)} hold no problems.")
        center = centroid(encode(encoder, [prep(reference_text(q, sol)) for q, sol in rows]))
        ctx.save_checkpoint({"centroid": center, "n_reference": len(rows)}, step=0)
        ctx.log(f"reference centroid from {len(rows)} problems")

    done = total - len(todo)
    ctx.progress(done, total)
    for start in range(0, len(todo), p.batch_size):
        ctx.check()
        ids = todo[start:start + p.batch_size]
        with ctx.read() as s:
            batch = s.execute(select(Document.id, Document.text, Document.n_chars)
                              .where(Document.id.in_(ids)).order_by(Document.n_chars, Document.id)).all()
        cos = cosine_to(center, encode(encoder, [prep(t) for _, t, _ in batch]))
        passed = keep(cos, torch.tensor([n for _, _, n in batch]), p.threshold, p.max_chars)
        with ctx.transaction() as s:
            insert_ignore(s, PrefilterScore, [
                dict(job_id=ctx.job_id, document_id=doc_id, embed_model_id=embedder_id, cosine=float(c),
                     threshold=p.threshold, passed=bool(k))
                for (doc_id, _, _), c, k in zip(batch, cos.tolist(), passed.tolist(), strict=True)
            ], ["job_id", "document_id"])
        done += len(batch)
        ctx.progress(done, total)

    with ctx.read() as s:
        n, n_passed, mean = s.execute(
            select(func.count(), func.count().filter(PrefilterScore.passed.is_(True)),
                   func.avg(PrefilterScore.cosine)).where(PrefilterScore.job_id == ctx.job_id)
        ).one()
    return {"scored": n, "passed": int(n_passed or 0), "mean_cosine": float(mean or 0.0), "threshold": p.threshold}

