"""`prefilter` (RATIONALYST A1): documents scored by cosine to a benchmark's reference centroid."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain
from typing import Any

import numpy as np
import torch
from sqlalchemy import ColumnElement, Select, func, or_, select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.llm.embeddings import encode, load_encoder
from rplat.lookup import dataset_id
from rplat.methods.prefilter import centroid, cosine_to, keep, preprocess, reference_text
from rplat.models import Document, PrefilterScore, Problem
from rplat.registry import BUNDLED_EMBEDDER, ensure_bundled_embedder, get_model
from rplat.runners.framework.context import JobContext
from rplat.runners.rationalyst.kinds import PrefilterParams
from rplat.store import insert_ignore

# (id, length) pairs read per round trip while the documents to embed are listed. Only these two integers are held
# for every document (16 bytes each: 16 MB for a million); texts are read batch by batch.
_LIST_CHUNK = 50_000


def _int_columns(session: Session, stmt: Select[Any], width: int) -> np.ndarray:
    """The rows of a query of `width` integer columns as one int64 array, streamed from the database in chunks."""
    result = session.execute(stmt.execution_options(yield_per=_LIST_CHUNK))
    # fromiter over the flattened values: numpy's own conversion of a list of Rows is ~100x slower.
    parts = [np.fromiter(chain.from_iterable(part), dtype=np.int64, count=len(part) * width).reshape(-1, width)
             for part in result.partitions()]
    return np.concatenate(parts) if parts else np.empty((0, width), dtype=np.int64)


def _in_subsets(p: PrefilterParams) -> list[ColumnElement[bool]]:
    return [] if p.subsets is None else [Document.subset.in_(p.subsets)]


def _count(session: Session, *where: ColumnElement[bool]) -> int:
    return session.scalar(select(func.count()).select_from(Document).where(*where)) or 0


def run(ctx: JobContext, p: PrefilterParams) -> dict[str, Any]:
    prep = preprocess if p.preprocess else (lambda t: t)
    with ctx.read() as s:
        docs = dataset_id(s, p.documents, "documents")
        refs = [dataset_id(s, name, "problems") for name in p.reference]
        # The paper drops documents over max_chars before embedding them, and the chosen subsets leave the others
        # out: neither is embedded nor gets a score. `limit` takes the first of the rest in import order, so a
        # resumed job picks the same documents.
        chosen = [Document.dataset_id == docs, *_in_subsets(p)]
        if p.max_chars is not None:
            chosen.append(Document.n_chars <= p.max_chars)
        listed = _int_columns(s, select(Document.id, Document.n_chars).where(*chosen)
                              .order_by(Document.id).limit(p.limit), 2)
        scored = _int_columns(s, select(PrefilterScore.document_id).where(PrefilterScore.job_id == ctx.job_id), 1)
        outside_subsets = 0 if p.subsets is None else _count(
            s, Document.dataset_id == docs, or_(Document.subset.is_(None), Document.subset.not_in(p.subsets)))
        over_max_chars = 0 if p.max_chars is None else _count(
            s, Document.dataset_id == docs, *_in_subsets(p), Document.n_chars > p.max_chars)
    total = len(listed)
    todo = listed[~np.isin(listed[:, 0], scored[:, 0])]
    # Similar lengths in a batch mean little padding, so less wasted compute in the encoder.
    todo = todo[np.lexsort((todo[:, 0], todo[:, 1]))]
    del listed, scored

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
    if done:
        ctx.log(f"resumed: {done:,} of {total:,} documents already scored")
    ctx.progress(done, total)
    batches = [todo[i:i + p.batch_size] for i in range(0, len(todo), p.batch_size)]

    def read(batch: np.ndarray) -> list[tuple[int, int, str]]:
        """One batch's (id, length, preprocessed text); a document deleted since it was listed is left out."""
        ids = batch[:, 0].tolist()
        with ctx.read() as s:
            text_of = dict(s.execute(select(Document.id, Document.text).where(Document.id.in_(ids))).all())
        return [(doc_id, n, prep(text_of[doc_id])) for doc_id, n in zip(ids, batch[:, 1].tolist(), strict=True)
                if doc_id in text_of]

    def write(rows: list[dict[str, Any]]) -> None:
        with ctx.transaction() as s:
            insert_ignore(s, PrefilterScore, rows, ["job_id", "document_id"])

    # A pipeline: while the encoder embeds batch k, one thread reads and preprocesses batch k + 1 and another
    # writes the scores of batch k - 1 (the database and the encoder mostly release the GIL). At most one write
    # is in flight, and progress counts a batch once its scores are committed.
    with ThreadPoolExecutor(1, thread_name_prefix="prefilter-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="prefilter-write") as writer:
        next_read = reader.submit(read, batches[0]) if batches else None
        written: Future[None] | None = None
        for k in range(len(batches)):
            ctx.check()
            assert next_read is not None
            docs = next_read.result()
            next_read = reader.submit(read, batches[k + 1]) if k + 1 < len(batches) else None
            rows = []
            if docs:
                cos = cosine_to(center, encode(encoder, [text for _, _, text in docs]))
                passed = keep(cos, torch.tensor([n for _, n, _ in docs]), p.threshold, p.max_chars)
                rows = [dict(job_id=ctx.job_id, document_id=doc_id, embed_model_id=embedder_id, cosine=float(c),
                             threshold=p.threshold, passed=bool(ok))
                        for (doc_id, _, _), c, ok in zip(docs, cos.tolist(), passed.tolist(), strict=True)]
            if written is not None:
                written.result()
                done += len(batches[k - 1])
                ctx.progress(done, total)
            written = writer.submit(write, rows)
        if written is not None:
            written.result()
            done += len(batches[-1])
            ctx.progress(done, total)

    with ctx.read() as s:
        n, n_passed, mean = s.execute(
            select(func.count(), func.count().filter(PrefilterScore.passed.is_(True)),
                   func.avg(PrefilterScore.cosine)).where(PrefilterScore.job_id == ctx.job_id)
        ).one()
    return {"scored": n, "passed": int(n_passed or 0), "mean_cosine": float(mean or 0.0), "threshold": p.threshold,
            "over_max_chars": over_max_chars, "outside_subsets": outside_subsets}
