"""The one training loop every training job kind shares (RATIONALYST, Neg-LoRA, NAT, NCE, ranker).

Read top to bottom like nanoGPT's: a deterministic data order (a permutation per epoch from the seed),
gradient accumulation, bf16 autocast where the device supports it, gradient clipping, a cosine schedule with
warmup. Every `checkpoint_every` optimizer steps it saves one dict — trainable weights, optimizer,
scheduler, RNG states, step — through the job's checkpoints, and writes the loss of each step to
`training_metrics` in the same fenced transaction. A re-claimed job loads the newest checkpoint and continues
at exactly that step with exactly the batches and random state it would have had, so its loss curve
equals an uninterrupted run's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rplat.models import TrainingMetric
from rplat.runners.context import JobContext
from rplat.store import upsert


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    batch_size: int = 2
    grad_accum: int = 1
    max_steps: int | None = None
    checkpoint_every: int = 50
    max_grad_norm: float = 1.0
    seed: int = 0


Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Token-level cross-entropy on the labels (-100 marks tokens without loss: prompt and padding)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def collate(examples: Sequence[dict[str, list[int]]], pad_id: int) -> Batch:
    """Right-pad `input_ids` and `labels` (labels padded with -100, so padding never carries loss)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in names}


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _micro_batches(n_examples: int, cfg: TrainConfig) -> list[list[int]]:
    """Every micro-batch of the whole run, in order: epoch e uses permutation seed+e."""
    order: list[list[int]] = []
    for epoch in range(cfg.epochs):
        gen = torch.Generator().manual_seed(cfg.seed + epoch)
        perm = torch.randperm(n_examples, generator=gen).tolist()
        order += [perm[i:i + cfg.batch_size] for i in range(0, n_examples, cfg.batch_size)]
    return order


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
    steps = math.ceil(len(_micro_batches(n_examples, cfg)) / cfg.grad_accum)
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def train(ctx: JobContext, model: torch.nn.Module, examples: Sequence[dict[str, list[int]]], cfg: TrainConfig,
          *, pad_id: int, loss_fn: LossFn = causal_lm_loss,
          on_step: Callable[[int, torch.nn.Module], dict[str, float] | None] | None = None) -> dict[str, Any]:
    """Train `model`'s trainable parameters on `examples`; resumes from the job's newest checkpoint."""
    if not examples:
        raise ValueError("no training examples")
    device = next(model.parameters()).device
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = total_steps(len(examples), cfg)
    warmup = int(cfg.warmup_ratio * steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    micro = _micro_batches(len(examples), cfg)
    start = 0
    torch.manual_seed(cfg.seed)
    saved = ctx.load_checkpoint()
    if saved is not None:
        start, state = saved
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        ctx.log(f"resumed training at step {start} of {steps}")
    model.train()
    pending: list[dict[str, Any]] = []
    last_loss = float("nan")

    def flush_and_checkpoint(step: int) -> None:
        ctx.save_checkpoint({"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "rng": _rng_state(), "config": asdict(cfg)},
                            step=step)
        with ctx.transaction() as session:
            upsert(session, TrainingMetric, pending, ["job_id", "step"], ["loss", "lr", "extra"])
        pending.clear()

    for step in range(start, steps):
        ctx.check()
        optimizer.zero_grad(set_to_none=True)
        chunk = micro[step * cfg.grad_accum:(step + 1) * cfg.grad_accum]
        n_tokens = sum(len(i) for i in chunk)
        total = 0.0
        for indices in chunk:
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], pad_id).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = loss_fn(model, batch) * (len(indices) / n_tokens)
            loss.backward()
            total += loss.item()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        extra = on_step(step, model) if on_step is not None else None
        pending.append({"job_id": ctx.job_id, "step": step, "loss": total, "lr": lr, "extra": extra})
        last_loss = total
        ctx.progress(step + 1, steps)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            flush_and_checkpoint(step + 1)
    model.eval()
    return {"steps": steps, "resumed_from": start, "final_loss": last_loss}
