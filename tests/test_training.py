"""The shared training loop: collate, loss, parameter groups, warmup, eval hook, exact resume."""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from sqlalchemy import select

from rplat.models import Checkpoint, TrainingMetric
from rplat.queue import Queue
from rplat.runners.framework.context import JobContext, StepMetric
from rplat.runners.training.config import TrainConfig
from rplat.runners.training.loop import (
    Batch,
    CheckpointMismatch,
    Objective,
    PerEpoch,
    causal_lm_objective,
    check_checkpoint_keys,
    collate_causal_lm,
    lr_factor,
    token_log_losses,
    total_steps,
    train,
    weight_decay_groups,
)

from stores import Store
from tiny_lm import tiny_model, tiny_tokenizer

CFG = TrainConfig(epochs=2, lr=5e-3, batch_size=2, grad_accum=2, checkpoint_every=2, warmup_ratio=0.2, seed=7)
TEXTS = ["The cat sat on the mat.", "Tom has 3 apples.", "12 * 3 = 36.", "Rivers flow to the sea.",
         "Cats like warm places.", "The answer is 7.", "Problem: compute 2 + 2.", "Mountains are tall."]


class Crash(Exception):
    pass


class MemoryHost:
    """The loop's host without a database: checkpoints serialised in memory (and loaded weights_only, like a
    job's), metrics by step; `stop_after` makes `check()` raise once that many steps are done."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.done = 0
        self.checkpoints: dict[int, bytes] = {}
        self.metrics: dict[int, StepMetric] = {}
        self.logs: list[str] = []

    def check(self) -> None:
        if self.stop_after is not None and self.done >= self.stop_after:
            raise Crash

    def progress(self, done: int, total: int | None = None) -> None:
        self.done = done

    def log(self, message: str) -> None:
        self.logs.append(message)

    def record_metrics(self, rows: Sequence[StepMetric]) -> None:
        self.metrics.update({row["step"]: dict(row) for row in rows})  # type: ignore[misc]

    def save_checkpoint(self, state: dict[str, Any], step: int) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.checkpoints[step] = buffer.getvalue()

    def load_checkpoint(self) -> tuple[int, dict[str, Any]] | None:
        if not self.checkpoints:
            return None
        step = max(self.checkpoints)
        return step, torch.load(io.BytesIO(self.checkpoints[step]), weights_only=True)

    def curve(self, key: str = "loss") -> list[float]:
        return [self.metrics[s][key] for s in sorted(self.metrics)]  # type: ignore[literal-required]


def _examples() -> list[dict[str, Any]]:
    tok = tiny_tokenizer()
    out = []
    for k, t in enumerate(TEXTS):
        ids = tok(t)["input_ids"]
        out.append({"input_ids": ids, "labels": [-100, *ids[1:]], "weight": 0.5 + k / 4})
    return out


def _weighted_collate(examples: Sequence[dict[str, Any]]) -> Batch:
    batch = collate_causal_lm(examples, tiny_tokenizer().pad_token_id)
    batch["weight"] = torch.tensor([e["weight"] for e in examples])
    return batch


def _weighted_ce(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-example mean token cross-entropy times the example's weight, summed over the batch's examples."""
    per_token = token_log_losses(model, batch)
    per_example = per_token.sum(1) / (batch["labels"][:, 1:] != -100).sum(1)
    return (per_example * batch["weight"]).sum(), {"ce": per_example.sum().item()}


WEIGHTED = Objective(_weighted_collate, _weighted_ce)


