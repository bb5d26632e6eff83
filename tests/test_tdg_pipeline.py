"""`rplat pipeline tdg`: the DAG it enqueues (kinds, dependencies, params, one transaction), and end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rplat.errors import UserError
from rplat.models import Dataset, Job, JobDependency, Model, Prediction, Problem, RankerScore, TeacherChain
from rplat.pipelines import TdgPipeline
from rplat.queue import Queue
from rplat.store import transaction

import factories as make
from stores import Store
from tiny_lm import register_tiny

SETTINGS = ["base", "sft", "kd", "mix", "nt", "ul", "neg", "nat", "nce"]
CHAIN_TRAINED = {"kd": "train-kd", "mix": "train-mix", "nt": "train-nt", "ul": "train-ul", "neg": "train-neg",
                 "nat": "train-nat", "nce": "train-nce"}


def _setup(db: Store, tmp_path: Path, train: int = 4, test: int = 3) -> None:
    with transaction(db.engine()) as s:
        register_tiny(s, tmp_path)
    sums = tmp_path / "sums.jsonl"
    db.rplat("generate", "sums", "--size", str(train + test), "--seed", "3", "--out", str(sums), check=True)
    lines = sums.read_text().splitlines(keepends=True)
    (tmp_path / "train.jsonl").write_text("".join(lines[:train]))
    (tmp_path / "test.jsonl").write_text("".join(lines[train:]))
    for name in ("train", "test"):
        db.rplat("import", "problems", str(tmp_path / f"{name}.jsonl"), "--dataset", f"sums-{name}", "--id-field", "id",
                 "--subject-field", "subject", check=True)
    db.rplat("experiments", "add", "t", check=True)


def _pipeline_jobs(db: Store) -> list[Job]:
    with transaction(db.engine()) as s:
        return list(s.scalars(select(Job).where(Job.kind.not_like("import-%")).order_by(Job.id)).all())


def _parents(db: Store, job_id: int) -> list[int]:
    with transaction(db.engine()) as s:
        return sorted(s.scalars(select(JobDependency.depends_on_id).where(JobDependency.job_id == job_id)).all())


def test_pipeline_tdg_enqueues_the_dag_in_one_transaction_and_a_rerun_is_the_same_jobs(
        db: Store, tmp_path: Path) -> None:
    _setup(db, tmp_path)
    base = ["pipeline", "tdg", "--benchmark", "sums-train", "--test", "sums-test", "--experiment", "t"]

    # Bad input: one sentence, exit 2, and not a single job of the DAG written.
    bad = db.rplat(*base, "--teacher", "tiny", "--student", "nobody")
    assert bad.returncode == 2 and "'nobody'" in bad.stderr and "Traceback" not in bad.stderr
    no_chains = db.rplat(*base, "--chains", "gpt-3.5", "--student", "tiny")
    assert no_chains.returncode == 2 and "import chains" in no_chains.stderr
    queue = Queue(db.engine())
    pipe = {"problems": "sums-train", "test": "sums-test", "student": "tiny", "experiment": "t", "teacher": "tiny"}
    for wrong, message in (({"teacher": "gpt"}, "not a registered model and has no chains"),
                           ({"overrides": {"train-kdd": {"lr": 1e-3}}}, "'train-kdd'"),
                           ({"overrides": {"sample": {"max_tokens": 0}}}, "max_tokens"),
                           ({"test": "nope"}, "'nope'"),
                           ({"asc_samples": 1}, "--asc-samples N > 1"),
                           ({"asc_setting": "cot"}, "--asc-setting 'cot'")):
        with pytest.raises(UserError, match=message):
            TdgPipeline(**{**pipe, **wrong}).enqueue(queue)  # type: ignore[arg-type]
    assert _pipeline_jobs(db) == []

    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"train": {"batch_size": 1, "epochs": 2}, "train-nce": {"batch_size": 2},
                                     "sample": {"max_tokens": 8}, "collect-chains": {"max_tokens": 16}}))
    args = [*base, "--teacher", "tiny", "--student", "tiny", "--n-chains", "3", "--limit", "2", "--train-steps", "5",
            "--params-file", str(overrides), "--json"]
    ids = json.loads(db.rplat(*args, check=True).stdout)
    jobs = {j.id: j for j in _pipeline_jobs(db)}
    assert len(jobs) == 1 + 8 + 9 + 9 + 4  # collect, trainings, greedy samples, evaluates, ASC
    experiment = {j.experiment_id for j in jobs.values()}
    assert len(experiment) == 1 and None not in experiment

    collect = jobs[ids["collect"]]
    assert collect.kind == "collect-chains" and _parents(db, collect.id) == []
    assert (collect.params["problems"], collect.params["model"], collect.params["n_samples"]) == (
        "sums-train", "tiny", 3)
    assert collect.params["max_tokens"] == 16 and collect.params["teacher"] is None  # named after its model

    train = ids["train"]
    assert set(train) == set(SETTINGS) - {"base"}
    for setting, job_id in train.items():
        job = jobs[job_id]
        assert job.kind == f"train-{setting}"
        assert job.params["adapter_name"] == f"t-{setting}" and job.params["model"] == "tiny"
        assert job.params["max_steps"] == 5 and job.params["problems"] == "sums-train" and job.params["epochs"] == 2
        assert job.params["batch_size"] == (2 if setting == "nce" else 1)
        assert job.params["teacher"] == (None if setting == "sft" else "tiny")
    assert _parents(db, train["sft"]) == []  # the gold solutions need no chains
    for setting in ("kd", "mix", "nt", "ul", "neg"):
        assert _parents(db, train[setting]) == [ids["collect"]]
    assert _parents(db, train["nat"]) == [train["neg"]] and jobs[train["nat"]].params["neg_model"] == "t-neg"
    assert _parents(db, train["nce"]) == [train["nat"]] and jobs[train["nce"]].params["nat_model"] == "t-nat"

    assert set(ids["sample"]) == set(ids["evaluate"]) == set(SETTINGS)
    for setting in SETTINGS:
        sample, evaluate = jobs[ids["sample"][setting]], jobs[ids["evaluate"][setting]]
        assert sample.kind == "sample" and evaluate.kind == "evaluate"
        assert sample.params["model"] == ("tiny" if setting == "base" else f"t-{setting}")
        assert (sample.params["problems"], sample.params["temperature"], sample.params["n_samples"]) == (
            "sums-test", 0.0, 1)
        assert sample.params["limit"] == 2 and sample.params["max_tokens"] == 8
        assert _parents(db, sample.id) == ([] if setting == "base" else [train[setting]])
        assert evaluate.params["sample_job"] == sample.id and evaluate.params["solve_job"] is None
        assert _parents(db, evaluate.id) == [sample.id]

    asc = ids["asc"]
    ranker, sampled = jobs[asc["train-ranker"]], jobs[asc["sample"]]
    score, aggregate = jobs[asc["score-samples"]], jobs[asc["aggregate"]]
    assert asc["setting"] == "nce" and _parents(db, ranker.id) == [ids["collect"]]
    assert (ranker.kind, ranker.params["problems"], ranker.params["teacher"], ranker.params["ranker_name"]) == (
        "train-ranker", "sums-train", "tiny", "t-ranker")
    assert (sampled.params["model"], sampled.params["n_samples"], sampled.params["temperature"]) == ("t-nce", 16, 0.7)
    assert sampled.params["max_tokens"] == 8 and _parents(db, sampled.id) == [train["nce"]]
    assert (score.params["sample_job"], score.params["ranker"]) == (sampled.id, "t-ranker")
    assert _parents(db, score.id) == sorted([sampled.id, ranker.id])
    assert (aggregate.params["sample_job"], aggregate.params["score_samples_job"],
            aggregate.params["greedy_sample_job"]) == (sampled.id, score.id, ids["sample"]["nce"])
    assert _parents(db, aggregate.id) == sorted([score.id, ids["sample"]["nce"]])

    again = json.loads(db.rplat(*args, check=True).stdout)
    assert again == ids and len(_pipeline_jobs(db)) == len(jobs)  # an identical pipeline is the same jobs


def test_pipeline_tdg_with_imported_chains_collects_nothing(db: Store, tmp_path: Path) -> None:
    _setup(db, tmp_path)
    _seed_positive_chains(db, "gpt-3.5")
    out = db.rplat("pipeline", "tdg", "--benchmark", "sums-train", "--test", "sums-test", "--chains", "gpt-3.5",
                   "--student", "tiny", "--experiment", "t", "--json", check=True)
    ids = json.loads(out.stdout)
    jobs = {j.id: j for j in _pipeline_jobs(db)}
    assert ids["collect"] is None and {j.kind for j in jobs.values()} >= {"train-neg", "sample", "evaluate"}
    assert "collect-chains" not in {j.kind for j in jobs.values()} and len(jobs) == 8 + 9 + 9 + 4
    assert _parents(db, ids["asc"]["train-ranker"]) == []
    for setting in ("kd", "mix", "nt", "ul", "neg"):
        assert _parents(db, ids["train"][setting]) == [] and jobs[ids["train"][setting]].params["teacher"] == "gpt-3.5"
    assert _parents(db, ids["train"]["nat"]) == [ids["train"]["neg"]]


def _seed_positive_chains(db: Store, teacher: str) -> None:
    """One right chain (the worked solution) per training problem as sample 0 of `teacher`, as an import would."""
    with transaction(db.engine()) as s:
        train = s.scalars(select(Problem).join(Dataset, Dataset.id == Problem.dataset_id)
                          .where(Dataset.name == "sums-train").order_by(Problem.id)).all()
        for problem in train:
            assert problem.solution is not None
            make.chain(s, problem, teacher, problem.solution, "pos", extracted_answer=problem.answer,
                       labeler="hendrycks", hendrycks_correct=True, math_verify_correct=True)


HANDLERS = ("rplat.runners.tdg.chains", "rplat.runners.tdg.train", "rplat.runners.tdg.nat", "rplat.runners.tdg.nce",
            "rplat.runners.tdg.ranker", "rplat.runners.tdg.aggregate")
MISSING = [m for m in HANDLERS if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(bool(MISSING), reason=f"needs every TDG kind's handler; missing: {', '.join(MISSING)}")
def test_whole_pipeline_tdg_on_a_tiny_model_runs_to_the_report(db: Store, tmp_path: Path) -> None:
    """The whole DAG on a tiny random model: teacher = student. Sample 0 of every training problem is seeded as a
    right chain (a random model writes none), so collect-chains adds the negatives (samples 1 and 2)."""
    _setup(db, tmp_path, train=4, test=3)
    _seed_positive_chains(db, "tiny")
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({
        "collect-chains": {"max_tokens": 6, "n_fewshot": 1, "temperature": 1.0},
        "train": {"batch_size": 2, "grad_accum": 1, "max_length": 64, "epochs": 1, "checkpoint_every": 1,
                  "lora_dropout": 0.0},
        "train-nat": {"unit_dim": 8, "log_every": 1},
        "sample": {"max_tokens": 6},
        "train-ranker": {"encoder": "tiny", "epochs": 2, "max_length": 64, "heldout_fraction": 0.25},
    }))
    ids = json.loads(db.rplat("pipeline", "tdg", "--benchmark", "sums-train", "--test", "sums-test", "--teacher",
                              "tiny", "--student", "tiny", "--experiment", "t", "--n-chains", "3", "--train-steps", "2",
                              "--asc-samples", "3", "--params-file", str(overrides), "--json", check=True).stdout)
    run = db.rplat("runner", "--until-done", "--lease-seconds", "30", timeout=1500)
    assert run.returncode == 0, run.stderr
    jobs = _pipeline_jobs(db)
    assert {j.status for j in jobs} == {"succeeded"}, [(j.kind, j.status, j.error) for j in jobs]
    with transaction(db.engine()) as s:
        chains = s.execute(select(TeacherChain.sample_idx, TeacherChain.label, TeacherChain.job_id)
                           .where(TeacherChain.teacher == "tiny")).all()
        adapters = {m.name: m for m in s.scalars(select(Model).where(Model.name.like("t-%"))).all()}
    assert len(chains) == 4 * 3 and {c.job_id for c in chains if c.sample_idx > 0} == {ids["collect"]}
    assert set(adapters) == {f"t-{s}" for s in SETTINGS if s != "base"} | {"t-ranker"}
    assert all(adapters[f"t-{s}"].job_id == ids["train"][s] for s in ids["train"])

    report = json.loads(db.rplat("report", "tdg", "--experiment", "t", "--json", check=True).stdout)
    rows = {r["setting"]: r for r in report["table2"]}
    assert set(rows) == set(SETTINGS)
    assert all(r["n"] == 3 and r["evaluate_job"] == ids["evaluate"][s] for s, r in rows.items())
    assert [(t["a"], t["b"]) for t in report["table1"]] == [("kd", "neg"), ("neg", "nat")]
    printed = db.rplat("report", "tdg", "--experiment", "t", check=True).stdout
    assert "Table 2" in printed and "Table 1" in printed and "t-nce" in printed

    # ASC: every test problem voted on by each method, the ranker registered, the curve and a paired comparison.
    aggregate = ids["asc"]["aggregate"]
    with transaction(db.engine()) as s:
        methods = s.execute(select(Prediction.method, func.count()).where(Prediction.job_id == aggregate)
                            .group_by(Prediction.method)).all()
        ranker = s.scalar(select(Model).where(Model.name == "t-ranker"))
        scored = s.scalar(select(func.count()).select_from(RankerScore)
                          .where(RankerScore.job_id == ids["asc"]["score-samples"]))
    assert dict(methods) == {m: 3 for m in ("greedy", "sc", "asc-f0", "asc-f1", "asc-f2", "asc-f3")}
    assert ranker is not None and ranker.format == "ranker" and ranker.job_id == ids["asc"]["train-ranker"]
    assert scored == 3 * 3
    curve = json.loads(db.rplat("report", "asc", "--experiment", "t", "--json", check=True).stdout)
    assert curve  # one row per method and k
    printed = db.rplat("report", "asc", "--experiment", "t", check=True).stdout
    assert f"ranker t-ranker (train-ranker job {ids['asc']['train-ranker']}, encoder tiny): " in printed
    assert "of 1 held-out pairs ranked right" in printed  # 4 questions, 1 held out
    compare = json.loads(db.rplat("report", "compare", f"{aggregate}:sc", f"{aggregate}:asc-f3", "--json",
                                  check=True).stdout)
    assert compare["n"] == 3


def test_pipeline_gpus_go_to_the_jobs_that_run_a_model_and_not_to_evaluate_or_aggregate(
        db: Store, tmp_path: Path) -> None:
    _setup(db, tmp_path)
    _seed_positive_chains(db, "gpt-3.5")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "Tom had 5 apples. He ate 2. Now he has 3."}) + "\n")
    db.rplat("import", "documents", str(docs), "--dataset", "docs", check=True)
    db.rplat("pipeline", "tdg", "--problems", "sums-train", "--test", "sums-test", "--teacher", "gpt-3.5",
             "--student", "tiny", "--experiment", "t", "--gpus", "1", check=True)
    db.rplat("pipeline", "rationalyst", "--documents", "docs", "--problems", "sums-train", "--model", "tiny",
             "--experiment", "t", "--methods", "greedy", "--gpus", "2", check=True)
    jobs = _pipeline_jobs(db)
    on_cpu = {"evaluate", "aggregate"}
    tdg = [j for j in jobs if j.kind not in {"prefilter", "extract-rationales", "score-rationales",
                                             "train-rationalyst", "solve"}]
    assert {j.kind for j in tdg} >= {"train-neg", "train-nat", "train-ranker", "score-samples", "sample"} | on_cpu
    # evaluate jobs of both pipelines read the store only: no GPU, whichever pipeline enqueued them.
    assert {(j.kind, j.gpus) for j in jobs if j.kind in on_cpu} == {("evaluate", 0), ("aggregate", 0)}
    assert {j.gpus for j in tdg if j.kind not in on_cpu and j.kind != "evaluate"} == {1}
    rationalyst = [j for j in jobs if j.kind in {"prefilter", "extract-rationales", "score-rationales",
                                                 "train-rationalyst", "solve"}]
    assert len(rationalyst) == 5 and {j.gpus for j in rationalyst} == {2}
    bad = db.rplat("pipeline", "tdg", "--problems", "sums-train", "--test", "sums-test", "--teacher", "gpt-3.5",
                   "--student", "tiny", "--gpus", "-1")
    assert bad.returncode == 2 and "--gpus" in bad.stderr and "Traceback" not in bad.stderr
