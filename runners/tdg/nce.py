"""`train-nce` (TDG B3): distil the frozen NAT model into a fresh LoRA, KD weighted per chain by beta.

The handler first writes everything the training reads, so a resumed run reads the same: the teacher positives
shorter than `max_chars` as `training_examples`; with `self_augment > 0`, chains sampled from the NAT model
(through the generation cache, one seed per sample index) that reach the gold answer, stored as
`teacher_chains` of teacher = the NAT model's name and trained on too; then one `nce_weights` row per chain
(KL(p_neg || p_nat) per token, averaged, beta = tanh of it, kd_weight = beta_offset + beta) from the NAT model
in mode neg and mix, batch by batch, skipping chains a previous attempt weighed. `fit` then trains the student,
a fresh peft LoRA on the base, through the shared loop on (1 - alpha) CE + alpha (beta_offset + beta) KD: each
batch carries its chains' stored beta, and the NAT logits are computed on the fly without gradients (the
teacher is frozen and sits on the student's device). Rank 0 registers the result as a `lora` of role `nce` (its setting)
with parents base and teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from sqlalchemy import select

from rplat.llm import Sampling
from rplat.llm.cache import CachedBackend
from rplat.llm.load import load, open_backend
from rplat.llm.resolve import BackendSpec, prepare_backend
from rplat.lookup import dataset_id
from rplat.methods import nce
from rplat.methods.labelers import label_chain
from rplat.methods.nat import nat_mode
from rplat.models import NceWeight, Problem, TeacherChain, TrainingExample
from rplat.prompts import tdg_prompt, tdg_training_text
from rplat.reviews import chain_label, problem_answer
from rplat.runners.framework.context import JobContext
from rplat.runners.tdg.examples import (
    adapter_on_student_base,
    chain_labelers,
    encode_examples,
    load_examples,
    save_and_register,
    store_examples,
)
from rplat.runners.tdg.kinds import TrainNceParams, training_of
from rplat.runners.training.distributed import is_main_process, launch
from rplat.runners.training.loop import (
    Batch,
    Objective,
    batch_examples,
    collate_causal_lm,
    train,
    trainable_state,
    training_device,
)
from rplat.store import insert_ignore

AUGMENT_STOP = ("\nProblem:",)  # a sampled chain ends where the model starts the next problem
AUGMENT_BATCH = 16  # problems per generation call of self-augmentation
LABELER = "hendrycks"  # the paper's verdict decides whether a sampled chain reaches the gold answer (both stored)


def run(ctx: JobContext, p: TrainNceParams) -> dict[str, Any]:
    nat_spec = prepare_backend(ctx.engine, p.nat_model, home=ctx.home)
    prepare_backend(ctx.engine, p.model, home=ctx.home)  # converts the bundled model once, before any worker starts
    _, nat_id = model_ids(ctx, p)
    counts = store_examples(ctx, p, training_of(p).labels)
    augmented = self_augment(ctx, p, nat_spec) if p.self_augment else 0
    weigh(ctx, p, nat_spec, nat_id)
    extra = {"teacher_positives": counts.get("pos", 0), "augmented": augmented,
             "chain_labelers": chain_labelers(ctx)}  # whose verdicts the chain labels are
    if p.nproc > 1:
        return {**launch(ctx, "rplat.runners.tdg.nce:fit", p.nproc), **extra}
    return {**fit(ctx, p), **extra}


def model_ids(ctx: JobContext, p: TrainNceParams) -> tuple[int, int]:
    """(base id, NAT model id); the NAT model must be a NAT adapter on the student's own base."""
    base, nat = adapter_on_student_base(ctx, p, "nat_model", "nat", "train-nat")
    return base.id, nat.id


# --- self-augmentation ---------------------------------------------------------------------------------------


def augment_sampling(p: TrainNceParams, k: int) -> Sampling:
    """How sample k of every problem is drawn: a seed of its own per sample index (solve's convention)."""
    return Sampling(temperature=p.augment_temperature, max_tokens=p.augment_max_tokens, stop=AUGMENT_STOP,
                    seed=p.seed * 1000 + k)


