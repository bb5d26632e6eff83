"""`rplat pipeline rationalyst` end to end on a tiny model: every stage runs in order, reports."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from rplat.models import Job, JobDependency, Model
from rplat.store import transaction

from stores import Store
from tiny_lm import register_tiny

METHODS = ["greedy", "sc", "random-candidate", "rationalyst-implicit", "rationalyst-explicit"]


def test_pipeline_runs_every_stage_and_reports_accuracy_per_method(db: Store, tmp_path: Path) -> None:
    with transaction(db.engine()) as s:
        register_tiny(s, tmp_path)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in [
        "Tom had 5 apples. He ate 2 of them. Now he has 3 apples left.",
        "The river floods every spring. Farmers plant after the water recedes.",
    ]))
    problems = tmp_path / "gsm.jsonl"
    db.rplat("generate", "reasoning-gym", "gsm_symbolic", "--size", "4", "--out", str(problems), check=True)
    db.rplat("import", "documents", str(docs), "--dataset", "docs", check=True)
    db.rplat("import", "problems", str(problems), "--dataset", "gsm", "--id-field", "id", "--benchmark", "gsm8k",
             "--subject-field", "subject", check=True)
    db.rplat("experiments", "add", "tiny-run", check=True)
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({
        "prefilter": {"threshold": -1.0},
        "extract-rationales": {"max_tokens": 6},
        "score-rationales": {"tau": -1e9},
        "train-rationalyst": {"batch_size": 1, "grad_accum": 1, "checkpoint_every": 1, "eval_fraction": 0.0},
        "solve": {"max_steps": 2, "step_tokens": 4, "rationale_tokens": 4, "n_samples": 2, "n_fewshot": 1},
    }))
    out = db.rplat("pipeline", "rationalyst", "--documents", "docs", "--benchmark", "gsm", "--model", "tiny",
                   "--experiment", "tiny-run", "--extract-mode", "insert", "--limit", "2", "--train-steps", "2",
                   "--params-file", str(overrides), "--json", check=True)
    ids = json.loads(out.stdout)
    assert set(ids["solve"]) == set(METHODS)

    run = db.rplat("runner", "--once", "--lease-seconds", "30", timeout=1200)
    assert run.returncode == 0, run.stderr
    with transaction(db.engine()) as s:
        jobs = s.scalars(select(Job).where(Job.kind.not_like("import-%"))).all()
        assert {j.status for j in jobs} == {"succeeded"}, [(j.kind, j.status, j.error) for j in jobs]
        guided_parents = s.scalars(select(JobDependency.depends_on_id)
                                   .where(JobDependency.job_id == ids["solve"]["rationalyst-implicit"])).all()
        adapter = s.scalar(select(Model).where(Model.name == "tiny-run-rationalyst"))
    assert guided_parents == [ids["train"]]
    assert adapter is not None and adapter.job_id == ids["train"]

    report = json.loads(db.rplat("report", "rationalyst", "--experiment", "tiny-run", "--json", check=True).stdout)
    overall = {r["method"]: r for r in report["results"] if r["subject"] == "all"}
    assert set(overall) == set(METHODS)
    assert all(r["n"] == 2 and 0.0 <= r["accuracy"] <= 1.0 for r in overall.values())
    funnel = report["funnel"]
    assert funnel["prefilter_passed"] == 2 and funnel["rationales"] > 0 and funnel["train_steps"] == 2
    assert funnel["kept"] == funnel["rationales"]

    again = json.loads(db.rplat("pipeline", "rationalyst", "--documents", "docs", "--benchmark", "gsm", "--model",
                                "tiny", "--experiment", "tiny-run", "--extract-mode", "insert", "--limit", "2",
                                "--train-steps", "2", "--params-file", str(overrides), "--json", check=True).stdout)
    assert again == ids  # an identical pipeline is the same jobs, not new ones
