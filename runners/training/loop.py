"""The one training loop every training job kind shares (RATIONALYST, Neg-LoRA, NAT, NCE, ranker).

Read top to bottom like nanoGPT's. A kind supplies its examples, an `Objective` (collate, loss, units), and
optionally parameter groups, an eval hook and which checkpoint keys may be absent; the loop owns the rest:

- order: one permutation of the examples per epoch from the seed, streamed; optimizer step s takes the next
  `batch_size * grad_accum` examples (the global batch), whatever the number of processes;
- processes: under torchrun (torch.distributed initialised) rank r takes every world-th example of the global
  batch, cut into micro-batches of at most `batch_size`; gradients are all-reduced by DDP (or sharded by FSDP,
  `parallel="fsdp"`); rank 0 alone writes metrics and checkpoints;
- normalisation: the loss and metrics an objective returns are *sums* over the batch's units (target tokens,
  examples, pairs...) and the loop divides by the units of the whole global batch, so the gradient and the
  recorded values do not depend on how the batch is split into micro-batches or processes;
- schedule: linear warmup (steps, or a ratio of the steps) then cosine decay, AdamW over parameter groups,
  gradient clipping, bf16 autocast on GPUs that support it;
- checkpoints: every `checkpoint_every` steps one dict — trainable weights, optimizer, scheduler, every rank's
  RNG state — after the steps' metrics (`training_metrics`: loss, lr, metrics and eval values in `extra`; the same
  rows go to MLflow or W&B when the job reports to one, and the dict keeps that run's id: `trackers`);
- resume: the newest checkpoint is loaded strictly (every trainable key present, nothing unexpected; only keys
  the kind allows may be absent) and training continues at exactly that step with the batches and random state
  it would have had, so the loss curve equals an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from rplat.errors import UserError
from rplat.runners.framework.context import StepMetric
from rplat.runners.training import trackers
from rplat.runners.training.config import TrainConfig

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, dict[str, float]]]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]
ParamGroups = Callable[[torch.nn.Module], list[dict[str, Any]]]

# Rank 0 gathers the full (unsharded) trainable state on the CPU; every rank loads a full state and keeps its part.
_SAVE = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
_LOAD = StateDictOptions(full_state_dict=True, strict=False)


class TrainingHost(Protocol):
    """What the loop needs from whoever runs it: a `JobContext` in a job, a plain object in a unit test."""

    def check(self) -> None:
        """Raise to stop (cancellation, lost lease, shutdown); called before every step."""

    def progress(self, done: int, total: int | None = None) -> None: ...

    def log(self, message: str) -> None: ...

    def record_metrics(self, rows: Sequence[StepMetric]) -> None:
        """Store per-step metrics, idempotently (a resumed run writes some steps again)."""

    def save_checkpoint(self, state: dict[str, Any], step: int) -> object: ...

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        """The newest checkpoint as (step, state), or None."""


class CheckpointMismatch(UserError):
    """A checkpoint does not fit the model being trained: resuming from it would train other weights."""


def batch_examples(batch: Batch) -> float:
    """Units of a batch whose loss is a sum over its examples: the number of rows."""
    return float(len(next(iter(batch.values()))))


@dataclass(frozen=True)
class Objective:
    """What a kind trains on. `collate(examples)` makes a batch of tensors; `loss(model, batch)` returns the
    loss and metrics, both summed over the batch's units (same metric keys for every batch); `units(batch)`
    counts those units, so that the loop can normalise by the units of the whole global batch."""

    collate: Callable[[Sequence[Any]], Batch]
    loss: LossFn
    units: Callable[[Batch], float] = batch_examples


# --- the causal-LM objective (cross-entropy on the labelled tokens) -----------------------------------------


def collate_causal_lm(examples: Sequence[dict[str, list[int]]], pad_id: int) -> Batch:
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


def token_log_losses(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Per-token cross-entropy of the next-token predictions, shape (rows, width - 1); 0 where labels are -100."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")


def causal_lm_loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed token cross-entropy on the labels (normalised by `target_tokens` it is HF's mean token loss)."""
    return token_log_losses(model, batch).sum(), {}


def target_tokens(batch: Batch) -> float:
    """Tokens that carry loss: labels other than -100 after the shift to next-token targets."""
    return float((batch["labels"][:, 1:] != -100).sum())


def causal_lm_objective(pad_id: int) -> Objective:
    return Objective(lambda examples: collate_causal_lm(examples, pad_id), causal_lm_loss, target_tokens)


# --- optimizer parameter groups, schedule, data order ---------------------------------------------------------


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups of the trainable parameters: matrices decay, 1-D parameters (biases, norm scales) do not."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]


@dataclass(frozen=True)
class PerEpoch:
    """Examples that differ between epochs (e.g. a fresh random pair per question each epoch): epoch e trains on
    `epochs[e]`, shuffled, after the whole of epoch e - 1. `TrainConfig.epochs` is then ignored."""

    epochs: Sequence[Sequence[Any]]


