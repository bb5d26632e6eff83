"""`train-ranker` and `score-samples` (TDG B4): train the ASC ranker on chain pairs, score samples.

train-ranker reads the questions of `problems` that have both a positive and a negative chain of `teacher`,
holds a seeded `heldout_fraction` of them out, and gives every training question one pair per epoch (one random
positive, one random negative, a function of seed, epoch and question). The loop gets each epoch's pairs as
that epoch's own examples (`PerEpoch`: epoch e trains on its fresh pairs, shuffled, after epoch e - 1's), where
it would otherwise repeat the same examples every epoch. The encoder and the head train through
the one loop (AdamW, no decay on biases and norms, cosine decay, exact resume). Every scored training pair
reaches `ranker_pairs` with the metrics of its step (same writes, same resume point: a resumed run rewrites
the steps after its checkpoint, upserted on (job, split, epoch, question)); after the last step the held-out
pairs are scored (split `heldout`), their accuracy (s_pos > s_neg) and mean loss go into that step's metrics
and the result, and the ranker is saved and registered (format and role `ranker`, parent `base` = encoder).

score-samples scores every sample of `sample_job` in batches committed one by one (a resumed job skips what it
stored). A sample whose question + chain exceeds the ranker's max length is not scored: it gets the mean score
of its problem's other samples (1.0 if none), flagged `truncated`, as the reference does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import case, func, select

from rplat.errors import UserError
from rplat.llm.resolve import ensure_bundled
from rplat.lookup import dataset_id
from rplat.methods.ranker import (
    ENCODER_KINDS,
    Encoded,
    Ranker,
    RankerConfig,
    collate,
    draw_pair,
    encode_pair,
    encoder_dir,
    encoder_limit,
    heldout_questions,
    load_encoder,
    load_ranker,
    pair_loss,
    save_ranker,
)
from rplat.models import Problem, RankerPair, RankerScore, Sample, TeacherChain
from rplat.registry import BUNDLED_EMBEDDER, ensure_bundled_embedder, get_model
from rplat.reviews import chain_label
from rplat.runners.framework.context import JobContext, StepMetric
from rplat.runners.tdg.examples import save_and_register
from rplat.runners.tdg.kinds import ScoreSamplesParams, TrainRankerParams
from rplat.runners.training.loop import Batch, Objective, PerEpoch, training_device, weight_decay_groups
from rplat.runners.training.loop import train as train_loop
from rplat.store import insert_ignore, upsert

PAIR_KEY = ["job_id", "split", "epoch", "problem_id"]
PAIR_VALUES = ["pos_chain_id", "neg_chain_id", "s_pos", "s_neg", "loss"]


# --- train-ranker ------------------------------------------------------------------------------------------


def _encoder(ctx: JobContext, name: str) -> tuple[int, str, Path]:
    """(id, format, path) of the encoder model; the bundled MiniLM and SmolLM2 are registered on first use."""
    ensure_bundled(ctx.engine, name, ctx.home)  # converts the bundled SmolLM2 outside any transaction
    with ctx.transaction() as s:
        model = ensure_bundled_embedder(s) if name == BUNDLED_EMBEDDER else get_model(s, name)
        if model.format not in ENCODER_KINDS:
            raise UserError(f"encoder {name!r} is a {model.format} model; pass --param encoder= an embedding model "
                            f"(default {BUNDLED_EMBEDDER}) or a base language model.")
        return model.id, model.format, Path(model.path or "")


def _questions(ctx: JobContext, p: TrainRankerParams) -> dict[int, tuple[str, dict[str, dict[int, str]]]]:
    """question id -> (question, {label: {chain id: chain}}) of the first `limit` questions with chains of both
    labels, in id order."""
    through = ctx.reviews_seen()
    with ctx.read() as s:
        ds = dataset_id(s, p.problems, "problems")
        rows = s.execute(select(TeacherChain.id, TeacherChain.problem_id, chain_label(through).label("label"),
                                TeacherChain.text, Problem.question)
                         .join(Problem, Problem.id == TeacherChain.problem_id)
                         .where(Problem.dataset_id == ds, TeacherChain.teacher == p.teacher)
                         .order_by(TeacherChain.problem_id, TeacherChain.id)).all()
    found: dict[int, tuple[str, dict[str, dict[int, str]]]] = {}
    for r in rows:
        found.setdefault(r.problem_id, (r.question, {"pos": {}, "neg": {}}))[1][r.label][r.id] = r.text
    paired = [q for q, (_, chains) in found.items() if chains["pos"] and chains["neg"]][:p.limit]
    if not paired:
        raise UserError(f"no question of dataset {p.problems!r} has both a positive and a negative chain of teacher "
                        f"{p.teacher!r} ({len(rows)} chains stored); import or collect labelled chains, or pick "
                        "another --param teacher.")
    return {q: found[q] for q in paired}


def _pairs(questions: dict[int, tuple[str, dict[str, dict[int, str]]]], ids: Sequence[int], epochs: int,
           seed: int, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
    """One pair per question of `ids` and epoch, each chain tokenized with its question once."""
    encoded: dict[int, Encoded] = {}
    pairs = []
    for epoch in range(epochs):
        for q in ids:
            question, chains = questions[q]
            pos, neg = draw_pair(list(chains["pos"]), list(chains["neg"]), seed=seed, epoch=epoch, problem_id=q)
            for chain_id, label in ((pos, "pos"), (neg, "neg")):
                if chain_id not in encoded:
                    encoded[chain_id] = encode_pair(tokenizer, question, chains[label][chain_id], max_length)
            pairs.append({"problem_id": q, "epoch": epoch, "pos_id": pos, "neg_id": neg,
                          "pos": encoded[pos], "neg": encoded[neg]})
    return pairs


def _collate(pairs: Sequence[dict[str, Any]], pad_id: int) -> Batch:
    """Positives in the first half of the rows, negatives in the second; the pairs' ids beside them."""
    batch = collate([e["pos"] for e in pairs] + [e["neg"] for e in pairs], pad_id)
    for key in ("problem_id", "epoch", "pos_id", "neg_id"):
        batch[key] = torch.tensor([e[key] for e in pairs])
    return batch


