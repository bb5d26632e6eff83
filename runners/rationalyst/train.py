"""`train-rationalyst` (RATIONALYST A5): preceding text -> rationale, loss on the rationale only.

Source = chat template of the user turn `preceding` (with the assistant header); target = the rationale and
the end-of-turn token; labels on the source are -100. LoRA by default (peft), full fine-tune as an option.
The split (95/5 by default) is stored as `training_examples` by the handler; `fit` trains on it through the
shared loop (eval loss on the held-out part every `eval_every` steps), in the handler's process or, with
`nproc > 1`, on every torchrun worker; rank 0 saves the result and registers it as an adapter (or model) with
its base as parent and this job as its maker.
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
from rplat.llm.load import load
from rplat.llm.resolve import base_of, prepare_backend
from rplat.lookup import job_of_kind
from rplat.models import Rationale, RationaleScore, TrainingExample
from rplat.paths import model_dir
from rplat.references import made_model
from rplat.registry import get_model, register_model
from rplat.reviews import rationale_kept
from rplat.runners.framework.context import JobContext
from rplat.runners.rationalyst.kinds import TrainRationalystParams
from rplat.runners.training.distributed import is_main_process, launch
from rplat.runners.training.loop import (
    causal_lm_loss,
    causal_lm_objective,
    target_tokens,
    train,
    trainable_state,
    training_device,
)
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


def run(ctx: JobContext, p: TrainRationalystParams) -> dict[str, Any]:
    prepare_backend(ctx.engine, p.model, home=ctx.home)  # converts the bundled model once, before any worker starts
    through = ctx.reviews_seen()
    with ctx.transaction() as s:
        job_of_kind(s, p.score_rationales_job, "score-rationales", "score_rationales_job")
        # kept as reviewed: a rationale a person dropped (a leak) is left out, one a person kept is trained on
        ids = s.scalars(select(RationaleScore.rationale_id)
                        .where(RationaleScore.job_id == p.score_rationales_job, rationale_kept(through))).all()
        if not ids:
            raise UserError(f"score-rationales job {p.score_rationales_job} kept no rationales; there is nothing to "
                            "train on.")
        split = _split(list(ids), p.eval_fraction, p.seed)
        insert_ignore(s, TrainingExample,
                      [dict(job_id=ctx.job_id, rationale_id=i, split=sp) for i, sp in split.items()],
                      ["job_id", "rationale_id"])
    if p.nproc > 1:
        return launch(ctx, "rplat.runners.rationalyst.train:fit", p.nproc)
    return fit(ctx, p)


def fit(ctx: JobContext, p: TrainRationalystParams) -> dict[str, Any]:
    """Train on the job's stored split; on rank 0 (or alone) save and register the result and return the summary."""
    spec = prepare_backend(ctx.engine, p.model, home=ctx.home)
    with ctx.read() as s:
        base_id = base_of(s, get_model(s, p.model)).id
        rows = s.execute(select(TrainingExample.split, Rationale.preceding, Rationale.rationale)
                         .join(Rationale, Rationale.id == TrainingExample.rationale_id)
                         .where(TrainingExample.job_id == ctx.job_id).order_by(Rationale.id)).all()
    device = training_device()
    torch.manual_seed(p.seed)  # adapter initialisation is random: the same params must give the same run
    model, tokenizer = load(spec, adapters=(), trainable=True, dtype=torch.float32, device=str(device))
    encoded = [(r.split, encode_example(tokenizer, r.preceding, r.rationale, p.max_length)) for r in rows]
    train_set = [e for sp, e in encoded if e is not None and sp == "train"]
    eval_set = [e for sp, e in encoded if e is not None and sp == "eval"]
    if not train_set:
        raise UserError("no training example fits max_length; raise --param max_length.")
    if p.lora:
        from peft import get_peft_model

        model = get_peft_model(model, p.lora_config())
    objective = causal_lm_objective(tokenizer.pad_token_id)

    def eval_loss(module: torch.nn.Module) -> dict[str, float]:
        """Mean token cross-entropy on the held-out split."""
        total = tokens = 0.0
        for i in range(0, len(eval_set), p.batch_size):
            batch = {k: v.to(device) for k, v in objective.collate(eval_set[i:i + p.batch_size]).items()}
            total += causal_lm_loss(module, batch)[0].item()
            tokens += target_tokens(batch)
        return {"eval_loss": total / max(tokens, 1.0)}

    summary = train(ctx, model, train_set, p.train_config(), objective, eval_fn=eval_loss if eval_set else None)
    weights = trainable_state(model)  # every rank takes part (FSDP gathers); rank 0 gets the weights
    if not is_main_process():
        return {}

    name = made_model("train-rationalyst", p.model_dump(mode="json"), ctx.job_id)
    assert name is not None  # adapter_name is marked Makes(...): the name enqueue checks found for later jobs
    out = model_dir(ctx.home, name)
    tmp = out.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=weights)
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
    final_eval = summary.pop("final_eval")
    return {**summary, "train_examples": len(train_set), "eval_examples": len(eval_set),
            "eval_loss": final_eval["eval_loss"] if final_eval else None, "nproc": p.nproc, "model": name,
            "model_id": model_id}
