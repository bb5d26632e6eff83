"""`train-rationalyst` (RATIONALYST A5): preceding text -> rationale, cross-entropy on the rationale tokens only.

Source = chat template of the user turn `preceding` (with the assistant header); target = the rationale and
the end-of-turn token; labels on the source are -100. LoRA by default (peft), full fine-tune as an option.
The split (95/5 by default) is stored as `training_examples`; the result is an adapter (or model) registered
with its base as parent and this job as its maker.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select

from rplat.errors import UserError
from rplat.llm.load import base_of, prepare_backend
from rplat.models import Job, Rationale, RationaleScore, TrainingExample
from rplat.registry import get_model, register_model
from rplat.runners.context import JobContext
from rplat.runners.kinds import TrainRationalystParams
from rplat.runners.training import TrainConfig, causal_lm_loss, collate, train
from rplat.store import insert_ignore


def encode_example(tokenizer: Any, preceding: str, rationale: str, max_length: int) -> dict[str, list[int]] | None:
    """Token ids and labels of one (preceding -> rationale) pair, or None if the rationale would be cut off."""
    source = tokenizer.apply_chat_template([{"role": "user", "content": preceding}], tokenize=False,
                                           add_generation_prompt=True)
    src_ids = tokenizer(source, add_special_tokens=False)["input_ids"]
    tgt_ids = tokenizer(rationale, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(tgt_ids) >= max_length:
        return None
    src_ids = src_ids[-(max_length - len(tgt_ids)):]
    return {"input_ids": src_ids + tgt_ids, "labels": [-100] * len(src_ids) + tgt_ids}


def _split(ids: list[int], eval_fraction: float, seed: int) -> dict[int, str]:
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    n_eval = int(round(len(shuffled) * eval_fraction))
    return {i: ("eval" if k < n_eval else "train") for k, i in enumerate(shuffled)}


@torch.no_grad()
def _eval_loss(model: torch.nn.Module, examples: list[dict[str, list[int]]], pad_id: int) -> float | None:
    if not examples:
        return None
    device = next(model.parameters()).device
    losses = [causal_lm_loss(model, {k: v.to(device) for k, v in collate([e], pad_id).items()}).item()
              for e in examples]
    return sum(losses) / len(losses)


def run(ctx: JobContext, p: TrainRationalystParams) -> dict[str, Any]:
    spec = prepare_backend(ctx.engine, p.model, home=ctx.home)
    with ctx.transaction() as s:
        if s.scalar(select(Job.kind).where(Job.id == p.score_job)) != "score-rationales":
            raise UserError(f"score_job {p.score_job} is not a score-rationales job; see `rplat jobs ls`.")
        base = base_of(s, get_model(s, p.model))
        base_id, base_path = base.id, base.path
        rows = s.execute(select(Rationale.id, Rationale.preceding, Rationale.rationale)
                         .join(RationaleScore, RationaleScore.rationale_id == Rationale.id)
                         .where(RationaleScore.job_id == p.score_job, RationaleScore.kept.is_(True))
                         .order_by(Rationale.id)).all()
        if not rows:
            raise UserError(f"score job {p.score_job} kept no rationales; there is nothing to train on.")
        split = _split([r.id for r in rows], p.eval_fraction, p.seed)
        insert_ignore(s, TrainingExample, [dict(job_id=ctx.job_id, rationale_id=i, split=sp) for i, sp in split.items()],
                      ["job_id", "rationale_id"])
    tokenizer = spec.open().tokenizer  # type: ignore[attr-defined]
    encoded = {r.id: encode_example(tokenizer, r.preceding, r.rationale, p.max_length) for r in rows}
    train_set = [e for i, e in encoded.items() if e is not None and split[i] == "train"]
    eval_set = [e for i, e in encoded.items() if e is not None and split[i] == "eval"]
    if not train_set:
        raise UserError("no training example fits max_length; raise --param max_length.")

    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(p.seed)  # adapter initialisation is random: the same params must give the same run
    model = AutoModelForCausalLM.from_pretrained(base_path, local_files_only=True).to(device)
    if p.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=0.05,
                                                 target_modules=list(p.target_modules), task_type="CAUSAL_LM"))
    cfg = TrainConfig(epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, grad_accum=p.grad_accum,
                      warmup_ratio=p.warmup_ratio, max_steps=p.max_steps, checkpoint_every=p.checkpoint_every,
                      seed=p.seed)
    summary = train(ctx, model, train_set, cfg, pad_id=tokenizer.pad_token_id)
    eval_loss = _eval_loss(model, eval_set, tokenizer.pad_token_id)

    name = p.adapter_name or f"rationalyst-job{ctx.job_id}"
    out = ctx.home / "artifacts" / "models" / name
    tmp = out.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if not p.lora:
        tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
    with ctx.transaction() as s:
        fmt = "lora" if p.lora else "base"
        extra: dict[str, Any] = dict(lora_r=p.lora_r, lora_alpha=p.lora_alpha,
                                     target_modules=list(p.target_modules)) if p.lora else {}
        model_row = register_model(s, name, fmt, out, role="rationalyst", parents={"base": base_id},
                                   config={"train_params": p.model_dump(mode="json")}, job_id=ctx.job_id, **extra)
        model_id = model_row.id
    return {**summary, "train_examples": len(train_set), "eval_examples": len(eval_set), "eval_loss": eval_loss,
            "model": name, "model_id": model_id}