def self_augment(ctx: JobContext, p: TrainNceParams, nat_spec: BackendSpec) -> int:
    """Sample `p.self_augment` chains per problem from the NAT model; store those that reach the gold answer as
    positive chains of teacher = the NAT model's name and as this job's examples (when short enough). Every
    sample goes through the generation cache, so a resumed job regenerates nothing. Returns the examples added."""
    through = ctx.reviews_seen()
    with ctx.read() as s:
        ds = dataset_id(s, p.problems, "problems")
        problems = s.execute(select(Problem.id, Problem.question, problem_answer(through).label("answer"))
                             .where(Problem.dataset_id == ds)
                             .order_by(Problem.id).limit(p.limit)).all()
    problems = [r for r in problems if r.answer]
    backend = CachedBackend(open_backend(nat_spec), ctx.engine, job_id=ctx.job_id)
    total = len(problems) * p.self_augment
    for k in range(p.self_augment):
        sampling = augment_sampling(p, k)
        for start in range(0, len(problems), AUGMENT_BATCH):
            ctx.check()
            chunk = problems[start:start + AUGMENT_BATCH]
            completions = backend.generate([tdg_prompt(r.question) for r in chunk], sampling)
            rows = []
            for r, (c,) in zip(chunk, completions, strict=True):
                chain = c.text.strip()
                verdict = label_chain(chain, r.answer, LABELER)
                if verdict.label == "pos":
                    rows.append(dict(job_id=ctx.job_id, problem_id=r.id, teacher=p.nat_model, sample_idx=k,
                                     text=chain, extracted_answer=verdict.answer, label="pos", labeler=LABELER,
                                     hendrycks_correct=verdict.hendrycks, math_verify_correct=verdict.math_verify,
                                     n_chars=len(chain)))
            with ctx.transaction() as s:
                insert_ignore(s, TeacherChain, rows, ["problem_id", "teacher", "sample_idx"])
            ctx.progress(k * len(problems) + start + len(chunk), total)
    with ctx.transaction() as s:
        # The stored positives of the sampled indices (a chain another job stored under the same key included).
        found = s.execute(select(TeacherChain.id, TeacherChain.text, Problem.question)
                          .join(Problem, Problem.id == TeacherChain.problem_id)
                          .where(TeacherChain.teacher == p.nat_model, chain_label(through) == "pos",
                                 TeacherChain.sample_idx < p.self_augment,
                                 TeacherChain.problem_id.in_([r.id for r in problems]))
                          .order_by(TeacherChain.id)).all()
        rows = [dict(job_id=ctx.job_id, chain_id=r.id, label="pos", split="train") for r in found
                if len(tdg_training_text(r.question, r.text)) < p.max_chars]
        insert_ignore(s, TrainingExample, rows, ["job_id", "chain_id"])
    return len(rows)


# --- beta per chain ----------------------------------------------------------------------------------------


