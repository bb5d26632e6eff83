"""TDG's plain-LoRA kinds (train-neg, kd, mix, nt, ul, sft) on a tiny model, both stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from rplat.errors import UserError
from rplat.kinds import validate_params
from rplat.llm.load import load
from rplat.llm.resolve import prepare_backend
from rplat.models import Job, Model, ModelParent, Problem, TrainingExample, TrainingMetric
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

import factories as make
from stores import Store
from tiny_lm import tiny_and_chain_set, tiny_tokenizer

TEACHER = "gpt-x"
MAX_CHARS = 120
# (question, gold solution or None)
PROBLEMS = [("Compute 2 + 3.", "2 + 3 = 5. \\boxed{5}"), ("Compute 12 * 3.", "12 * 3 = 36. \\boxed{36}"),
            ("Tom has 3 apples and buys 4.", None)]
# (problem index, sample index, label, chain); the long negative fails the length filter (training text >= 120).
CHAINS = [(0, 0, "pos", "2 + 3 = 5, so \\boxed{5}."), (0, 1, "neg", "2 + 3 = 6, so \\boxed{6}."),
          (1, 0, "pos", "12 * 3 = 36, so \\boxed{36}."), (1, 1, "neg", "12 * 3 is " + "very " * 40 + "\\boxed{35}."),
          (1, 2, "neg", "12 * 3 = 35, so \\boxed{35}."), (2, 0, "neg", "3 + 4 = 8 apples, \\boxed{8}.")]
KINDS = {"train-neg": "neg", "train-kd": "kd", "train-mix": "mix", "train-nt": "nt", "train-ul": "ul",
         "train-sft": "sft"}
COMMON = {"problems": "train", "model": "tiny", "max_chars": MAX_CHARS, "max_steps": 3, "batch_size": 2,
          "grad_accum": 1, "checkpoint_every": 2, "lr": 0.02, "max_length": 64}


def _seed(db: Store, tmp_path: Path) -> dict[tuple[int, int], int]:
    """The tiny model, a problems dataset `train`, the chains of TEACHER and one chain of another teacher;
    returns the chain ids by (problem index, sample index)."""
    with transaction(db.engine()) as s:
        problems = make.problems(s, tiny_and_chain_set(s, tmp_path), [
            {"external_id": str(k), "question": q, "solution": sol} for k, (q, sol) in enumerate(PROBLEMS)])
        chains = {(k, i): make.chain(s, problems[k], TEACHER, text, label, sample_idx=i).id
                  for k, i, label, text in CHAINS}
        make.chain(s, problems[0], "other", "5", "pos")
        return chains


def _examples(s: Session, job_id: int) -> set[tuple[str, int, str]]:
    rows = s.execute(select(TrainingExample).where(TrainingExample.job_id == job_id)).scalars()
    return {("chain", r.chain_id, r.label) if r.chain_id is not None else ("gold", r.problem_id, r.label)
            for r in rows}


def test_each_kind_trains_a_lora_on_exactly_its_examples(db: Store, tmp_path: Path) -> None:
    chain = _seed(db, tmp_path)
    jobs = {}
    for kind in KINDS:
        params = {**COMMON, **({} if kind == "train-sft" else {"teacher": TEACHER})}
        if kind in ("train-neg", "train-sft"):  # the CLI's way in, with and without chains (each call costs ~3 s)
            out = db.rplat("enqueue", kind, *[a for k, v in params.items() for a in ("--param", f"{k}={v}")],
                           "--json", check=True).stdout
            jobs[kind] = int(json.loads(out)["id"])
        else:
            jobs[kind] = Queue(db.engine()).enqueue(kind, params)[0]
    _drain(db)  # in this process: a runner process would start torch once more (seconds)

    pos = {("chain", chain[0, 0], "pos"), ("chain", chain[1, 0], "pos")}
    neg = {("chain", chain[0, 1], "neg"), ("chain", chain[1, 2], "neg"), ("chain", chain[2, 0], "neg")}
    with transaction(db.engine()) as s:
        base = s.scalar(select(Model).where(Model.name == "tiny"))
        gold = {("gold", pid, "gold") for pid in s.scalars(select(Problem.id).where(Problem.solution.is_not(None)))}
        expected = {"train-neg": neg, "train-kd": pos, "train-mix": pos | neg, "train-nt": pos | neg | gold,
                    "train-ul": pos | neg, "train-sft": gold}
        for kind, role in KINDS.items():
            job = s.get(Job, jobs[kind])
            assert job.status == "succeeded", (kind, job.error)
            assert _examples(s, job.id) == expected[kind], kind
            adapter = s.scalar(select(Model).where(Model.job_id == job.id))
            parents = s.execute(select(ModelParent.relation, ModelParent.parent_id)
                                .where(ModelParent.model_id == adapter.id)).all()
            assert (adapter.name, adapter.format, adapter.role) == (f"{role}-job{job.id}", "lora", role)
            assert parents == [("base", base.id)] and adapter.lora_r == 8 and adapter.target_modules == ["q_proj",
                                                                                                           "v_proj"]
            counts = {label: sum(1 for e in expected[kind] if e[2] == label) for label in ("gold", "neg", "pos")}
            assert adapter.config["examples"] == {k: v for k, v in counts.items() if v}
            assert adapter.config["train_params"]["max_chars"] == MAX_CHARS
            assert job.result["model_id"] == adapter.id and job.result["steps"] == 3
            # lineage: whose verdicts the chain labels it trained on are (none for the gold-only SFT)
            assert job.result["chain_labelers"] == ([] if kind == "train-sft" else ["hendrycks"]), kind
            steps = s.scalars(select(TrainingMetric.step).where(TrainingMetric.job_id == job.id)
                              .order_by(TrainingMetric.step)).all()
            assert steps == [0, 1, 2], kind
        names = {kind: s.get(Job, jobs[kind]).result["model"] for kind in KINDS}

    ids = torch.tensor([tiny_tokenizer()("Problem:\nCompute 2 + 3.\nSolution:\n2 + 3 = 5")["input_ids"]])
    plain, _ = load(prepare_backend(db.engine(), "tiny"), adapters=(), trainable=True, device="cpu")
    with torch.no_grad():
        base_logits = plain(input_ids=ids).logits
        for kind, name in names.items():
            module, _ = load(prepare_backend(db.engine(), name), trainable=True, device="cpu")
            moved = (module(input_ids=ids).logits - base_logits).abs().max().item()
            assert moved > 1e-4, f"{kind}'s LoRA leaves the logits as the base's"


def _metrics(db: Store, job_id: int) -> list[tuple[float, dict[str, float]]]:
    with transaction(db.engine()) as s:
        return [tuple(r) for r in s.execute(select(TrainingMetric.loss, TrainingMetric.extra)
                                            .where(TrainingMetric.job_id == job_id).order_by(TrainingMetric.step))]


def _drain(db: Store) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()


def test_nt_subtracts_lambda_times_the_negatives_nll_and_ul_adds_lambda_times_their_unlikelihood(
        db: Store, tmp_path: Path) -> None:
    _seed(db, tmp_path)
    queue = Queue(db.engine())
    params = {**COMMON, "teacher": TEACHER, "max_steps": 4, "epochs": 2}
    nt, _ = queue.enqueue("train-nt", {**params, "nt_lambda": 0.3})
    ul, _ = queue.enqueue("train-ul", {**params, "ul_lambda": 0.4})
    _drain(db)
    nt_rows, ul_rows = _metrics(db, nt), _metrics(db, ul)
    assert len(nt_rows) == len(ul_rows) == 4
    # Every value is a sum over the step's tokens divided by their number, so the parts combine like the losses.
    for loss, extra in nt_rows:
        assert loss == pytest.approx(extra["nll_pos"] - 0.3 * extra["nll_neg"], rel=1e-5)
        assert extra["nll_pos"] + extra["nll_neg"] > 0
    for loss, extra in ul_rows:
        assert loss == pytest.approx(extra["mle"] + 0.4 * extra["ul"], rel=1e-5)
        assert extra["mle"] == pytest.approx(extra["nll_pos"], rel=1e-5)
    assert any(extra["tokens_neg"] > 0 for _, extra in nt_rows + ul_rows)
    assert any(extra["tokens_neg"] < 1 for _, extra in nt_rows + ul_rows)


def test_a_teacher_without_chains_is_refused_at_enqueue_and_fails_the_job_with_one_sentence(
        db: Store, tmp_path: Path) -> None:
    _seed(db, tmp_path)
    params = {**COMMON, "teacher": "nobody"}
    with pytest.raises(UserError, match="'teacher' of train-neg names chain set 'nobody', which has no chains on "
                                        "dataset 'train'"):
        Queue(db.engine()).enqueue("train-neg", params)
    with transaction(db.engine()) as s:  # written past enqueue's check (chains deleted since): the handler's own
        job_id = make.job(s, "train-neg", validate_params("train-neg", params), status="queued").id
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempts) == ("failed", 1)
        assert s.scalar(select(Model).where(Model.job_id == job_id)) is None
        assert not _examples(s, job_id)
    assert job.error.startswith("there are no chains of teacher 'nobody' on dataset 'train'; import them")
    assert job.error.count(". ") == 0 and "\n" not in job.error


def test_train_sft_without_gold_solutions_fails_and_stores_nothing(db: Store, tmp_path: Path) -> None:
    _seed(db, tmp_path)
    with transaction(db.engine()) as s:
        for problem in s.scalars(select(Problem)):
            problem.solution = None
    job_id, _ = Queue(db.engine()).enqueue("train-sft", COMMON)
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "failed" and not _examples(s, job_id)
    assert job.error.startswith("dataset 'train' has no gold solutions to train on")


def test_the_length_filter_follows_max_chars(db: Store, tmp_path: Path) -> None:
    chain = _seed(db, tmp_path)
    job_id, _ = Queue(db.engine()).enqueue("train-neg", {**COMMON, "teacher": TEACHER, "max_chars": 1000,
                                                         "max_steps": 1})
    _drain(db)
    with transaction(db.engine()) as s:
        assert s.get(Job, job_id).status == "succeeded"
        got = {cid for _, cid, _ in _examples(s, job_id)}
    assert got == {chain[0, 1], chain[1, 1], chain[1, 2], chain[2, 0]}  # the long negative is in now
