"""RATIONALYST jobs on a tiny random model: loss deltas scored, an adapter trained."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from rplat.llm.hf import HFBackend
from rplat.methods.loss_delta import loss_delta
from rplat.models import (
    Extraction,
    Job,
    Model,
    ModelParent,
    Rationale,
    RationaleScore,
    TrainingExample,
    TrainingMetric,
)
from rplat.prompts import TEMPLATES, ensure_template
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

import factories as make
from stores import Store
from tiny_lm import register_tiny, tiny_tokenizer

TRIPLES = [
    ("Tom has 3 apples.", "add the apples he buys", "He buys 4 more, so he has 7."),
    ("The cat sat on the mat.", "cats like warm places", "It was warm."),
    ("Compute 12 * 3.", "multiply", "12 * 3 = 36."),
    ("", "an empty preceding span", "Never kept."),
]


def seed_triples(db: Store, tmp_path: Path, triples: list[tuple[str, str, str, str]],
                 template: str = "extract-reasoning") -> int:
    """A registered tiny model and an (already finished) extraction job holding one rationale per (preceding,
    rationale, following, source) of `triples`, each extracted from a problem of a dataset `p` the job owns;
    returns that job's id."""
    with transaction(db.engine()) as s:
        model = register_tiny(s, tmp_path)
        extract = make.job(s, "extract-rationales")
        problems = make.problems(s, make.dataset(s, "p", extract), [
            {"external_id": str(k), "question": pre or "q"} for k, (pre, *_) in enumerate(triples)])
        template_id = ensure_template(s, TEMPLATES[template])
        for problem, (pre, rat, fol, source) in zip(problems, triples, strict=True):
            extraction = make.extraction(s, extract, model, template_id, pre, f"{pre}<BOT>{rat}<EOT>{fol}",
                                         problem=problem)
            make.rationale(s, extraction, pre, rat, fol, source=source)
        return extract.id


def _seed_rationales(db: Store, tmp_path: Path) -> int:
    """TRIPLES, sources alternating pile and gsm8k."""
    return seed_triples(db, tmp_path, [(*t, "gsm8k" if k % 2 else "pile") for k, t in enumerate(TRIPLES)])


def _drain(db: Store) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()


def test_score_rationales_stores_the_loss_delta_of_every_rationale(db: Store, tmp_path: Path) -> None:
    extract_job = _seed_rationales(db, tmp_path)
    job_id, _ = Queue(db.engine()).enqueue("score-rationales", {
        "extract_job": extract_job, "model": "tiny", "batch_size": 3, "tau_by_source": {"gsm8k": 1e9}})
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        rows = s.execute(select(RationaleScore, Rationale).join(Rationale)
                         .where(RationaleScore.job_id == job_id).order_by(Rationale.id)).all()
        path = s.scalar(select(Model.path).where(Model.name == "tiny"))
    assert len(rows) == 4 and job.result["scored"] == 4
    from transformers import AutoModelForCausalLM

    hf = HFBackend(AutoModelForCausalLM.from_pretrained(path), tiny_tokenizer(), fingerprint="check")
    system = TEMPLATES["score-future"].system
    for score, rationale in rows:
        n_following = len(hf.encode_continuation(rationale.following))
        assert len(score.lp_without) == len(score.lp_with) == n_following
        without = hf.chat_prompt([{"role": "system", "content": system},
                                  {"role": "user", "content": rationale.preceding}])
        assert score.lp_without == pytest.approx(hf.score([without], [rationale.following])[0], abs=1e-4)
        expected = loss_delta(score.lp_without, score.lp_with, tau=score.tau,
                              spans_nonempty=bool(rationale.preceding))
        assert score.loss_delta == pytest.approx(expected.delta)
        assert score.kept == expected.kept
        assert score.tau == (1e9 if rationale.source == "gsm8k" else 0.0)
    assert rows[3][0].kept is False  # empty preceding


def test_rerunning_score_rationales_regenerates_nothing(db: Store, tmp_path: Path) -> None:
    extract_job = _seed_rationales(db, tmp_path)
    queue = Queue(db.engine())
    first, _ = queue.enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny"})
    second, _ = queue.enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny", "batch_size": 2})
    _drain(db)
    with transaction(db.engine()) as s:
        results = {j.id: j.result for j in s.scalars(select(Job).where(Job.id.in_([first, second])))}
    assert results[first]["cache_misses"] == 8
    assert results[second]["cache_misses"] == 0 and results[second]["cache_hits"] == 8