def pad_id(tokenizer: Any) -> int:
    """The pad token (the reference pads with id 0 when the tokenizer has none; pads never carry loss)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def teacher_logits(teacher: Any, batch: Batch, mode: str) -> torch.Tensor:
    """The frozen NAT model's logits on `batch` in `mode` (neg or mix), without gradients."""
    with torch.no_grad(), teacher.activated(), nat_mode(teacher.model, mode):
        return teacher.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def chain_weights(teacher: Any, batch: Batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean token KL(p_neg || p_nat), beta) per sequence of `batch`, over its attention mask."""
    kl_t = nce.token_kl(teacher_logits(teacher, batch, "neg"), teacher_logits(teacher, batch, "mix"), temperature)
    mask = batch["attention_mask"]
    return nce.masked_mean(kl_t, mask), nce.beta(kl_t, mask)


def weigh(ctx: JobContext, p: TrainNceParams, nat_spec: BackendSpec, nat_id: int) -> None:
    """One nce_weights row per example chain, committed batch by batch; chains already weighed are skipped."""
    with ctx.read() as s:
        done = set(s.scalars(select(NceWeight.chain_id).where(NceWeight.job_id == ctx.job_id)).all())
    todo = [e for e in load_examples(ctx) if e.source == "chain" and e.source_id not in done]
    if not todo:
        return
    teacher = open_backend(nat_spec)
    device = next(teacher.model.parameters()).device
    encoded = encode_examples(teacher.tokenizer, todo, p.max_length)
    for start in range(0, len(encoded), p.batch_size):
        ctx.check()
        chunk = encoded[start:start + p.batch_size]
        batch = {k: v.to(device) for k, v in collate_causal_lm(chunk, pad_id(teacher.tokenizer)).items()}
        kl, beta = chain_weights(teacher, batch, p.kd_temperature)
        rows = [dict(job_id=ctx.job_id, chain_id=e["source_id"], teacher_adapter_id=nat_id, kl_neg_nat=k, beta=b,
                     kd_weight=p.beta_offset + b) for e, k, b in zip(chunk, kl.tolist(), beta.tolist(), strict=True)]
        with ctx.transaction() as s:
            insert_ignore(s, NceWeight, rows, ["job_id", "chain_id"])
        ctx.progress(start + len(chunk), len(encoded))


# --- the student ---------------------------------------------------------------------------------------------


def nce_objective(teacher: Any, pad: int, p: TrainNceParams) -> Objective:
    """Per example (1 - alpha) CE + alpha KD, summed over the batch's examples (the loop divides by their number):
    with micro batch 1 this is the reference's loss exactly."""

    def collate(examples: Sequence[dict[str, Any]]) -> Batch:
        batch = collate_causal_lm(examples, pad)
        batch["beta"] = torch.tensor([e["beta"] for e in examples], dtype=torch.float32)
        return batch

    def loss(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ce = nce.sequence_ce(logits, batch["labels"])
        kd = nce.kd_loss(logits, teacher_logits(teacher, batch, "mix"), batch["attention_mask"], batch["beta"],
                         p.kd_temperature, p.beta_offset)
        total = nce.nce_loss(ce, kd, p.alpha).sum()
        return total, {"ce": ce.sum().item(), "kd": kd.sum().item(), "beta": batch["beta"].sum().item()}

    return Objective(collate, loss, batch_examples)


def stored_betas(ctx: Any) -> dict[int, float]:
    with ctx.read() as s:
        return dict(s.execute(select(NceWeight.chain_id, NceWeight.beta).where(NceWeight.job_id == ctx.job_id)).all())


def fit(ctx: JobContext, p: TrainNceParams) -> dict[str, Any]:
    """Train the student on the job's stored examples and betas; on rank 0 (or alone) save and register it."""
    device = training_device()
    base_id, nat_id = model_ids(ctx, p)
    base_spec = prepare_backend(ctx.engine, p.model, home=ctx.home)
    nat_spec = prepare_backend(ctx.engine, p.nat_model, home=ctx.home, device=str(device))
    betas = stored_betas(ctx)
    examples = [e for e in load_examples(ctx) if e.source == "chain"]
    unweighed = [e.source_id for e in examples if e.source_id not in betas]
    if unweighed:  # run() weighs every example before training; a gap means the rows were deleted meanwhile
        raise RuntimeError(f"chains {unweighed[:5]} of job {ctx.job_id} have no nce_weights row")
    torch.manual_seed(p.seed)  # the LoRA initialisation is random: the same params must give the same run
    student, tokenizer = load(base_spec, adapters=(), trainable=True, dtype=torch.float32, device=str(device))
    from peft import get_peft_model

    student = get_peft_model(student, p.lora_config())
    teacher = open_backend(nat_spec)
    train_set = [{**e, "beta": betas[e["source_id"]]} for e in encode_examples(tokenizer, examples, p.max_length)]
    row = training_of(p)
    summary = train(ctx, student, train_set, p.train_config(), row.load_objective()(teacher, pad_id(tokenizer), p))
    weights = trainable_state(student)  # every rank takes part (FSDP gathers); rank 0 gets the weights
    if not is_main_process():
        return {}
    name, model_id = save_and_register(
        ctx, row.name, p, lambda out: student.save_pretrained(out, state_dict=weights), fmt="lora", role=row.setting,
        parents={"base": base_id, "teacher": nat_id}, lora_r=p.lora_r, lora_alpha=p.lora_alpha,
        target_modules=list(p.target_modules))
    summary.pop("final_eval")
    return {**summary, "examples": len(train_set), "mean_beta": sum(e["beta"] for e in train_set) / len(train_set),
            "model": name, "model_id": model_id, "nproc": p.nproc}
