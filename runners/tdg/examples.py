"""What every TDG training kind shares: the chains it trains on, their token ids, its LoRA and its result.

A job first stores its examples (`store_examples`: teacher chains of `p.teacher` on `p.problems` with the
wanted labels and shorter than `max_chars`, and/or the problems' gold solutions) as `training_examples` rows in
one transaction, so what it trained on is written before training starts and a resumed run reads the same set;
`load_examples` reads them back in a fixed order. The training text is B1's `"Problem:\\n{q}\\nSolution:\\n{c}"`,
loss on all of it (`loss_on_prefix=True`), pads masked by the collate. `save_and_register` writes the result
atomically under the job's home and registers it with role, base and parents.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from rplat.errors import UserError
from rplat.lookup import dataset_id
from rplat.models import Problem, TeacherChain, TrainingExample
from rplat.paths import model_dir
from rplat.prompts import tdg_training_text
from rplat.references import made_model
from rplat.registry import register_model
from rplat.reviews import chain_label
from rplat.runners.framework.context import JobContext
from rplat.runners.tdg.kinds import TdgTrainParams
from rplat.store import insert_ignore

CHAIN_LABELS = ("pos", "neg")
FORMAT_NAMES = {"lora": "LoRA", "nat": "NAT"}


@dataclass(frozen=True)
class Example:
    """One stored training example: a teacher chain (label pos/neg) or a problem's gold solution (label gold)."""

    source: str  # "chain" or "gold"
    source_id: int  # teacher_chains.id or problems.id
    label: str  # pos, neg or gold
    problem_id: int
    text: str  # the training text (problem and chain)


def store_examples(ctx: JobContext, p: TdgTrainParams, labels: Sequence[str] = (), *, gold: bool = False
                   ) -> dict[str, int]:
    """Store this job's examples: chains of `p.teacher` labelled `labels` whose training text is shorter than
    `p.max_chars`, plus the gold solutions if `gold`, on the first `p.limit` problems of `p.problems`; idempotent
    (a resumed job stores the same rows). Returns the counts per label."""
    through = ctx.reviews_seen() if labels else None  # pinned before the transaction that reads with it
    with ctx.transaction() as s:
        ds = dataset_id(s, p.problems, "problems")
        problem_ids = s.scalars(select(Problem.id).where(Problem.dataset_id == ds).order_by(Problem.id)
                                .limit(p.limit)).all()
        rows: list[dict[str, Any]] = []
        if labels:
            if p.teacher is None:
                raise UserError("this kind trains on teacher chains; name them with --param teacher=NAME.")
            stored = s.scalar(select(func.count()).select_from(TeacherChain)
                              .where(TeacherChain.teacher == p.teacher, TeacherChain.problem_id.in_(problem_ids)))
            if not stored:
                raise UserError(f"there are no chains of teacher {p.teacher!r} on dataset {p.problems!r}; import them "
                                f"with `rplat import chains FILE --teacher {p.teacher} --dataset {p.problems}` or "
                                "collect them with a collect-chains job.")
            # labels as reviewed (rplat.reviews): each example keeps the label it was read with
            label = chain_label(through)
            found = s.execute(select(TeacherChain.id, label.label("label"), TeacherChain.text, Problem.question)
                              .join(Problem, Problem.id == TeacherChain.problem_id)
                              .where(TeacherChain.teacher == p.teacher, TeacherChain.problem_id.in_(problem_ids),
                                     label.in_(list(labels)))
                              .order_by(TeacherChain.id)).all()
            rows += [dict(job_id=ctx.job_id, chain_id=r.id, label=r.label, split="train") for r in found
                     if len(tdg_training_text(r.question, r.text)) < p.max_chars]
        n_chains = len(rows)
        if gold:
            solved = s.execute(select(Problem.id).where(Problem.id.in_(problem_ids), Problem.solution.is_not(None),
                                                        Problem.solution != "").order_by(Problem.id)).all()
            rows += [dict(job_id=ctx.job_id, problem_id=r.id, label="gold", split="train") for r in solved]
        if not rows:
            wanted = " or ".join([f"{label} chains" for label in labels] + (["gold solutions"] if gold else []))
            raise UserError(f"dataset {p.problems!r} has no {wanted} to train on"
                            + (f" shorter than max_chars={p.max_chars}" if labels else "")
                            + "; check --param teacher / problems, or raise --param max_chars.")
        insert_ignore(s, TrainingExample, rows[:n_chains], ["job_id", "chain_id"])
        insert_ignore(s, TrainingExample, rows[n_chains:], ["job_id", "problem_id"])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return counts