def _lora_model(seed: int = 1) -> torch.nn.Module:
    """The tiny LM (always the same base) with a LoRA initialised from `seed`, whose dropout draws random numbers
    every step (exact resume needs the RNG state)."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model(seed=1)
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"]))


def _trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _eval_loss(model: torch.nn.Module) -> dict[str, float]:
    batch = collate_causal_lm(_examples()[:2], tiny_tokenizer().pad_token_id)
    torch.rand(3)  # an eval hook that draws random numbers must not shift the training's random stream
    tokens = (batch["labels"][:, 1:] != -100).sum()
    return {"eval_loss": (token_log_losses(model, batch).sum() / tokens).item()}


def test_collate_pads_labels_with_ignore_index() -> None:
    batch = collate_causal_lm([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
                              pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_the_recorded_loss_is_the_objectives_mean_over_the_global_batch() -> None:
    examples = _examples()
    cfg = TrainConfig(epochs=1, lr=0.0, batch_size=1, grad_accum=4, checkpoint_every=10, seed=3)
    host = MemoryHost()
    model = tiny_model(seed=2)
    train(host, model, examples, cfg, WEIGHTED)
    first_step = torch.randperm(len(examples), generator=torch.Generator().manual_seed(3)).tolist()[:4]
    with torch.no_grad():  # lr 0: the weights never change, so each step's value can be computed afterwards
        loss, metrics = _weighted_ce(model, _weighted_collate([examples[i] for i in first_step]))
    assert host.metrics[0]["loss"] == pytest.approx(loss.item() / 4, rel=1e-5)
    assert host.metrics[0]["extra"] == {"ce": pytest.approx(metrics["ce"] / 4, rel=1e-5)}


def test_a_weighted_loss_interrupted_and_resumed_equals_the_uninterrupted_run() -> None:
    examples = _examples()
    assert total_steps(len(examples), CFG) == 4
    straight_host, straight = MemoryHost(), _lora_model()
    summary = train(straight_host, straight, examples, CFG, WEIGHTED)
    assert summary["steps"] == 4 and summary["resumed_from"] == 0

    host = MemoryHost(stop_after=2)
    with pytest.raises(Crash):
        train(host, _lora_model(), examples, CFG, WEIGHTED)
    assert sorted(host.metrics) == [0, 1] and sorted(host.checkpoints) == [2]
    host.stop_after = None
    # A fresh process would rebuild the adapter: another init proves its weights come from the checkpoint.
    resumed_model = _lora_model(seed=99)
    resumed = train(host, resumed_model, examples, CFG, WEIGHTED)
    assert resumed["resumed_from"] == 2 and host.logs == ["resumed training at step 2 of 4"]
    assert host.curve() == straight_host.curve()
    assert host.curve("lr") == straight_host.curve("lr")
    final, expected = _trainable(resumed_model), _trainable(straight)
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_checkpoint_without_a_trainable_key_is_an_error() -> None:
    host = MemoryHost()
    model = _lora_model()
    train(host, model, _examples(), TrainConfig(max_steps=2, checkpoint_every=2), WEIGHTED)
    step, state = host.load_checkpoint()  # type: ignore[misc]
    dropped = next(iter(state["model"]))
    assert "lora_A" in dropped
    del state["model"][dropped]
    host.save_checkpoint(state, step + 1)
    with pytest.raises(CheckpointMismatch, match=f"missing {dropped}"):
        train(host, _lora_model(), _examples(), TrainConfig(max_steps=4, checkpoint_every=2), WEIGHTED)


def test_a_checkpoint_lacks_frozen_keys_but_no_key_may_be_unknown() -> None:
    model = _lora_model()
    keys = list(model.state_dict())
    trainable = [k for k in keys if "lora_" in k]
    frozen = [k for k in keys if "lora_" not in k]
    check_checkpoint_keys(trainable, keys, lambda k: "lora_" not in k)  # the frozen base may be absent
    with pytest.raises(CheckpointMismatch, match="unexpected model.extra.weight"):
        check_checkpoint_keys([*trainable, "model.extra.weight"], keys, lambda k: "lora_" not in k)
    with pytest.raises(CheckpointMismatch, match="missing"):
        check_checkpoint_keys(trainable[1:], keys, lambda k: "lora_" not in k)
    # An explicit list of keys allowed to be absent is narrower than "every frozen key".
    allowed = set(frozen[1:])
    with pytest.raises(CheckpointMismatch, match=f"missing {frozen[0]}"):
        check_checkpoint_keys(trainable, keys, allowed.__contains__)


def test_weight_decay_groups_exempt_biases_and_norms() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = weight_decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model[0].weight)]
    assert [id(p) for p in no_decay["params"]] == [id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].bias)]


def test_the_loop_optimises_the_groups_it_is_given() -> None:
    host = MemoryHost()
    model = tiny_model(seed=4)
    norm_before = model.model.norm.weight.detach().clone()
    proj_before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    cfg = TrainConfig(max_steps=2, checkpoint_every=2, lr=1e-2)
    train(host, model, _examples(), cfg, WEIGHTED, param_groups=lambda m: weight_decay_groups(m, 0.5))
    groups = host.load_checkpoint()[1]["optimizer"]["param_groups"]  # type: ignore[index]
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert any("norm" in name for name in groups[1]["params"]) and not any("norm" in n for n in groups[0]["params"])
    assert not torch.equal(model.model.norm.weight, norm_before)
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.weight, proj_before)


@pytest.mark.parametrize(("warmup", "n_warmup"), [
    ({"warmup_steps": 2}, 2),
    ({"warmup_ratio": 0.25}, 2),  # a quarter of the 8 steps
    ({"warmup_ratio": 0.5}, 4),
    ({"warmup_steps": 0}, 0),
])
def test_warmup_is_given_in_steps_or_as_a_ratio(warmup: dict[str, Any], n_warmup: int) -> None:
    host = MemoryHost()
    cfg = TrainConfig(batch_size=1, lr=1e-3, checkpoint_every=8, **warmup)
    train(host, tiny_model(), _examples(), cfg, WEIGHTED)
    assert host.curve("lr") == pytest.approx([1e-3 * lr_factor(s, n_warmup, 8) for s in range(8)])


def test_lr_factor_rises_linearly_then_decays_by_a_cosine() -> None:
    assert [lr_factor(s, 2, 8) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lr_factor(5, 2, 8) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lr_factor(8, 2, 8) == pytest.approx(0.0)


def test_lr_factor_decays_to_the_final_ratio_when_given_one() -> None:
    assert lr_factor(2, 2, 8, 0.02) == pytest.approx(1.0)
    assert lr_factor(5, 2, 8, 0.02) == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lr_factor(8, 2, 8, 0.02) == pytest.approx(0.02)


def test_per_epoch_examples_train_each_epoch_whole_before_the_next() -> None:
    """Epoch e's own examples (a fresh draw each epoch), shuffled within the epoch, never mixed across epochs."""
    seen: list[int] = []

    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        seen.extend(batch["x"].tolist())
        return sum(p.sum() for p in model.parameters()) * 0.0, {}

    objective = Objective(lambda rows: {"x": torch.tensor(list(rows))}, loss, lambda batch: float(len(batch["x"])))
    epochs = [[0, 1, 2, 3], [10, 11, 12, 13, 14]]
    cfg = TrainConfig(epochs=7, batch_size=1, grad_accum=1, checkpoint_every=100, seed=3)
    result = train(MemoryHost(), torch.nn.Linear(1, 1), PerEpoch(epochs), cfg, objective)
    assert result["steps"] == total_steps([4, 5], cfg) == 9  # cfg.epochs does not count
    assert sorted(seen[:4]) == epochs[0] and sorted(seen[4:]) == epochs[1] and seen != [*epochs[0], *epochs[1]]


