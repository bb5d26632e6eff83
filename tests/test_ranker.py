"""train-ranker and score-samples on a tiny random encoder (both stores); kill -9 mid-training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select

from rplat.errors import UserError
from rplat.kinds import validate_params
from rplat.methods.ranker import Ranker, RankerConfig, collate, encode_pair, load_ranker, save_ranker
from rplat.models import (
    Job,
    Model,
    ModelParent,
    Problem,
    RankerPair,
    RankerScore,
    Sample,
    TeacherChain,
    TrainingMetric,
)
from rplat.queue import Queue
from rplat.registry import register_model
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

import factories as make
from killable_runners import StartRunner, count_rows, kill_then_rescue
from stores import Store
from tiny_lm import register_tiny, tiny_and_chain_set, tiny_model, tiny_tokenizer

TEACHER = "gpt-x"
COMMON = {"problems": "train", "teacher": TEACHER, "encoder": "tiny", "max_length": 48, "lr": 1e-3}


def _seed(db: Store, tmp_path: Path, n_problems: int) -> dict[int, dict[str, set[int]]]:
    """The tiny model as the encoder and `n_problems` sums with two positive and two negative chains each (the
    last problem only positives); returns problem id -> label -> chain ids."""
    with transaction(db.engine()) as s:
        problems = make.problems(s, tiny_and_chain_set(s, tmp_path), [
            {"external_id": str(k), "question": f"Compute {k} + 3.", "answer": str(k + 3)} for k in range(n_problems)])
        chains: dict[int, dict[str, set[int]]] = {}
        for k, problem in enumerate(problems):
            labels = ["pos", "neg", "pos", "neg"] if k < n_problems - 1 else ["pos", "pos"]
            chains[problem.id] = {"pos": set(), "neg": set()}
            for i, label in enumerate(labels):
                text = f"{k} + 3 = {k + 3 + (0 if label == 'pos' else i + 1)}, so \\boxed{{{k + 3}}}."
                chains[problem.id][label].add(make.chain(s, problem, TEACHER, text, label, sample_idx=i).id)
    return chains


def _drain(db: Store) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(until_done=True, lease_seconds=30)).run()


def _pairs(db: Store, job_id: int, split: str) -> list[Any]:
    with transaction(db.engine()) as s:
        return s.execute(select(RankerPair.epoch, RankerPair.problem_id, RankerPair.pos_chain_id,
                                RankerPair.neg_chain_id, RankerPair.s_pos, RankerPair.s_neg, RankerPair.loss)
                         .where(RankerPair.job_id == job_id, RankerPair.split == split)
                         .order_by(RankerPair.epoch, RankerPair.problem_id)).all()


def test_train_ranker_stores_a_pair_per_question_and_epoch_and_reports_heldout_accuracy(
        db: Store, tmp_path: Path) -> None:
    chains = _seed(db, tmp_path, 7)  # 6 questions with both labels: 4 train, 2 held out
    job_id, _ = Queue(db.engine()).enqueue("train-ranker", {**COMMON, "epochs": 2, "heldout_fraction": 0.3,
                                                            "batch_size": 2, "checkpoint_every": 2})
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        ranker = s.scalar(select(Model).where(Model.job_id == job_id))
        parents = dict(s.execute(select(ModelParent.relation, ModelParent.parent_id)
                                 .where(ModelParent.model_id == ranker.id)).all())
        tiny_id = s.scalar(select(Model.id).where(Model.name == "tiny"))
        last = s.scalar(select(TrainingMetric).where(TrainingMetric.job_id == job_id)
                        .order_by(TrainingMetric.step.desc()).limit(1))
        extra, steps = last.extra, last.step + 1
    train, heldout = _pairs(db, job_id, "train"), _pairs(db, job_id, "heldout")
    train_questions = {q for _, q, *_ in train}
    assert (ranker.name, ranker.format, ranker.role, parents) == (f"ranker-job{job_id}", "ranker", "ranker",
                                                                    {"base": tiny_id})
    assert len(train_questions) == 4 and len(heldout) == 2 and not train_questions & {q for _, q, *_ in heldout}
    assert sorted((e, q) for e, q, *_ in train) == sorted((e, q) for e in (0, 1) for q in train_questions)
    assert all(a in chains[q]["pos"] and b in chains[q]["neg"] for _, q, a, b, *_ in train + heldout)
    assert all(lo == pytest.approx((1 - sp) ** 3 + sn ** 3, rel=1e-5) for *_, sp, sn, lo in train + heldout)
    accuracy = sum(sp > sn for *_, sp, sn, _ in heldout) / 2
    assert job.result["heldout_accuracy"] == accuracy == extra["heldout_accuracy"]
    assert job.result["heldout_loss"] == pytest.approx(sum(r[-1] for r in heldout) / 2)
    assert job.result["pairs"] == 8 and steps == job.result["steps"] == 4

    # The registered ranker reloads from its safetensors and gives the stored held-out scores.
    model, tok, cfg = load_ranker(Path(ranker.path))
    _, q, pos_id, _, s_pos, _, _ = heldout[0]
    with transaction(db.engine()) as s:
        question = s.get(Problem, q).question
        text = s.get(TeacherChain, pos_id).text
    batch = collate([encode_pair(tok, question, text, cfg.max_length)], tok.pad_token_id)
    with torch.no_grad():
        assert model(**batch).item() == pytest.approx(s_pos, abs=1e-5)


def _ranker_and_samples(db: Store, tmp_path: Path) -> int:
    """A ranker built in-process (tiny encoder, max length 24) and a sample job (owning the problems' dataset
    `test`): problem 0 with two short samples and an over-long one, problem 1 with only an over-long one. Returns
    the sample job's id."""
    directory = tmp_path / "ranker"
    torch.manual_seed(0)
    save_ranker(Ranker(tiny_model().model, 32), tiny_tokenizer(), directory, RankerConfig("base", 32, 24))
    long = " ".join(["3 + 4 = 7."] * 10)
    samples = [["3 + 4 = 7.", "The answer is 8.", long], [long]]
    with transaction(db.engine()) as s:
        rk = register_model(s, "rk", "ranker", directory, role="ranker")
        sampled = make.job(s, "sample")
        problems = make.problems(s, make.dataset(s, "test", sampled), [
            {"external_id": str(k), "question": "Compute 3 + 4.", "answer": "7"} for k in range(len(samples))])
        for problem, texts in zip(problems, samples, strict=True):
            for i, text in enumerate(texts):
                make.sample(s, sampled, problem, rk, text, sample_idx=i)
        return sampled.id


