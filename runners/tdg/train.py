"""TDG's plain-LoRA kinds: train-neg (B2 stage 1) and the B5 baselines kd, mix, nt, ul, sft.

One handler, `run`, serves them all: it finds the job's row of the training table (`rplat.runners.tdg.kinds`),
which says which examples it stores (chain labels, gold solutions), the objective it trains them with and the
setting whose name is its LoRA's registry role. The handler stores the examples, then `fit` trains a fresh peft
LoRA on the student base through the shared loop (exact resume), in the handler's process or, with `nproc > 1`,
on every torchrun worker; rank 0 saves the adapter and registers it as format `lora` with its base as parent, so
`rplat serve` serves it and train-nat plugs train-neg's in.

Every loss is a sum over the target tokens (question and chain, pads masked) and the loop divides by the
tokens of the global batch: MLE kinds train on HF's mean token loss, NT on `-sum_b w_b log p(b)` per token
(w = +1 for positives and gold, -nt_lambda for negatives), UL on MLE of positives + ul_lambda x the
unlikelihood of negatives per token (`rplat.methods.negatives`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rplat.llm.load import load
from rplat.llm.resolve import base_of, prepare_backend
from rplat.methods.negatives import mle_and_unlikelihood, weighted_nll
from rplat.registry import get_model
from rplat.runners.framework.context import JobContext
from rplat.runners.tdg import examples as tdg_data
from rplat.runners.tdg.kinds import TdgTrainParams, TrainNtParams, TrainUlParams, training_of
from rplat.runners.training.distributed import is_main_process, launch
from rplat.runners.training.loop import (
    Batch,
    Objective,
    causal_lm_objective,
    collate_causal_lm,
    target_tokens,
    token_log_losses,
    train,
    trainable_state,
    training_device,
)


def _token_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of every next-token target and the mask of the targets that carry loss (pads are -100)."""
    return -token_log_losses(model, batch), batch["labels"][:, 1:] != -100


def _nll_parts(logprobs: torch.Tensor, mask: torch.Tensor, negative: torch.Tensor) -> dict[str, float]:
    """NLL summed over the negatives' and the other rows' tokens, and the negatives' token count: divided by the
    batch's tokens (as the loop does) they add up to the mean token NLL, and nll_neg / tokens_neg is the
    negatives' own mean."""
    neg = (mask & negative.unsqueeze(1)).to(logprobs.dtype)
    rest = (mask & ~negative.unsqueeze(1)).to(logprobs.dtype)
    return {"nll_neg": -(logprobs * neg).sum().item(), "nll_pos": -(logprobs * rest).sum().item(),
            "tokens_neg": neg.sum().item()}


def _collate_with(pad_id: int, **columns: Callable[[dict[str, Any]], float | bool]
                  ) -> Callable[[Sequence[dict[str, Any]]], Batch]:
    """The causal-LM collate plus one per-row tensor for each named function of an example."""
    def collate(examples: Sequence[dict[str, Any]]) -> Batch:
        batch = collate_causal_lm(examples, pad_id)
        for key, of in columns.items():
            batch[key] = torch.tensor([of(e) for e in examples])
        return batch
    return collate


def mle_objective(p: TdgTrainParams, pad_id: int) -> Objective:
    """sft, kd, mix and neg: the causal-LM loss on every example alike."""
    return causal_lm_objective(pad_id)


def nt_objective(p: TrainNtParams, pad_id: int) -> Objective:
    """NT: each example's token NLL weighted +1 (positives, gold) or -nt_lambda (negatives)."""
    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs, mask = _token_logprobs(model, batch)
        return weighted_nll(logprobs, mask, batch["weight"]), _nll_parts(logprobs, mask, batch["negative"])

    collate = _collate_with(pad_id, weight=lambda e: -p.nt_lambda if e["label"] == "neg" else 1.0,
                            negative=lambda e: e["label"] == "neg")
    return Objective(collate, loss, target_tokens)


def ul_objective(p: TrainUlParams, pad_id: int) -> Objective:
    """UL: MLE on the positives plus ul_lambda x the token unlikelihood of the negatives."""
    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logprobs, mask = _token_logprobs(model, batch)
        total, parts = mle_and_unlikelihood(logprobs, mask, batch["negative"], p.ul_lambda)
        return total, {**parts, **_nll_parts(logprobs, mask, batch["negative"])}

    return Objective(_collate_with(pad_id, negative=lambda e: e["label"] == "neg"), loss, target_tokens)


def run(ctx: JobContext, p: TdgTrainParams) -> dict[str, Any]:
    """Store the kind's examples (once: a resumed job finds them), then train, alone or under torchrun."""
    row = training_of(p)
    prepare_backend(ctx.engine, p.model, home=ctx.home)  # converts the bundled model once, before any worker
    tdg_data.store_examples(ctx, p, row.labels, gold=row.gold(p))
    lineage = {"chain_labelers": tdg_data.chain_labelers(ctx)}  # whose verdicts the chain labels are
    if p.nproc > 1:
        return {**launch(ctx, "rplat.runners.tdg.train:fit", p.nproc), **lineage}
    return {**fit(ctx, p), **lineage}


def fit(ctx: JobContext, p: TdgTrainParams) -> dict[str, Any]:
    """Train a fresh LoRA on the job's stored examples; on rank 0 (or alone) save and register it."""
    row = training_of(p)
    spec = prepare_backend(ctx.engine, p.model, home=ctx.home)
    with ctx.read() as s:
        base_id = base_of(s, get_model(s, p.model)).id
    examples = tdg_data.load_examples(ctx)
    counts = dict(sorted(Counter(e.label for e in examples).items()))
    device = training_device()
    torch.manual_seed(p.seed)  # the LoRA's initialisation is random: the same params must give the same run
    model, tokenizer = load(spec, adapters=(), trainable=True, dtype=torch.float32, device=str(device))
    from peft import get_peft_model

    model = get_peft_model(model, p.lora_config())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    encoded = tdg_data.encode_examples(tokenizer, examples, p.max_length)
    summary = train(ctx, model, encoded, p.train_config(), row.load_objective()(p, pad_id))
    weights = trainable_state(model)  # every rank takes part (FSDP gathers); rank 0 gets the weights
    if not is_main_process():
        return {}
    name, model_id = tdg_data.save_and_register(
        ctx, row.name, p, lambda out: model.save_pretrained(out, state_dict=weights), fmt="lora", role=row.setting,
        parents={"base": base_id}, config={"examples": counts}, lora_r=p.lora_r, lora_alpha=p.lora_alpha,
        target_modules=list(p.target_modules))
    summary.pop("final_eval")
    return {**summary, "examples": counts, "nproc": p.nproc, "model": name, "model_id": model_id}