def test_eval_values_are_stored_every_k_steps_and_leave_training_unchanged() -> None:
    examples = _examples()
    plain = MemoryHost()
    train(plain, _lora_model(), examples, CFG, WEIGHTED)
    host = MemoryHost()
    model = _lora_model()
    cfg = TrainConfig(**{**CFG.__dict__, "eval_every": 3})
    summary = train(host, model, examples, cfg, WEIGHTED, eval_fn=_eval_loss)
    assert host.curve() == plain.curve()
    with_eval = [s for s in sorted(host.metrics) if "eval_loss" in (host.metrics[s]["extra"] or {})]
    assert with_eval == [2, 3]  # every 3 steps and after the last one
    model.eval()
    with torch.no_grad():
        assert host.metrics[3]["extra"]["eval_loss"] == pytest.approx(_eval_loss(model)["eval_loss"])  # type: ignore[index]
    assert summary["final_eval"] == {"eval_loss": host.metrics[3]["extra"]["eval_loss"]}  # type: ignore[index]
    assert set(host.metrics[3]["extra"]) == {"ce", "eval_loss"}  # type: ignore[arg-type]


def test_a_job_context_hosts_the_loop_and_stores_metrics_and_checkpoints(db: Store) -> None:
    queue = Queue(db.engine(), retry_base_seconds=0)
    job_id, _ = queue.enqueue("probe", {"tag": "train", "devices": False})
    job = queue.claim("test-runner", None, lease_seconds=60)
    assert job is not None and job.id == job_id
    ctx = JobContext(job, queue, db.home, "test-runner", threading.Event())
    memory = MemoryHost()
    train(memory, tiny_model(seed=1), _examples(), CFG, causal_lm_objective(tiny_tokenizer().pad_token_id))
    summary = train(ctx, tiny_model(seed=1), _examples(), CFG, causal_lm_objective(tiny_tokenizer().pad_token_id))
    assert summary["steps"] == 4
    with db.engine().connect() as conn:
        rows = conn.execute(select(TrainingMetric.step, TrainingMetric.loss, TrainingMetric.lr)
                            .where(TrainingMetric.job_id == job_id).order_by(TrainingMetric.step)).all()
        kept = conn.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)).all()
    assert [r.step for r in rows] == [0, 1, 2, 3] and sorted(kept) == [2, 4]
    assert [r.loss for r in rows] == pytest.approx(memory.curve(), rel=1e-6)
    assert [r.lr for r in rows] == pytest.approx(memory.curve("lr"))
    step, state = ctx.load_checkpoint()  # type: ignore[misc]
    assert step == 4 and set(state) == {"model", "optimizer", "scheduler", "rng", "config"}