def test_train_rationalyst_registers_an_adapter_with_its_lineage(db: Store, tmp_path: Path) -> None:
    extract_job = _seed_rationales(db, tmp_path)
    queue = Queue(db.engine())
    score_job, _ = queue.enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny", "tau": -1e9})
    train_job, _ = queue.enqueue("train-rationalyst", {
        "score_job": score_job, "model": "tiny", "max_steps": 3, "batch_size": 1, "grad_accum": 1,
        "checkpoint_every": 2, "eval_fraction": 0.34, "target_modules": ["q_proj", "v_proj"]}, after=[score_job])
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, train_job)
        assert job.status == "succeeded", job.error
        adapter = s.scalar(select(Model).where(Model.job_id == train_job))
        parent = s.scalar(select(ModelParent).where(ModelParent.model_id == adapter.id))
        splits = dict(s.execute(select(TrainingExample.split, func.count()).where(TrainingExample.job_id == train_job)
                                .group_by(TrainingExample.split)).all())
        metrics = s.execute(select(TrainingMetric.step, TrainingMetric.extra).where(TrainingMetric.job_id == train_job)
                            .order_by(TrainingMetric.step)).all()
    assert adapter.format == "lora" and adapter.role == "rationalyst" and adapter.lora_r == 8
    assert parent.relation == "base" and adapter.name == f"rationalyst-job{train_job}"
    assert splits == {"train": 2, "eval": 1}  # 3 kept (the empty-preceding one never is), 1 held out
    assert [m.step for m in metrics] == [0, 1, 2]
    # The held-out example's loss is measured after the last step (eval_every 50 > 3 steps) and is the result's.
    assert [m.extra for m in metrics[:2]] == [None, None] and metrics[2].extra == {"eval_loss": job.result["eval_loss"]}
    assert 0 < job.result["eval_loss"] < 20
    assert job.result["steps"] == 3 and job.result["model_id"] == adapter.id


def _tiny_and_problems(db: Store, tmp_path: Path) -> None:
    with transaction(db.engine()) as s:
        register_tiny(s, tmp_path)
    problems = tmp_path / "gsm.jsonl"
    db.rplat("generate", "reasoning-gym", "gsm_symbolic", "--size", "3", "--out", str(problems), check=True)
    db.rplat("import", "problems", str(problems), "--dataset", "gsm", "--id-field", "id", "--benchmark", "gsm8k",
             check=True)


def test_insert_mode_extraction_yields_one_rationale_per_line_boundary(db: Store, tmp_path: Path) -> None:
    _tiny_and_problems(db, tmp_path)
    job_id, _ = Queue(db.engine()).enqueue("extract-rationales", {
        "problems": "gsm", "model": "tiny", "mode": "insert", "max_tokens": 6, "batch_size": 2})
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        extractions = s.scalars(select(Extraction).where(Extraction.job_id == job_id)).all()
        rationales = s.scalars(select(Rationale).where(Rationale.job_id == job_id)).all()
    assert len(extractions) == 3 and all(e.passed and e.fidelity == 1.0 for e in extractions)
    lines = sum(len(e.input_text.splitlines()) for e in extractions)
    assert len(rationales) == lines - 3  # one per boundary between consecutive lines
    assert all(r.source == "gsm8k" and r.following for r in rationales)
    assert job.result == {"extractions": 3, "passed_fidelity": 3, "rationales": len(rationales),
                          "cache_hits": 0, "cache_misses": len(rationales)}


def test_rewrite_mode_rejects_outputs_that_do_not_keep_the_text(db: Store, tmp_path: Path) -> None:
    _tiny_and_problems(db, tmp_path)
    job_id, _ = Queue(db.engine()).enqueue("extract-rationales", {
        "problems": "gsm", "model": "tiny", "max_tokens": 8, "limit": 2})
    _drain(db)
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        extractions = s.scalars(select(Extraction).where(Extraction.job_id == job_id)).all()
    assert job.status == "succeeded", job.error
    assert len(extractions) == 2  # limit
    assert all(not e.passed and e.fidelity < 0.9 for e in extractions)  # a random model rewrites nothing faithfully
    assert job.result["rationales"] == 0


def test_a_limit_takes_documents_and_worked_solutions_alternately(db: Store, tmp_path: Path) -> None:
    _tiny_and_problems(db, tmp_path)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(f'{{"text": "Document {k}. It has two sentences."}}\n' for k in range(3)))
    db.rplat("import", "documents", str(docs), "--dataset", "wiki", "--source", "wikipedia", check=True)
    job_id, _ = Queue(db.engine()).enqueue("extract-rationales", {
        "documents": "wiki", "problems": "gsm", "model": "tiny", "mode": "insert", "max_tokens": 4, "limit": 4,
        "batch_size": 3})
    _drain(db)
    with transaction(db.engine()) as s:
        assert s.get(Job, job_id).status == "succeeded"
        rows = s.execute(select(Extraction.document_id, Extraction.problem_id).where(Extraction.job_id == job_id)
                         ).all()
    assert sum(d is not None for d, _ in rows) == 2 and sum(p is not None for _, p in rows) == 2