def _epoch_sizes(examples: Sequence[Any] | PerEpoch, cfg: TrainConfig) -> list[int]:
    return [len(e) for e in examples.epochs] if isinstance(examples, PerEpoch) else [len(examples)] * cfg.epochs


def total_steps(n_examples: int | Sequence[int], cfg: TrainConfig) -> int:
    """Optimizer steps over `n_examples` per epoch (an int: the same examples `cfg.epochs` times)."""
    n = cfg.epochs * n_examples if isinstance(n_examples, int) else sum(n_examples)
    steps = math.ceil(n / (cfg.batch_size * cfg.grad_accum))
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def warmup_steps(steps: int, cfg: TrainConfig) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_ratio * steps)


def lr_factor(step: int, warmup: int, steps: int, final: float = 0.0) -> float:
    """Multiplier of the peak learning rate at optimizer step `step`: linear warmup, then a cosine from 1 down to
    `final` (0: to zero)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, steps - warmup)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _order(sizes: Sequence[int], cfg: TrainConfig, *, distinct: bool) -> list[int]:
    """Every example index of the whole run, in order: epoch e is the permutation seeded with seed + e of its
    `sizes[e]` examples (the same examples every epoch, or with `distinct` epoch e's own, stored after e - 1's)."""
    order: list[int] = []
    offset = 0
    for epoch, size in enumerate(sizes):
        perm = torch.randperm(size, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
        order += [offset + i for i in perm] if distinct else perm
        offset += size if distinct else 0
    return order


# --- processes ---------------------------------------------------------------------------------------------


def training_device() -> torch.device:
    """This process's device: its local GPU under torchrun (LOCAL_RANK), the first GPU alone, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _wrap(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, world: int) -> torch.nn.Module:
    """The module the training forward runs on: the model itself alone, DDP or FSDP2 under torchrun."""
    if world == 1:
        return model
    if cfg.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard per transformer block (HF models name theirs in _no_split_modules), then the rest at the root.
        blocks = {name for m in model.modules() for name in (getattr(m, "_no_split_modules", None) or [])}
        for module in [m for m in model.modules() if type(m).__name__ in blocks]:
            fully_shard(module)
        fully_shard(model)
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _all_sum(values: list[float], device: torch.device, world: int) -> list[float]:
    if world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


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


def _all_rng_states(world: int) -> list[dict[str, Any]]:
    if world == 1:
        return [_rng_state()]
    states: list[Any] = [None] * world
    dist.all_gather_object(states, _rng_state())
    return states