def test_score_samples_scores_each_sample_once_and_fills_over_long_ones_with_the_problem_mean(
        db: Store, tmp_path: Path) -> None:
    sample_job = _ranker_and_samples(db, tmp_path)
    job_id, _ = Queue(db.engine()).enqueue("score-samples", {"sample_job": sample_job, "ranker": "rk",
                                                             "batch_size": 1})
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        rows = s.execute(select(Sample.problem_id, Sample.sample_idx, RankerScore.score, RankerScore.truncated)
                         .join(Sample, Sample.id == RankerScore.sample_id).where(RankerScore.job_id == job_id)
                         .order_by(Sample.problem_id, Sample.sample_idx)).all()
    (_, _, a, ta), (_, _, b, tb), (_, _, filled, tf), (_, _, alone, tl) = rows
    assert (ta, tb, tf, tl) == (False, False, True, True)
    assert 0 < a < 1 and 0 < b < 1 and a != b
    assert filled == pytest.approx((a + b) / 2) and alone == 1.0
    assert job.result["scored"] == 4 and job.result["truncated"] == 2
    assert job.result["mean_score"] == pytest.approx((a + b + filled + alone) / 4)


def test_bad_inputs_fail_the_job_with_one_sentence_and_write_nothing(db: Store, tmp_path: Path) -> None:
    sample_job = _ranker_and_samples(db, tmp_path)
    with transaction(db.engine()) as s:
        register_tiny(s, tmp_path)
        empty_samples = make.job(s, "sample").id
    queue = Queue(db.engine())
    # Enqueueing refuses a ranker that is not one and a chain set not on the dataset; the handlers refuse them too
    # (a model re-registered, chains deleted after enqueueing), which the jobs written past enqueue's checks show.
    not_a_ranker_params = {"sample_job": sample_job, "ranker": "tiny"}
    no_pairs_params = {**COMMON, "problems": "test"}
    with pytest.raises(UserError, match="names model 'tiny', a causal LM .*not a ranker"):
        queue.enqueue("score-samples", not_a_ranker_params)
    with pytest.raises(UserError, match=f"names chain set '{TEACHER}', which has no chains on dataset 'test'"):
        queue.enqueue("train-ranker", no_pairs_params)
    with transaction(db.engine()) as s:
        not_a_ranker = make.job(s, "score-samples", validate_params("score-samples", not_a_ranker_params),
                                status="queued").id
        no_pairs = make.job(s, "train-ranker", validate_params("train-ranker", no_pairs_params), status="queued").id
    no_samples, _ = queue.enqueue("score-samples", {"sample_job": empty_samples, "ranker": "rk"})
    _drain(db)
    with transaction(db.engine()) as s:
        errors = {j: (s.get(Job, j).status, s.get(Job, j).error) for j in (not_a_ranker, no_samples, no_pairs)}
        written = s.scalar(select(func.count()).select_from(RankerScore)) + s.scalar(
            select(func.count()).select_from(RankerPair))
    assert errors[not_a_ranker] == ("failed", "ranker 'tiny' is a base model, not a ranker; pass --param ranker= the "
                                              "result of a train-ranker job.")
    assert errors[no_samples][0] == "failed" and "stored no samples" in errors[no_samples][1]
    assert errors[no_pairs][0] == "failed" and "both a positive and a negative chain" in errors[no_pairs][1]
    assert written == 0


