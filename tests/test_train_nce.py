"""train-nce (TDG B3) as a job: beta per chain from a NAT model, the NCE student, self-augmentation, kill -9."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select

from rplat.errors import UserError
from rplat.hashing import content_hash
from rplat.kinds import validate_params
from rplat.llm.resolve import prepare_backend
from rplat.methods import nce
from rplat.methods.nat import NATConfig, attach_nat, load_nat, nat_mode, read_peft_lora, save_nat
from rplat.models import (
    GenerationCache,
    Job,
    Model,
    ModelParent,
    NceWeight,
    Problem,
    TeacherChain,
    TrainingExample,
    TrainingMetric,
)
from rplat.prompts import tdg_prompt, tdg_training_text
from rplat.queue import Queue
from rplat.registry import register_model
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.runners.tdg.examples import encode
from rplat.runners.tdg.kinds import TrainNceParams
from rplat.runners.tdg.nce import augment_sampling
from rplat.store import insert_ignore, transaction

import factories as make
from killable_runners import StartRunner, count_rows, kill_then_rescue
from stores import Store
from tiny_lm import register_tiny, save_tiny, tiny_model, tiny_tokenizer

NAT_CFG = NATConfig(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj"), unit_dim=8)
MAX_LENGTH = 96
PROBLEMS = [(f"Tom has {k} apples and buys {k % 5} more. How many apples?", str(k + k % 5)) for k in range(6)]


def _randomize(tensors: list[torch.Tensor], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=generator) * 0.5)


def build_nat(db: Store, tmp_path: Path) -> dict[str, int]:
    """A tiny base, a negative LoRA on it and a NAT model around that LoRA, with every adapter weight random
    (so neg, mix and the base all differ), registered like train-neg and train-nat register theirs."""
    from peft import LoraConfig, get_peft_model

    base = save_tiny(tmp_path / "tiny")
    neg = get_peft_model(tiny_model(), LoraConfig(r=NAT_CFG.r, lora_alpha=NAT_CFG.alpha, lora_dropout=0.0,
                                                  target_modules=list(NAT_CFG.target_modules), task_type="CAUSAL_LM"))
    _randomize([p for n, p in neg.named_parameters() if "lora_B" in n], seed=1)
    neg.save_pretrained(tmp_path / "neg")
    nat = attach_nat(tiny_model(), NAT_CFG, read_peft_lora(tmp_path / "neg", NAT_CFG))
    _randomize([p for n, p in nat.named_parameters() if n.endswith(("lora_B", "w_2"))], seed=2)
    save_nat(nat, tmp_path / "nat", NAT_CFG, {"base_model_name_or_path": str(base)})
    with transaction(db.engine()) as s:
        base_row = register_model(s, "tiny", "base", base, role="agent")
        neg_row = register_model(s, "neg", "lora", tmp_path / "neg", role="neg", parents={"base": base_row.id})
        nat_row = register_model(s, "nat", "nat", tmp_path / "nat", role="nat",
                                 parents={"base": base_row.id, "negative": neg_row.id})
        return {"base": base_row.id, "neg": neg_row.id, "nat": nat_row.id}


def seed_chains(db: Store, n_problems: int = len(PROBLEMS)) -> dict[str, list[int]]:
    """Problems with gold answers and teacher 't' chains: per problem one short and one too long positive (over
    1200 characters) and one negative. Returns the chain ids by kind."""
    ids: dict[str, list[int]] = {"short": [], "long": [], "neg": []}
    with transaction(db.engine()) as s:
        problems = make.problems(s, make.dataset(s, "p", make.job(s, "import")), [
            {"external_id": str(k), "question": question, "answer": answer,
             "solution": f"{k} + {k % 5} = \\boxed{{{answer}}}"}
            for k, (question, answer) in enumerate(PROBLEMS[:n_problems])])
        for k, problem in enumerate(problems):
            answer = problem.answer
            texts = {"short": f"He has {k} and buys {k % 5}, so {answer}. The answer is \\boxed{{{answer}}}.",
                     "long": "Count the apples one by one. " * 45 + f"\\boxed{{{answer}}}",
                     "neg": f"He has {k} apples, so \\boxed{{{k + 99}}}."}
            for idx, (what, text) in enumerate(texts.items()):
                chain = make.chain(s, problem, "t", text, "neg" if what == "neg" else "pos", sample_idx=idx)
                ids[what].append(chain.id)
    return ids


def enqueue_cli(db: Store, **params: Any) -> int:
    args = [arg for key, value in params.items() for arg in ("--param", f"{key}={value}")]
    return json.loads(db.rplat("enqueue", "train-nce", *args, "--json", check=True).stdout)["id"]


def drain(db: Store) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()


def nat_on_tiny(tmp_path: Path) -> torch.nn.Module:
    return load_nat(tiny_model(), tmp_path / "nat")


def recomputed_weights(tmp_path: Path, question: str, chain: str) -> tuple[float, float]:
    """(mean token KL, beta) of one chain, straight from the saved NAT model."""
    ids = torch.tensor([encode(tiny_tokenizer(), tdg_training_text(question, chain), MAX_LENGTH)["input_ids"]])
    model = nat_on_tiny(tmp_path)
    with torch.no_grad():
        with nat_mode(model, "neg"):
            neg = model(input_ids=ids).logits
        with nat_mode(model, "mix"):
            mix = model(input_ids=ids).logits
    kl_t = nce.token_kl(neg, mix)
    mask = torch.ones_like(ids)
    return nce.masked_mean(kl_t, mask).item(), nce.beta(kl_t, mask).item()


BASE_PARAMS = dict(problems="p", teacher="t", model="tiny", nat_model="nat", lora_r=4, lora_alpha=8,
                   max_length=MAX_LENGTH)


def test_train_nce_weighs_every_short_positive_and_registers_the_student(db: Store, tmp_path: Path) -> None:
    ids = build_nat(db, tmp_path)
    chains = seed_chains(db)
    n = len(chains["short"])
    job_id = enqueue_cli(db, **BASE_PARAMS, epochs=2, batch_size=n, grad_accum=1, lr=1e-3)
    drain(db)
    job = db.succeeded(job_id)
    with transaction(db.engine()) as s:
        weights = s.execute(select(NceWeight.chain_id, NceWeight.teacher_adapter_id, NceWeight.kl_neg_nat,
                                   NceWeight.beta, NceWeight.kd_weight)
                            .where(NceWeight.job_id == job_id).order_by(NceWeight.chain_id)).all()
        examples = s.execute(select(TrainingExample.chain_id, TrainingExample.label)
                             .where(TrainingExample.job_id == job_id).order_by(TrainingExample.chain_id)).all()
        student = s.scalar(select(Model).where(Model.job_id == job_id))
        parents = dict(s.execute(select(ModelParent.relation, ModelParent.parent_id)
                                 .where(ModelParent.model_id == student.id)).all())
        first = s.execute(select(Problem.question, TeacherChain.text).join(TeacherChain)
                          .where(TeacherChain.id == chains["short"][0])).one()
        curve = s.execute(select(TrainingMetric.step, TrainingMetric.loss, TrainingMetric.extra)
                          .where(TrainingMetric.job_id == job_id).order_by(TrainingMetric.step)).all()
    # Only the positives shorter than 1200 characters, each weighed once by the NAT model.
    assert [c for c, _ in examples] == chains["short"] and {label for _, label in examples} == {"pos"}
    assert [w.chain_id for w in weights] == chains["short"]
    assert {w.teacher_adapter_id for w in weights} == {ids["nat"]}
    for w in weights:
        assert 0.0 < w.beta < 1.0 and w.beta == pytest.approx(float(torch.tanh(torch.tensor(w.kl_neg_nat))), abs=1e-6)
        assert w.kd_weight == pytest.approx(0.5 + w.beta, abs=1e-12)
    kl, beta = recomputed_weights(tmp_path, first.question, first.text)
    assert weights[0].kl_neg_nat == pytest.approx(kl, rel=1e-4) and weights[0].beta == pytest.approx(beta, rel=1e-4)
    # The student: a plain LoRA of role nce on the base, distilled from the NAT model.
    assert (student.format, student.role, student.name) == ("lora", "nce", f"nce-job{job_id}")
    assert parents == {"base": ids["base"], "teacher": ids["nat"]}
    assert Path(student.path, "adapter_model.safetensors").is_file()
    assert job.result["examples"] == n and job.result["steps"] == 2 and job.result["teacher_positives"] == n
    assert job.result["mean_beta"] == pytest.approx(sum(w.beta for w in weights) / n)
    assert [step for step, *_ in curve] == [0, 1]
    assert curve[0].extra["beta"] == pytest.approx(job.result["mean_beta"], rel=1e-5)
    assert curve[0].loss == pytest.approx(0.5 * curve[0].extra["ce"] + 0.5 * curve[0].extra["kd"], rel=1e-5)


def test_the_first_step_loss_is_the_nce_loss_of_the_base_against_the_nat_model(db: Store, tmp_path: Path) -> None:
    # A fresh LoRA starts as the base (B = 0), so step 0's loss is computable from the base and the NAT model.
    build_nat(db, tmp_path)
    chains = seed_chains(db, 4)
    job_id = enqueue_cli(db, **BASE_PARAMS, epochs=1, batch_size=4, grad_accum=1, alpha=0.3, beta_offset=0.2,
                         kd_temperature=2.0)
    drain(db)
    db.succeeded(job_id)
    with transaction(db.engine()) as s:
        texts = s.execute(select(Problem.question, TeacherChain.text).join(TeacherChain)
                          .where(TeacherChain.id.in_(chains["short"])).order_by(TeacherChain.id)).all()
        loss = s.scalar(select(TrainingMetric.loss).where(TrainingMetric.job_id == job_id, TrainingMetric.step == 0))
    base, nat = tiny_model(), nat_on_tiny(tmp_path)
    expected = []
    for question, text in texts:
        ids = torch.tensor([encode(tiny_tokenizer(), tdg_training_text(question, text), MAX_LENGTH)["input_ids"]])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            student = base(input_ids=ids).logits
            with nat_mode(nat, "neg"):
                neg = nat(input_ids=ids).logits
            with nat_mode(nat, "mix"):
                mix = nat(input_ids=ids).logits
        b = nce.beta(nce.token_kl(neg, mix, 2.0), mask)
        ce = nce.sequence_ce(student, ids)
        kd = nce.kd_loss(student, mix, mask, b, 2.0, 0.2)
        expected.append(((1 - 0.3) * ce + 0.3 * kd).item())
    assert loss == pytest.approx(sum(expected) / len(expected), rel=1e-4)


def test_a_chain_weighed_by_an_earlier_attempt_keeps_its_stored_beta(db: Store, tmp_path: Path) -> None:
    ids = build_nat(db, tmp_path)
    chains = seed_chains(db, 3)
    job_id = enqueue_cli(db, **BASE_PARAMS, epochs=1, batch_size=3, grad_accum=1)
    with transaction(db.engine()) as s:  # what a killed first attempt left behind
        insert_ignore(s, NceWeight, [dict(job_id=job_id, chain_id=chains["short"][1], teacher_adapter_id=ids["nat"],
                                          kl_neg_nat=0.75, beta=0.75, kd_weight=1.25)], ["job_id", "chain_id"])
    drain(db)
    job = db.succeeded(job_id)
    with transaction(db.engine()) as s:
        rows = s.execute(select(NceWeight.chain_id, NceWeight.beta).where(NceWeight.job_id == job_id)
                         .order_by(NceWeight.chain_id)).all()
    assert [c for c, _ in rows] == chains["short"]
    assert rows[1].beta == 0.75 and rows[0].beta != 0.75
    # Training read the stored betas, the kept one included.
    assert job.result["mean_beta"] == pytest.approx(sum(b for _, b in rows) / 3)


def test_self_augmentation_keeps_the_nat_samples_that_reach_the_gold_answer(db: Store, tmp_path: Path) -> None:
    build_nat(db, tmp_path)
    chains = seed_chains(db, 3)
    params = dict(BASE_PARAMS, epochs=1, batch_size=4, grad_accum=1, self_augment=2, augment_max_tokens=8)
    p = TrainNceParams(**params)
    spec = prepare_backend(db.engine(), "nat")
    with transaction(db.engine()) as s:
        problems = s.execute(select(Problem.id, Problem.question, Problem.answer).order_by(Problem.id)).all()
        # Cached samples (as an earlier attempt would have left them): problem 0's first and problem 1's second
        # reach the gold answer, problem 0's second does not; the rest the tiny model samples for real.
        planted = {(0, 0): f"So he has \\boxed{{{problems[0].answer}}} apples.", (0, 1): "So \\boxed{1234}.",
                   (1, 1): f"{problems[1].answer} apples: \\boxed{{{problems[1].answer}}}"}
        cache_job = make.job(s, "probe").id
        insert_ignore(s, GenerationCache, [
            dict(model_fingerprint=spec.fingerprint, prompt_hash=content_hash(tdg_prompt(problems[i].question)),
                 params_hash=content_hash(augment_sampling(p, k).key()), sample_index=0, call="generate",
                 output_text="\n" + text, token_logprobs=[], token_ids=[], finish_reason="stop", job_id=cache_job)
            for (i, k), text in planted.items()], ["model_fingerprint", "prompt_hash", "params_hash", "sample_index"])
    job_id = enqueue_cli(db, **params)
    drain(db)
    job = db.succeeded(job_id)
    with transaction(db.engine()) as s:
        sampled = s.execute(select(TeacherChain.problem_id, TeacherChain.sample_idx, TeacherChain.text,
                                   TeacherChain.label, TeacherChain.job_id, TeacherChain.hendrycks_correct)
                            .where(TeacherChain.teacher == "nat").order_by(TeacherChain.id)).all()
        sampled_ids = s.scalars(select(TeacherChain.id).where(TeacherChain.teacher == "nat")).all()
        examples = s.scalars(select(TrainingExample.chain_id).where(TrainingExample.job_id == job_id)).all()
        weighed = s.scalars(select(NceWeight.chain_id).where(NceWeight.job_id == job_id)).all()
        generated = s.scalar(select(func.count()).select_from(GenerationCache)
                             .where(GenerationCache.job_id == job_id))
    assert [(r.problem_id, r.sample_idx) for r in sampled] == [(problems[0].id, 0), (problems[1].id, 1)]
    assert [r.text for r in sampled] == [planted[0, 0], planted[1, 1]]
    assert {(r.label, r.job_id, r.hendrycks_correct) for r in sampled} == {("pos", job_id, True)}
    assert sorted(examples) == sorted(chains["short"] + sampled_ids) == sorted(weighed)
    assert job.result["augmented"] == 2 and job.result["examples"] == 5
    assert generated == 3 * 2 - len(planted)  # the planted samples came from the cache, the rest were generated


def test_train_nce_distils_the_nat_model_that_train_neg_and_train_nat_made(db: Store, tmp_path: Path) -> None:
    with transaction(db.engine()) as s:
        register_tiny(s, tmp_path)
    chains = seed_chains(db, 3)
    queue = Queue(db.engine())
    shared = dict(problems="p", teacher="t", model="tiny", max_length=MAX_LENGTH, batch_size=2, grad_accum=1,
                  max_steps=2)
    neg_job, _ = queue.enqueue("train-neg", {**shared, "adapter_name": "neg"})
    nat_job, _ = queue.enqueue("train-nat", {**shared, "neg_model": "neg", "adapter_name": "nat"}, after=[neg_job])
    nce_job, _ = queue.enqueue("train-nce", {**shared, "nat_model": "nat"}, after=[nat_job])
    Runner(Queue(db.engine()), db.home, RunnerOptions(until_done=True, lease_seconds=30)).run()
    job = db.succeeded(nce_job)
    with transaction(db.engine()) as s:
        nat_id = s.scalar(select(Model.id).where(Model.name == "nat", Model.format == "nat", Model.job_id == nat_job))
        weights = s.execute(select(NceWeight.chain_id, NceWeight.teacher_adapter_id, NceWeight.beta)
                            .where(NceWeight.job_id == nce_job).order_by(NceWeight.chain_id)).all()
        teacher = s.scalar(select(ModelParent.parent_id).join(Model, Model.id == ModelParent.model_id)
                           .where(Model.job_id == nce_job, ModelParent.relation == "teacher"))
    assert [w.chain_id for w in weights] == chains["short"] and {w.teacher_adapter_id for w in weights} == {nat_id}
    assert all(0.0 <= w.beta < 1.0 for w in weights) and teacher == nat_id
    assert job.result["steps"] == 2 and job.result["examples"] == 3


def test_a_nat_model_of_another_format_is_refused_at_enqueue_and_fails_the_job_with_one_sentence(
        db: Store, tmp_path: Path) -> None:
    build_nat(db, tmp_path)
    seed_chains(db, 2)
    params = dict(BASE_PARAMS, nat_model="neg", max_steps=1)
    with pytest.raises(UserError, match="'nat_model' of train-nce names model 'neg', a LoRA adapter .*not a NAT model"):
        Queue(db.engine()).enqueue("train-nce", params)
    with transaction(db.engine()) as s:  # written past enqueue's check (a model re-registered since): the handler's own
        job_id = make.job(s, "train-nce", validate_params("train-nce", params), status="queued").id
    drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and job.attempts == 1
        assert job.error.count(".") <= 2 and "'neg' is a lora model, not a NAT model" in job.error
        for table in (TrainingExample, NceWeight):
            assert not s.scalar(select(func.count()).select_from(table).where(table.job_id == job_id))


def test_killed_train_nce_resumes_at_its_checkpoint_with_the_same_loss_curve(
        db: Store, tmp_path: Path, runners: StartRunner) -> None:
    build_nat(db, tmp_path)
    seed_chains(db)
    queue = Queue(db.engine())
    common = dict(BASE_PARAMS, max_steps=60, epochs=20, batch_size=2, grad_accum=1, checkpoint_every=5, lr=1e-3)
    straight, _ = queue.enqueue("train-nce", {**common, "adapter_name": "straight"})
    drain(db)  # in this process: one runner start fewer, and the same numbers (one thread, the CPU, fixed seeds)
    assert count_rows(db, TrainingMetric, straight) == 60
    crashed, _ = queue.enqueue("train-nce", {**common, "adapter_name": "crashed"})
    resume_at, (result, attempts) = kill_then_rescue(db, runners, crashed, 60, checkpoint_at=10)
    with transaction(db.engine()) as s:
        curves = {j: s.execute(select(TrainingMetric.step, TrainingMetric.loss).where(TrainingMetric.job_id == j)
                               .order_by(TrainingMetric.step)).all() for j in (straight, crashed)}
        weights = {j: s.execute(select(NceWeight.chain_id, NceWeight.beta).where(NceWeight.job_id == j)
                                .order_by(NceWeight.chain_id)).all() for j in (straight, crashed)}
    assert result["resumed_from"] == resume_at and attempts == 2
    assert [w.chain_id for w in weights[crashed]] == [w.chain_id for w in weights[straight]]
    assert [w.beta for w in weights[crashed]] == pytest.approx([w.beta for w in weights[straight]], rel=1e-6)
    assert [st for st, _ in curves[crashed]] == list(range(60))
    assert [loss for _, loss in curves[crashed]] == pytest.approx([loss for _, loss in curves[straight]], rel=1e-4)
