"""`train-nat` (TDG B2 stage 2): positive LoRA + integration unit on the positive chains, negative LoRA frozen.

The handler stores the job's examples (the positive chains of `teacher` shorter than `max_chars`) as
`training_examples`; `fit` loads the student's base trainable in float32, attaches the NAT layer around the
target modules with the negative LoRA of `neg_model` (a train-neg result, a peft LoRA directory) frozen in
it, and trains only the positive LoRA and the unit through the shared loop (causal-LM loss on question + chain,
pads masked; strict resume). The objective returns every NAT layer's mean w_neg as metrics, so each step's
values land in `training_metrics.extra` (persisted with the loss, so resume-safe); after training rank 0 copies
those of every `log_every`-th step and the last into `nat_w_neg`, saves the NAT directory and registers it
as format `nat`, role its setting `nat`, parents base and neg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select

from rplat.llm.load import load
from rplat.llm.resolve import prepare_backend
from rplat.methods.nat import (
    NATConfig,
    attach_nat,
    canonical_state,
    negative_state,
    read_peft_lora,
    save_nat,
    w_neg_stats,
)
from rplat.models import NatWNeg, TrainingMetric
from rplat.runners.framework.context import JobContext
from rplat.runners.tdg.examples import (
    adapter_on_student_base,
    chain_labelers,
    encode_examples,
    load_examples,
    save_and_register,
    store_examples,
)
from rplat.runners.tdg.kinds import TrainNatParams, training_of
from rplat.runners.training.distributed import is_main_process, launch
from rplat.runners.training.loop import (
    Batch,
    Objective,
    causal_lm_loss,
    collate_causal_lm,
    target_tokens,
    train,
    trainable_state,
    training_device,
)
from rplat.store import insert_ignore

METRIC_PREFIX = "w_neg."


def nat_config(p: TrainNatParams) -> NATConfig:
    return NATConfig(r=p.lora_r, alpha=p.lora_alpha, dropout=p.lora_dropout, target_modules=tuple(p.target_modules),
                     unit_dim=p.unit_dim, beta=p.unit_beta)


def _models(ctx: JobContext, p: TrainNatParams) -> tuple[int, int, str, str]:
    """(base id, neg id, neg path, base name), after checking that the negative LoRA sits on the student's base."""
    base, neg = adapter_on_student_base(ctx, p, "neg_model", "lora", "train-neg")
    return base.id, neg.id, neg.path or "", base.name


def run(ctx: JobContext, p: TrainNatParams) -> dict[str, Any]:
    prepare_backend(ctx.engine, p.model, home=ctx.home)  # converts the bundled model once, before any worker starts
    _models(ctx, p)
    store_examples(ctx, p, training_of(p).labels)  # the positives (the negatives went into the negative LoRA)
    lineage = {"chain_labelers": chain_labelers(ctx)}  # whose verdicts the chain labels are
    if p.nproc > 1:
        return {**launch(ctx, "rplat.runners.tdg.nat:fit", p.nproc), **lineage}
    return {**fit(ctx, p), **lineage}


def nat_objective(pad_id: int) -> Objective:
    """Summed token cross-entropy; metrics = each NAT layer's mean w_neg on the batch times its target tokens
    (the loop divides metric sums by the global batch's units, so the stored value is the token-weighted mean)."""

    def loss(module: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        total, _ = causal_lm_loss(module, batch)
        units = target_tokens(batch)
        return total, {f"{METRIC_PREFIX}{layer}.{proj}": w * units for layer, proj, w in w_neg_stats(module)}

    return Objective(lambda examples: collate_causal_lm(examples, pad_id), loss, target_tokens)


def write_alpha_logs(ctx: JobContext, steps: int, log_every: int) -> int:
    """Copy the stored per-step w_neg means of every `log_every`-th step and the last into nat_w_neg."""
    with ctx.read() as s:
        metrics = s.execute(select(TrainingMetric.step, TrainingMetric.extra)
                            .where(TrainingMetric.job_id == ctx.job_id).order_by(TrainingMetric.step)).all()
    rows = []
    for step, extra in metrics:
        if (step + 1) % log_every and step + 1 != steps:
            continue
        for key, value in (extra or {}).items():
            if key.startswith(METRIC_PREFIX):
                layer, proj = key[len(METRIC_PREFIX):].split(".", 1)
                rows.append(dict(job_id=ctx.job_id, step=step, layer=int(layer), proj=proj, mean_w_neg=float(value)))
    with ctx.transaction() as s:
        insert_ignore(s, NatWNeg, rows, ["job_id", "step", "layer", "proj"])
    return len(rows)


def fit(ctx: JobContext, p: TrainNatParams) -> dict[str, Any]:
    """Train on the job's stored positives; on rank 0 (or alone) save and register the NAT model."""
    spec = prepare_backend(ctx.engine, p.model, home=ctx.home)
    base_id, neg_id, neg_path, base_name = _models(ctx, p)
    cfg = nat_config(p)
    neg_state = read_peft_lora(Path(neg_path), cfg)
    device = training_device()
    torch.manual_seed(p.seed)  # the unit's and the positive LoRA's initialisation: same params, same run
    model, tokenizer = load(spec, adapters=(), trainable=True, dtype=torch.float32, device=str(device))
    model = attach_nat(model, cfg, neg_state)
    examples = encode_examples(tokenizer, load_examples(ctx), p.max_length)
    row = training_of(p)
    summary = train(ctx, model, examples, p.train_config(), row.load_objective()(tokenizer.pad_token_id))
    weights = trainable_state(model)  # every rank takes part (FSDP gathers); rank 0 gets the weights
    if not is_main_process():
        return {}
    alpha_logs = write_alpha_logs(ctx, summary["steps"], p.log_every)
    # The negative LoRA never changes: saved from its own file, so sharded (FSDP) copies need no gathering.
    state = {**negative_state(neg_state), **canonical_state(weights)}
    name, model_id = save_and_register(
        ctx, row.name, p,
        lambda out: save_nat(model, out, cfg, {"base_model_name_or_path": base_name, "neg_model": p.neg_model},
                             state=state),
        fmt="nat", role=row.setting, parents={"base": base_id, "neg": neg_id},
        config={"nat": cfg.to_dict(), "examples": {"pos": len(examples)}},
        lora_r=p.lora_r, lora_alpha=p.lora_alpha, target_modules=list(p.target_modules))
    summary.pop("final_eval", None)
    return {**summary, "examples": len(examples), "alpha_logs": alpha_logs, "nproc": p.nproc, "model": name,
            "model_id": model_id}