def test_killed_train_ranker_resumes_with_the_same_loss_curve_and_pairs(
        db: Store, tmp_path: Path, runners: StartRunner) -> None:
    _seed(db, tmp_path, 11)
    common = {**COMMON, "epochs": 8, "heldout_fraction": 0.2, "checkpoint_every": 4}  # 8 questions x 8 = 64 steps
    queue = Queue(db.engine())
    straight, _ = queue.enqueue("train-ranker", {**common, "ranker_name": "straight"})
    _drain(db)
    crashed, _ = queue.enqueue("train-ranker", {**common, "ranker_name": "crashed"})
    resume_at, (result, attempts) = kill_then_rescue(db, runners, crashed, 64, checkpoint_at=8)
    with transaction(db.engine()) as s:
        curves = {j: s.execute(select(TrainingMetric.step, TrainingMetric.loss).where(TrainingMetric.job_id == j)
                               .order_by(TrainingMetric.step)).all() for j in (straight, crashed)}
    assert result["resumed_from"] == resume_at > 0 and attempts == 2
    assert [st for st, _ in curves[crashed]] == list(range(64))
    assert [lo for _, lo in curves[crashed]] == pytest.approx([lo for _, lo in curves[straight]], rel=1e-4)
    pairs = {j: _pairs(db, j, "train") for j in (straight, crashed)}
    assert len(pairs[crashed]) == count_rows(db, RankerPair, crashed) - 2 == 64
    assert [r[:4] for r in pairs[crashed]] == [r[:4] for r in pairs[straight]]
    assert [r[4] for r in pairs[crashed]] == pytest.approx([r[4] for r in pairs[straight]], rel=1e-4)
    with transaction(db.engine()) as s:
        assert result["heldout_accuracy"] == s.get(Job, straight).result["heldout_accuracy"]