def _score_pairs(model: torch.nn.Module, batch: Batch, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scores = model(batch["input_ids"], batch["attention_mask"], batch["chain_mask"])
    n = len(batch["problem_id"])
    s_pos, s_neg = scores[:n], scores[n:]
    return s_pos, s_neg, pair_loss(s_pos, s_neg, p)


def _pair_rows(job_id: int, split: str, batch: Batch, s_pos: torch.Tensor, s_neg: torch.Tensor,
               loss: torch.Tensor) -> list[dict[str, Any]]:
    return [dict(job_id=job_id, split=split, epoch=int(e), problem_id=int(q), pos_chain_id=int(a),
                 neg_chain_id=int(b), s_pos=float(sp), s_neg=float(sn), loss=float(lo))
            for e, q, a, b, sp, sn, lo in zip(batch["epoch"], batch["problem_id"], batch["pos_id"], batch["neg_id"],
                                               s_pos.tolist(), s_neg.tolist(), loss.tolist(), strict=True)]


def _write_pairs(ctx: JobContext, rows: Sequence[dict[str, Any]]) -> None:
    with ctx.transaction() as s:
        upsert(s, RankerPair, rows, PAIR_KEY, PAIR_VALUES)


class PairHost:
    """The job's host for the training loop: the pairs scored since the last checkpoint are written right after
    that checkpoint's metrics, so pairs and metrics are lost, and redone on resume, together."""

    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.pending: list[dict[str, Any]] = []

    def check(self) -> None:
        self.ctx.check()

    def progress(self, done: int, total: int | None = None) -> None:
        self.ctx.progress(done, total)

    def log(self, message: str) -> None:
        self.ctx.log(message)

    def record_metrics(self, rows: Sequence[StepMetric]) -> None:
        self.ctx.record_metrics(rows)
        _write_pairs(self.ctx, self.pending)
        self.pending.clear()

    def save_checkpoint(self, state: dict[str, Any], step: int) -> object:
        return self.ctx.save_checkpoint(state, step)

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        return self.ctx.load_checkpoint()


def train(ctx: JobContext, p: TrainRankerParams) -> dict[str, Any]:
    encoder_id, kind, path = _encoder(ctx, p.encoder)
    questions = _questions(ctx, p)
    held = heldout_questions(list(questions), p.heldout_fraction, p.seed)
    train_ids = [q for q in questions if q not in held]
    device = training_device()
    torch.manual_seed(p.seed)  # the head's initialisation: same params, same run
    encoder, tokenizer = load_encoder(encoder_dir(path, kind))
    cfg = RankerConfig(kind, encoder.config.hidden_size, min(p.max_length, encoder_limit(encoder, tokenizer)))
    ranker = Ranker(encoder, cfg.hidden_size).to(device)
    pairs = _pairs(questions, train_ids, p.epochs, p.seed, tokenizer, cfg.max_length)
    # each epoch its own fresh pair per question, trained after the previous epoch's
    examples = PerEpoch([[e for e in pairs if e["epoch"] == epoch] for epoch in range(p.epochs)])
    heldout = _pairs(questions, sorted(held), 1, p.seed, tokenizer, cfg.max_length)
    host = PairHost(ctx)
    heldout_rows: list[dict[str, Any]] = []

    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        s_pos, s_neg, losses = _score_pairs(model, batch, p.p)
        host.pending += _pair_rows(ctx.job_id, "train", batch, s_pos.detach(), s_neg.detach(), losses.detach())
        return losses.sum(), {"accuracy": float((s_pos > s_neg).sum())}

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        heldout_rows.clear()
        for start in range(0, len(heldout), p.batch_size):
            batch = {k: v.to(device) for k, v in _collate(heldout[start:start + p.batch_size],
                                                           tokenizer.pad_token_id).items()}
            heldout_rows.extend(_pair_rows(ctx.job_id, "heldout", batch, *_score_pairs(model, batch, p.p)))
        return {"heldout_accuracy": sum(r["s_pos"] > r["s_neg"] for r in heldout_rows) / len(heldout_rows),
                "heldout_loss": sum(r["loss"] for r in heldout_rows) / len(heldout_rows)}

    objective = Objective(lambda pairs: _collate(pairs, tokenizer.pad_token_id), loss,
                          lambda batch: float(len(batch["problem_id"])))
    summary = train_loop(host, ranker, examples, p.train_config(), objective, eval_fn=evaluate if heldout else None,
                         param_groups=lambda module: weight_decay_groups(module, p.weight_decay))
    _write_pairs(ctx, heldout_rows)
    final = summary.pop("final_eval") or {}
    name, model_id = save_and_register(
        ctx, "train-ranker", p, lambda out: save_ranker(ranker, tokenizer, out, cfg, {"encoder_model": p.encoder}),
        fmt="ranker", role="ranker", parents={"base": encoder_id}, config={"ranker": asdict(cfg), **final})
    return {**summary, "pairs": len(pairs), "train_questions": len(train_ids), "heldout_questions": len(held),
            "heldout_accuracy": final.get("heldout_accuracy"), "heldout_loss": final.get("heldout_loss"),
            "max_length": cfg.max_length, "model": name, "model_id": model_id}


# --- score-samples -----------------------------------------------------------------------------------------


def score_samples(ctx: JobContext, p: ScoreSamplesParams) -> dict[str, Any]:
    with ctx.read() as s:
        ranker = get_model(s, p.ranker)
        if ranker.format != "ranker":
            raise UserError(f"ranker {p.ranker!r} is a {ranker.format} model, not a ranker; pass --param ranker= the "
                            "result of a train-ranker job.")
        ranker_id, ranker_path = ranker.id, Path(ranker.path or "")
        samples = s.execute(select(Sample.id, Sample.problem_id, Sample.text, Problem.question)
                            .join(Problem, Problem.id == Sample.problem_id).where(Sample.job_id == p.sample_job)
                            .order_by(Sample.id)).all()
        done = set(s.scalars(select(RankerScore.sample_id).where(RankerScore.job_id == ctx.job_id)).all())
    if not samples:
        raise UserError(f"sample job {p.sample_job} stored no samples; pass --param sample_job= a sample job that "
                        "succeeded.")
    device = training_device()
    model, tokenizer, cfg = load_ranker(ranker_path, device)
    encoded = {r.id: encode_pair(tokenizer, r.question, r.text, cfg.max_length) for r in samples if r.id not in done}
    # Similar lengths in a batch mean little padding.
    todo = sorted((i for i, e in encoded.items() if not e.truncated), key=lambda i: (len(encoded[i].input_ids), i))
    for start in range(0, len(todo), p.batch_size):
        ctx.check()
        ids = todo[start:start + p.batch_size]
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in ids], tokenizer.pad_token_id).items()}
        with torch.inference_mode():
            scores = model(batch["input_ids"], batch["attention_mask"], batch["chain_mask"]).tolist()
        with ctx.transaction() as s:
            insert_ignore(s, RankerScore, [dict(job_id=ctx.job_id, sample_id=i, ranker_model_id=ranker_id, score=sc,
                                                truncated=False) for i, sc in zip(ids, scores, strict=True)],
                          ["job_id", "sample_id"])
        ctx.progress(len(done) + start + len(ids), len(samples))
    long = [r for r in samples if r.id in encoded and encoded[r.id].truncated]
    with ctx.transaction() as s:
        if long:
            scored = s.execute(select(Sample.problem_id, RankerScore.score)
                               .join(Sample, Sample.id == RankerScore.sample_id)
                               .where(RankerScore.job_id == ctx.job_id, RankerScore.truncated.is_(False))).all()
            by_problem: dict[int, list[float]] = defaultdict(list)
            for problem_id, score in scored:
                by_problem[problem_id].append(score)
            insert_ignore(s, RankerScore, [
                dict(job_id=ctx.job_id, sample_id=r.id, ranker_model_id=ranker_id, truncated=True,
                     score=sum(by_problem[r.problem_id]) / len(by_problem[r.problem_id])
                     if by_problem[r.problem_id] else 1.0) for r in long], ["job_id", "sample_id"])
        n, n_truncated, mean = s.execute(
            select(func.count(), func.sum(case((RankerScore.truncated, 1), else_=0)), func.avg(RankerScore.score))
            .where(RankerScore.job_id == ctx.job_id)).one()
    ctx.progress(len(samples), len(samples))
    return {"samples": len(samples), "scored": n, "truncated": int(n_truncated or 0), "mean_score": mean,
            "ranker": p.ranker, "ranker_model_id": ranker_id, "max_length": cfg.max_length}
