"""The shared training loop: checkpoints carry everything, and a resumed job continues the exact loss curve."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from rplat.models import Checkpoint, TrainingMetric
from rplat.queue import Queue
from rplat.runners.context import JobContext
from rplat.runners.kinds import ProbeParams
from rplat.runners.training import TrainConfig, collate, total_steps, train

from tiny_lm import tiny_model, tiny_tokenizer

CFG = TrainConfig(epochs=2, lr=5e-3, batch_size=2, grad_accum=2, checkpoint_every=2, warmup_ratio=0.2, seed=7)


class Crash(Exception):
    pass


def _examples() -> list[dict[str, list[int]]]:
    tok = tiny_tokenizer()
    texts = ["The cat sat on the mat.", "Tom has 3 apples.", "12 * 3 = 36.", "Rivers flow to the sea.",
             "Cats like warm places.", "The answer is 7.", "Problem: compute 2 + 2.", "Mountains are tall."]
    out = []
    for t in texts:
        ids = tok(t)["input_ids"]
        out.append({"input_ids": ids, "labels": [-100, *ids[1:]]})
    return out


def _context(queue: Queue, store_home) -> JobContext:  # type: ignore[no-untyped-def]
    job = queue.claim("test-runner", None, lease_seconds=60)
    assert job is not None
    return JobContext(job, ProbeParams(devices=False), queue, store_home, "test-runner", threading.Event())


def _curve(db, job_id: int) -> list[tuple[int, float]]:  # type: ignore[no-untyped-def]
    with db.engine().connect() as conn:
        return [tuple(r) for r in conn.execute(select(TrainingMetric.step, TrainingMetric.loss)
                                               .where(TrainingMetric.job_id == job_id).order_by(TrainingMetric.step))]


def test_collate_pads_labels_with_ignore_index() -> None:
    batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_resumed_training_continues_the_uninterrupted_loss_curve(db) -> None:  # type: ignore[no-untyped-def]
    queue = Queue(db.engine(), retry_base_seconds=0)
    examples = _examples()
    pad = tiny_tokenizer().pad_token_id
    steps = total_steps(len(examples), CFG)
    assert steps == 4

    straight_id, _ = queue.enqueue("probe", {"tag": "straight", "devices": False})
    summary = train(_context(queue, db.home), tiny_model(seed=1), examples, CFG, pad_id=pad)
    assert summary["steps"] == 4 and summary["resumed_from"] == 0

    crashed_id, _ = queue.enqueue("probe", {"tag": "crashed", "devices": False})
    ctx = _context(queue, db.home)

    def crash_after_step_two(step: int, _model) -> None:  # type: ignore[no-untyped-def]
        if step == 2:
            raise Crash

    with pytest.raises(Crash):
        train(ctx, tiny_model(seed=1), examples, CFG, pad_id=pad, on_step=crash_after_step_two)
    queue.fail(crashed_id, ctx.job.lease_token, "simulated crash", retryable=True)
    assert [s for s, _ in _curve(db, crashed_id)] == [0, 1]

    # A fresh process would rebuild the model from scratch: a different init proves the weights come from the checkpoint.
    resumed = train(_context(queue, db.home), tiny_model(seed=99), examples, CFG, pad_id=pad)
    assert resumed["resumed_from"] == 2
    straight, again = _curve(db, straight_id), _curve(db, crashed_id)
    assert [s for s, _ in again] == [0, 1, 2, 3]
    assert [loss for _, loss in again] == pytest.approx([loss for _, loss in straight], rel=1e-5)
    with db.engine().connect() as conn:
        kept = conn.scalars(select(Checkpoint.step).where(Checkpoint.job_id == crashed_id)).all()
    assert sorted(kept) == [2, 4]
