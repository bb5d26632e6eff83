"""The training loop's configuration, apart from the loop so that params and enqueue never import torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    warmup_steps: int | None = None  # when given, wins over warmup_ratio
    batch_size: int = 2  # examples per micro-batch (per process)
    grad_accum: int = 1  # global batch = batch_size * grad_accum examples, whatever the number of processes
    max_steps: int | None = None
    checkpoint_every: int = 50
    eval_every: int | None = None  # the eval hook runs every this many steps, and always after the last one
    max_grad_norm: float = 1.0
    final_lr_ratio: float = 0.0  # the cosine decays to this fraction of the peak learning rate
    seed: int = 0
    parallel: Literal["ddp", "fsdp"] = "ddp"  # with several processes: replicate (DDP) or shard (FSDP2)
    report_to: str | None = None  # mlflow, wandb or none; None: RPLAT_REPORT_TO decides (runners.training.trackers)