def chain_labelers(ctx: Any) -> list[str]:
    """The labelers whose verdicts are the labels of the teacher chains this job stored as examples (a job's
    lineage: which labeler's positives and negatives it trained on; each example keeps the label it was read
    with). Normally one: a chain set has one labeler (rplat.chainsets)."""
    with ctx.read() as s:
        return sorted(s.scalars(select(TeacherChain.labeler).distinct()
                                .join(TrainingExample, TrainingExample.chain_id == TeacherChain.id)
                                .where(TrainingExample.job_id == ctx.job_id)).all())


def load_examples(ctx: Any) -> list[Example]:
    """This job's stored examples, chains first (by id), then gold solutions (by problem id)."""
    with ctx.read() as s:
        chains = s.execute(select(TrainingExample.chain_id, TrainingExample.label, TeacherChain.problem_id,
                                  TeacherChain.text, Problem.question)
                           .join(TeacherChain, TeacherChain.id == TrainingExample.chain_id)
                           .join(Problem, Problem.id == TeacherChain.problem_id)
                           .where(TrainingExample.job_id == ctx.job_id).order_by(TrainingExample.chain_id)).all()
        golds = s.execute(select(TrainingExample.problem_id, Problem.question, Problem.solution)
                          .join(Problem, Problem.id == TrainingExample.problem_id)
                          .where(TrainingExample.job_id == ctx.job_id).order_by(TrainingExample.problem_id)).all()
    return ([Example("chain", r.chain_id, r.label, r.problem_id, tdg_training_text(r.question, r.text))
             for r in chains]
            + [Example("gold", r.problem_id, "gold", r.problem_id, tdg_training_text(r.question, r.solution))
               for r in golds])


def encode(tokenizer: Any, text: str, max_length: int) -> dict[str, Any]:
    """Token ids of a training text and its end-of-sequence token, cut to `max_length`; labels = the ids (the
    loss covers the question too, as in the reference), padding masked later by the collate."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    ids = ids[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def encode_examples(tokenizer: Any, examples: Sequence[Example], max_length: int) -> list[dict[str, Any]]:
    """`encode` of every example, each dict also carrying its `label`, `source` and `source_id` (collates that
    only read input_ids/labels ignore them)."""
    return [{**encode(tokenizer, e.text, max_length), "label": e.label, "source": e.source, "source_id": e.source_id}
            for e in examples]


def result_name(kind: str, p: TdgTrainParams, job_id: int) -> str:
    """The registry name the job's result gets (the one enqueue checks promised to later jobs)."""
    name = made_model(kind, p.model_dump(mode="json"), job_id)
    assert name is not None, f"{kind}'s adapter_name must be marked Makes(...)"
    return name


def save_and_register(ctx: JobContext, kind: str, p: TdgTrainParams, write: Callable[[Path], None], *,
                      fmt: str, role: str, parents: dict[str, int], config: dict[str, Any] | None = None,
                      **columns: Any) -> tuple[str, int]:
    """Write the result with `write(directory)` into a temporary directory, move it into place under
    RPLAT_HOME/artifacts/models/<name> and register it (format, role, parents, this job); returns (name, id)."""
    name = result_name(kind, p, ctx.job_id)
    out = model_dir(ctx.home, name)
    tmp = out.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    with ctx.transaction() as s:
        row = register_model(s, name, fmt, out, role=role, parents=parents,
                             config={"train_params": p.model_dump(mode="json"), **(config or {})},
                             job_id=ctx.job_id, **columns)
        return name, row.id


def adapter_on_student_base(ctx: JobContext, p: TdgTrainParams, field: str, fmt: str, made_by: str
                            ) -> tuple[Any, Any]:
    """(the student's base, the adapter `getattr(p, field)` names), after checking that the adapter is of format
    `fmt` and sits on that base (a NAT layer or a distillation teacher must share the student's weights)."""
    from rplat.llm.resolve import base_of
    from rplat.registry import get_model

    name = getattr(p, field)
    with ctx.read() as s:
        base = base_of(s, get_model(s, p.model))
        adapter = get_model(s, name)
        if adapter.format != fmt:
            raise UserError(f"{field} {name!r} is a {adapter.format} model, not a {FORMAT_NAMES.get(fmt, fmt)} model; "
                            f"pass --param {field}= the result of a {made_by} job.")
        adapter_base = base_of(s, adapter)
        if adapter_base.id != base.id:
            raise UserError(f"{field} {name!r} sits on {adapter_base.name!r}, not on the student's base "
                            f"{base.name!r}; pass --param model={adapter_base.name} or a {fmt} model of that base.")
        s.expunge_all()
        return base, adapter