@contextlib.contextmanager
def _no_sync(wrapped: torch.nn.Module, *, last: bool) -> Iterator[None]:
    """DDP all-reduces on every backward unless told not to: only the step's last micro-batch synchronises."""
    if last or not isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        yield
        return
    with wrapped.no_sync():
        yield


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights, whole and on the CPU, in rank 0 (call it on every rank: FSDP gathers the shards)."""
    return get_model_state_dict(model, options=_SAVE)


def check_checkpoint_keys(saved: Sequence[str], model_keys: Sequence[str], may_be_absent: Callable[[str], bool]
                          ) -> None:
    """Strict loading with named exceptions: every model key not allowed to be absent must be in the checkpoint,
    and the checkpoint must hold no key the model lacks."""
    missing = sorted(k for k in set(model_keys) - set(saved) if not may_be_absent(k))
    unexpected = sorted(set(saved) - set(model_keys))
    if missing or unexpected:
        what = "; ".join(part for part in (f"missing {', '.join(missing[:5])}" if missing else "",
                                           f"unexpected {', '.join(unexpected[:5])}" if unexpected else "") if part)
        raise CheckpointMismatch(f"the job's newest checkpoint does not fit the model being trained ({what}); it "
                                 "comes from another model or adapter set-up, so enqueue the training as a new job.")


# --- the loop ----------------------------------------------------------------------------------------------


def train(host: TrainingHost, model: torch.nn.Module, examples: Sequence[Any] | PerEpoch, cfg: TrainConfig,
          objective: Objective, *, eval_fn: EvalFn | None = None, param_groups: ParamGroups | None = None,
          may_be_absent: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """Train `model`'s trainable parameters on `examples`, resuming from the host's newest checkpoint.

    `param_groups(module)` gives AdamW's groups (default: one group, `cfg.weight_decay`). `eval_fn(model)` runs
    without gradients in eval mode, on every rank, every `cfg.eval_every` steps and after the last step; its
    values go into that step's `extra`. `may_be_absent(key)` says which state-dict keys a checkpoint may lack
    (default: every key that is not a trainable parameter, i.e. frozen weights and buffers). Returns steps,
    resumed_from, final_loss and the last eval values (`final_eval`), and on rank 0 of a job that reports to a
    tracker its run (`tracker`: report_to, run_id)."""
    sizes = _epoch_sizes(examples, cfg)
    distinct = isinstance(examples, PerEpoch)
    if isinstance(examples, PerEpoch):
        examples = [e for epoch in examples.epochs for e in epoch]
    if not examples:
        raise UserError("there are no training examples; check the job's inputs.")
    rank, world = rank_and_world()
    main = rank == 0
    device = next(model.parameters()).device
    autocast = device.type == "cuda" and torch.cuda.is_bf16_supported()
    model_keys = list(model.state_dict())
    trainable_keys = set(get_model_state_dict(model, options=StateDictOptions(ignore_frozen_params=True)))
    absent_ok = may_be_absent or (lambda key: key not in trainable_keys)
    wrapped = _wrap(model, cfg, device, world)
    groups = param_groups(wrapped) if param_groups is not None else [
        {"params": [p for p in wrapped.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    steps = total_steps(sizes, cfg)
    warmup = warmup_steps(steps, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, steps,
                                                                                 cfg.final_lr_ratio))
    order = _order(sizes, cfg, distinct=distinct)
    per_step = cfg.batch_size * cfg.grad_accum
    start = 0
    torch.manual_seed(cfg.seed + rank)
    run = trackers.LoopRun(host, cfg.report_to if main else "none")  # rank 0 alone reports
    saved = host.load_checkpoint()
    if saved is not None:
        start, state = saved
        check_checkpoint_keys(list(state["model"]), model_keys, absent_ok)
        set_model_state_dict(wrapped, state["model"], options=_LOAD)
        set_optimizer_state_dict(wrapped, optimizer, state["optimizer"], options=_LOAD)
        scheduler.load_state_dict(state["scheduler"])
        if len(state["rng"]) == world:
            _set_rng_state(state["rng"][rank])
        elif main:
            host.log(f"the checkpoint was written by {len(state['rng'])} processes, not {world}: fresh random "
                     "states, so dropout masks differ from an uninterrupted run")
        run.resume(state.get("tracker"))
        if main:
            host.log(f"resumed training at step {start} of {steps}")
    pending: list[StepMetric] = []
    last_loss = float("nan")
    final_eval: dict[str, float] | None = None

    def evaluate() -> dict[str, float]:
        assert eval_fn is not None
        model.eval()
        # The hook may draw random numbers; forking keeps the training stream (and so exact resume) unaffected.
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            values = eval_fn(model)
        model.train()
        return values

    def checkpoint(step: int) -> None:
        # Collectives first (FSDP gathers shards, every rank's RNG goes to rank 0), then rank 0 writes. Metrics
        # before the checkpoint: a crash in between re-runs those steps, whose rows are then written again.
        state = {"model": trainable_state(wrapped),
                 "optimizer": get_optimizer_state_dict(wrapped, optimizer, options=_SAVE),
                 "scheduler": scheduler.state_dict(), "rng": _all_rng_states(world), "config": asdict(cfg)}
        if main:
            host.record_metrics(pending)
            run.log(pending)  # before the checkpoint that names the run; a resumed run skips the steps it holds
            if run.state() is not None:
                state["tracker"] = run.state()
            host.save_checkpoint(state, step=step)
        pending.clear()

    model.train()
    for step in range(start, steps):
        host.check()
        optimizer.zero_grad(set_to_none=True)
        global_batch = order[step * per_step:(step + 1) * per_step]
        mine = global_batch[rank::world]
        # A rank with no example this step runs one with weight 0, so that it still joins the all-reduce.
        weight = 1.0 if mine else 0.0
        mine = mine or global_batch[:1]
        batches = [{k: v.to(device) for k, v in objective.collate([examples[i] for i in mine[j:j + cfg.batch_size]])
                    .items()} for j in range(0, len(mine), cfg.batch_size)]
        units = _all_sum([weight * sum(objective.units(b) for b in batches)], device, world)[0] or 1.0
        # DDP and FSDP average gradients over the ranks: times world, the sum over ranks is the global loss's.
        scale = weight * world / units
        sums: dict[str, float] = {}
        for j, batch in enumerate(batches):
            with _no_sync(wrapped, last=j == len(batches) - 1):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    loss, metrics = objective.loss(wrapped, batch)
                (loss * scale).backward()
            for key, value in {"loss": loss.item(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + weight * value
        keys = sorted(sums)
        reduced = dict(zip(keys, _all_sum([sums[k] for k in keys], device, world), strict=True))
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        extra = {k: v / units for k, v in reduced.items()}
        last_loss = extra.pop("loss")
        if eval_fn is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == steps):
            final_eval = evaluate()
            extra.update(final_eval)
        pending.append({"step": step, "loss": last_loss, "lr": lr, "extra": extra or None})
        if main:
            host.progress(step + 1, steps)
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            checkpoint(step + 1)
    if eval_fn is not None and final_eval is None:  # resumed after the last step: evaluate the restored weights
        final_eval = evaluate()
    model.eval()
    tracked = run.state()
    return {"steps": steps, "resumed_from": start, "final_loss": last_loss, "final_eval": final_eval,
            **({"tracker": tracked} if tracked else {})}

