"""train-nat on a tiny random model (SQLite and PostgreSQL): after train-neg, positives only, alpha logs, kill -9."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select

from rplat.errors import UserError
from rplat.kinds import validate_params
from rplat.llm.load import LOADED, load, open_backend
from rplat.llm.resolve import prepare_backend
from rplat.methods.nat import nat_layers, nat_mode
from rplat.models import (
    Job,
    Model,
    ModelParent,
    NatWNeg,
    TrainingExample,
    TrainingMetric,
)
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

import factories as make
from killable_runners import StartRunner, count_rows, kill_then_rescue
from stores import Store
from tiny_lm import tiny_and_chain_set, tiny_tokenizer

TEACHER = "gpt-x"
PROBLEMS = ["Compute 2 + 3.", "Compute 12 * 3.", "Tom has 3 apples and buys 4."]
CHAINS = [(0, 0, "pos", "2 + 3 = 5, so \\boxed{5}."), (0, 1, "neg", "2 + 3 = 6, so \\boxed{6}."),
          (1, 0, "pos", "12 * 3 = 36, so \\boxed{36}."), (1, 1, "neg", "12 * 3 = 35, so \\boxed{35}."),
          (2, 0, "pos", "3 + 4 = 7 apples, \\boxed{7}."), (2, 1, "neg", "3 + 4 = 8 apples, \\boxed{8}.")]
COMMON = {"problems": "train", "teacher": TEACHER, "model": "tiny", "batch_size": 2, "grad_accum": 1,
          "lr": 0.02, "max_length": 64}


def _seed(db: Store, tmp_path: Path, n_copies: int = 1) -> dict[str, set[int]]:
    """The tiny model, a problems dataset `train` with the chains of TEACHER (each problem `n_copies` times);
    returns the chain ids by label."""
    with transaction(db.engine()) as s:
        dataset = tiny_and_chain_set(s, tmp_path)
        ids: dict[str, set[int]] = {"pos": set(), "neg": set()}
        for copy in range(n_copies):
            problems = make.problems(s, dataset, [{"external_id": f"{copy}-{k}", "question": q}
                                                  for k, q in enumerate(PROBLEMS)])
            for k, i, label, text in CHAINS:
                ids[label].add(make.chain(s, problems[k], TEACHER, text, label, sample_idx=i).id)
        return ids


def _drain(db: Store) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(until_done=True, lease_seconds=30)).run()


def test_train_nat_after_train_neg_registers_a_nat_model_on_the_positives(db: Store, tmp_path: Path) -> None:
    chains = _seed(db, tmp_path)
    queue = Queue(db.engine())
    neg_job, _ = queue.enqueue("train-neg", {**COMMON, "adapter_name": "neg", "max_steps": 2})
    nat_job, _ = queue.enqueue("train-nat", {**COMMON, "neg_model": "neg", "max_steps": 5, "log_every": 2,
                                             "checkpoint_every": 2}, after=[neg_job])
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, nat_job)
        assert s.get(Job, neg_job).status == "succeeded"
        assert job.status == "succeeded", job.error
        nat = s.scalar(select(Model).where(Model.job_id == nat_job))
        base, neg = (s.scalar(select(Model).where(Model.name == n)) for n in ("tiny", "neg"))
        parents = dict(s.execute(select(ModelParent.relation, ModelParent.parent_id)
                                 .where(ModelParent.model_id == nat.id)).all())
        assert (nat.name, nat.format, nat.role) == (f"nat-job{nat_job}", "nat", "nat")
        assert parents == {"base": base.id, "neg": neg.id}
        assert nat.config["nat"]["r"] == 8 and nat.config["train_params"]["neg_model"] == "neg"
        examples = s.execute(select(TrainingExample.chain_id, TrainingExample.label)
                             .where(TrainingExample.job_id == nat_job)).all()
        assert {c for c, _ in examples} == chains["pos"] and {label for _, label in examples} == {"pos"}
        logs = s.execute(select(NatWNeg.step, NatWNeg.layer, NatWNeg.proj, NatWNeg.mean_w_neg)
                         .where(NatWNeg.job_id == nat_job).order_by(NatWNeg.step, NatWNeg.layer,
                                                                        NatWNeg.proj)).all()
        extras = dict(s.execute(select(TrainingMetric.step, TrainingMetric.extra)
                                .where(TrainingMetric.job_id == nat_job)).all())
    assert job.result["steps"] == 5 and job.result["model_id"] == nat.id and job.result["examples"] == 3
    # Steps 1 and 3 (every 2nd) and the last, 4; both layers' q_proj and v_proj; the values of training_metrics.
    assert sorted({st for st, *_ in logs}) == [1, 3, 4] and len(logs) == 3 * 4 == job.result["alpha_logs"]
    assert {(layer, proj) for _, layer, proj, _ in logs} == {(0, "q_proj"), (0, "v_proj"), (1, "q_proj"),
                                                              (1, "v_proj")}
    assert all(-0.5 <= w <= 0.5 for *_, w in logs)
    assert all(extras[st][f"w_neg.{layer}.{proj}"] == pytest.approx(w) for st, layer, proj, w in logs)

    # The NAT model loads through the loader: mix differs from the base (the unit trained), neg is the neg LoRA.
    ids = torch.tensor([tiny_tokenizer()("Problem:\nCompute 2 + 3.\nSolution:\n2 + 3 = 5")["input_ids"]])
    LOADED.clear()
    try:
        nat_view = open_backend(prepare_backend(db.engine(), nat.name))
        neg_view = open_backend(prepare_backend(db.engine(), "neg"))
        with torch.no_grad():
            base_logits = load(prepare_backend(db.engine(), "tiny"), adapters=(), trainable=True)[0](
                input_ids=ids).logits
            with nat_view.activated():
                assert len(nat_layers(nat_view.model)) == 4
                mixed = nat_view.model(input_ids=ids).logits
                with nat_mode(nat_view.model, "neg"):
                    negative = nat_view.model(input_ids=ids).logits
            with neg_view.activated():
                neg_logits = neg_view.model(input_ids=ids).logits
        assert (mixed - base_logits).abs().max() > 1e-4
        assert torch.allclose(negative, neg_logits, atol=1e-5)
    finally:
        LOADED.clear()


def test_a_negative_lora_of_another_format_is_refused_at_enqueue_and_fails_the_job_with_one_sentence(
        db: Store, tmp_path: Path) -> None:
    _seed(db, tmp_path)
    params = {**COMMON, "neg_model": "tiny", "max_steps": 1}
    with pytest.raises(UserError, match="'neg_model' of train-nat names model 'tiny', a causal LM .*not a LoRA"):
        Queue(db.engine()).enqueue("train-nat", params)
    with transaction(db.engine()) as s:  # written past enqueue's check (a model re-registered since): the handler's own
        job_id = make.job(s, "train-nat", validate_params("train-nat", params), status="queued").id
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and "not a LoRA" in job.error and job.attempts == 1
        assert not s.scalar(select(func.count()).select_from(TrainingExample).where(TrainingExample.job_id == job_id))


def test_killed_train_nat_resumes_at_its_checkpoint_with_the_same_loss_curve(
        db: Store, tmp_path: Path, runners: StartRunner) -> None:
    _seed(db, tmp_path, n_copies=8)
    queue = Queue(db.engine())
    neg_job, _ = queue.enqueue("train-neg", {**COMMON, "adapter_name": "neg", "max_steps": 2})
    common = {**COMMON, "neg_model": "neg", "max_steps": 40, "epochs": 20, "checkpoint_every": 5, "lr": 1e-3,
              "log_every": 10}
    straight, _ = queue.enqueue("train-nat", {**common, "adapter_name": "straight"}, after=[neg_job])
    _drain(db)  # in-process: one runner start-up less (each takes seconds on a loaded machine)
    assert count_rows(db, TrainingMetric, straight) == 40
    crashed, _ = queue.enqueue("train-nat", {**common, "adapter_name": "crashed"})
    resume_at, (result, attempts) = kill_then_rescue(db, runners, crashed, 40, checkpoint_at=10)
    with transaction(db.engine()) as s:
        curves = {j: s.execute(select(TrainingMetric.step, TrainingMetric.loss, TrainingMetric.extra)
                               .where(TrainingMetric.job_id == j).order_by(TrainingMetric.step)).all()
                  for j in (straight, crashed)}
        logs = {j: s.execute(select(NatWNeg.step, NatWNeg.layer, NatWNeg.proj, NatWNeg.mean_w_neg)
                             .where(NatWNeg.job_id == j).order_by(NatWNeg.step, NatWNeg.layer,
                                                                      NatWNeg.proj)).all()
                for j in (straight, crashed)}
    assert result["resumed_from"] == resume_at and attempts == 2
    assert [st for st, *_ in curves[crashed]] == list(range(40))
    assert [loss for _, loss, _ in curves[crashed]] == pytest.approx([loss for _, loss, _ in curves[straight]],
                                                                     rel=1e-4)
    w_neg = [e["w_neg.1.q_proj"] for *_, e in curves[crashed]]
    assert w_neg == pytest.approx([e["w_neg.1.q_proj"] for *_, e in curves[straight]], rel=1e-4, abs=1e-6)
    assert len(logs[crashed]) == 4 * 4 and [r[:3] for r in logs[crashed]] == [r[:3] for r in logs[straight]]
