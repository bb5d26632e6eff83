"""Lineage that is written: names checked at enqueue, jobs' model and template, `rplat explain`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from rplat.errors import UserError
from rplat.hashing import content_hash
from rplat.imports.datasets import FieldMap, import_file
from rplat.models import Base, Job, Model, PromptTemplate
from rplat.prompts import TEMPLATES
from rplat.queue import Queue
from rplat.registry import BUNDLED_EMBEDDER, register_model
from rplat.store import transaction

from stores import Store, make_store
from tiny_lm import register_tiny, save_tiny

PROBLEMS = FieldMap("problems", None, {"question": "question"}, {"solution": "solution", "answer": "answer"})
DOCUMENTS = FieldMap("documents", None, {"text": "text"})


def seed(store: Store, tmp_path: Path) -> int:
    """A registered tiny model, a problems dataset `gsm` and a documents dataset `docs`; the tiny model's id."""
    with transaction(store.engine()) as s:
        tiny_id = register_tiny(s, tmp_path).id
    problems = tmp_path / "gsm.jsonl"
    problems.write_text(json.dumps({"question": "What is 2+3?", "solution": "2 + 3 = 5\n#### 5", "answer": "5"}) + "\n")
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "Tom had 5 apples. He ate 2."}) + "\n")
    import_file(store.engine(), problems, "gsm", PROBLEMS)
    import_file(store.engine(), docs, "docs", DOCUMENTS)
    return tiny_id


def n_jobs(store: Store) -> int:
    with transaction(store.engine()) as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def refused(store: Store, kind: str, params: dict[str, Any], after: tuple[int, ...] = ()) -> str:
    """Enqueue, expecting a refusal; asserts nothing was queued and returns the sentence."""
    before = n_jobs(store)
    with pytest.raises(UserError) as err:
        Queue(store.engine()).enqueue(kind, params, after=after)
    assert n_jobs(store) == before
    return str(err.value)


def template_hash(name: str) -> str:
    t = TEMPLATES[name]
    return content_hash(t.name, t.version, t.body())


def chain(queue: Queue) -> tuple[int, int, int]:
    """extract -> score -> train (adapter `ad`), each after the one before: (extract, score, train) ids."""
    extract, _ = queue.enqueue("extract-rationales", {"problems": "gsm", "model": "tiny"})
    score, _ = queue.enqueue("score-rationales", {"extract_job": extract, "model": "tiny"}, after=[extract])
    train, _ = queue.enqueue("train-rationalyst", {"score_job": score, "model": "tiny", "adapter_name": "ad"},
                             after=[score])
    return extract, score, train


# --- names checked at enqueue ------------------------------------------------------------------------


def test_an_unknown_dataset_is_refused_naming_the_parameter(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    sentence = refused(db, "solve", {"problems": "nope", "model": "tiny"})
    assert sentence == ("parameter 'problems' of solve names dataset 'nope', which does not exist; import it with "
                        "`rplat import problems FILE --dataset nope`.")


def test_a_dataset_of_the_wrong_kind_is_refused(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    sentence = refused(db, "prefilter", {"documents": "docs", "reference": ["gsm", "docs"]})
    assert "parameter 'reference' of prefilter names dataset 'docs', which holds documents, not problems" in sentence


def test_an_unknown_model_is_refused(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    sentence = refused(db, "solve", {"problems": "gsm", "model": "nope"})
    assert sentence.startswith("parameter 'model' of solve names model 'nope', which is not registered")
    assert "rplat models add" in sentence


def test_an_unknown_job_and_a_job_of_another_kind_are_refused(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    assert "names job 999, which does not exist" in refused(db, "evaluate", {"solve_job": 999})
    extract, _, _ = chain(Queue(db.engine()))
    sentence = refused(db, "evaluate", {"solve_job": extract}, after=(extract,))
    assert f"names job {extract} of kind 'extract-rationales', not a solve job" in sentence


def test_a_job_named_before_it_succeeded_must_be_a_parent(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    queue = Queue(db.engine())
    solve, _ = queue.enqueue("solve", {"problems": "gsm", "model": "tiny"})
    assert f"which is still queued; add --after {solve}" in refused(db, "evaluate", {"solve_job": solve})
    assert queue.enqueue("evaluate", {"solve_job": solve}, after=[solve])[1]
    with transaction(db.engine()) as s:
        s.execute(update(Job).where(Job.id == solve).values(status="failed"))
    assert f"which failed; retry it with `rplat jobs retry {solve}`" in refused(
        db, "evaluate", {"solve_job": solve}, after=())


def test_a_model_a_parent_training_job_registers_is_allowed(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    queue = Queue(db.engine())
    _, score, train = chain(queue)
    guided = {"problems": "gsm", "model": "tiny", "method": "rationalyst-explicit", "rationalyst": "ad"}
    job, created = queue.enqueue("solve", guided, after=[train])
    assert created
    # a grandparent counts too: it must have succeeded before this job runs
    evaluate, _ = queue.enqueue("evaluate", {"solve_job": job}, after=[job])
    later, created = queue.enqueue("solve", {**guided, "seed": 1}, after=[evaluate])
    assert created and later not in (job, evaluate)


def test_a_model_no_parent_registers_is_refused_exactly(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    queue = Queue(db.engine())
    _, score, train = chain(queue)
    guided = {"problems": "gsm", "model": "tiny", "method": "rationalyst-explicit"}
    assert "names model 'ad', which is not registered" in refused(db, "solve", {**guided, "rationalyst": "ad"})
    # the score job is a parent but registers no model; the train job registers `ad`, not `other`
    assert "model 'ad'" in refused(db, "solve", {**guided, "rationalyst": "ad"}, after=(score,))
    assert "model 'other'" in refused(db, "solve", {**guided, "rationalyst": "other"}, after=(train,))


def test_without_adapter_name_the_default_name_of_the_parent_is_allowed(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    queue = Queue(db.engine())
    _, score, _ = chain(queue)
    train, _ = queue.enqueue("train-rationalyst", {"score_job": score, "model": "tiny"}, after=[score])
    guided = {"problems": "gsm", "model": "tiny", "method": "rationalyst-explicit"}
    queue.enqueue("solve", {**guided, "rationalyst": f"rationalyst-job{train}"}, after=[train])
    other = f"rationalyst-job{train + 1}"
    assert f"model {other!r}" in refused(db, "solve", {**guided, "rationalyst": other}, after=(train,))


def test_bundled_models_are_allowed_before_their_first_use_registers_them(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    job, _ = Queue(db.engine()).enqueue("prefilter", {"documents": "docs", "reference": ["gsm"]})
    with transaction(db.engine()) as s:
        assert s.scalar(select(Model.id).where(Model.name == BUNDLED_EMBEDDER)) is None
        assert s.get(Job, job).model_id is None  # type: ignore[union-attr]


def test_a_pipeline_with_an_unknown_dataset_queues_nothing(db: Store, tmp_path: Path) -> None:
    from rplat.pipelines import RationalystPipeline

    seed(db, tmp_path)
    before = n_jobs(db)
    with pytest.raises(UserError, match="parameter 'problems' of solve names dataset 'nope'"):
        RationalystPipeline(documents="docs", problems="gsm", test="nope", model="tiny").enqueue(Queue(db.engine()))
    assert n_jobs(db) == before


def test_through_the_cli_a_bad_name_is_one_line_exit_2(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    before = n_jobs(db)
    proc = db.rplat("enqueue", "solve", "--param", "problems=nope", "--param", "model=nope")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [  # the first bad field in the kind's field order
        "error: parameter 'model' of solve names model 'nope', which is not registered (nor registered by a job it "
        "runs --after); register it with `rplat models add` (see `rplat models ls`)."]
    assert n_jobs(db) == before


# --- lineage written at enqueue and at start -----------------------------------------------------------


def test_enqueue_writes_the_model_and_the_main_prompt_template(db: Store, tmp_path: Path) -> None:
    tiny_id = seed(db, tmp_path)
    queue = Queue(db.engine())
    solve, _ = queue.enqueue("solve", {"problems": "gsm", "model": "tiny"})
    insert_mode, _ = queue.enqueue("extract-rationales", {"problems": "gsm", "model": "tiny", "mode": "insert"})
    evaluate, _ = queue.enqueue("evaluate", {"solve_job": solve}, after=[solve])
    with transaction(db.engine()) as s:
        rows = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([solve, insert_mode, evaluate])))}
        hashes = dict(s.execute(select(PromptTemplate.id, PromptTemplate.content_hash)).all())
    assert {j.model_id for j in rows.values()} == {tiny_id}  # evaluate: the model of the solve job it checks
    assert hashes[rows[solve].prompt_template_id] == template_hash("agent-gsm8k")
    assert hashes[rows[insert_mode].prompt_template_id] == template_hash("extract-insert")
    assert rows[evaluate].prompt_template_id is None


def test_a_model_registered_by_a_parent_is_recorded_when_the_job_starts(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    queue = Queue(db.engine())
    _, _, train = chain(queue)
    job, _ = queue.enqueue("solve", {"problems": "gsm", "model": "ad"}, after=[train])
    with transaction(db.engine()) as s:
        assert s.get(Job, job).model_id is None  # type: ignore[union-attr]
        # what the parents did: succeeded, and the training job registered `ad`
        s.execute(update(Job).where(Job.id < job).values(status="succeeded"))
        ad = register_model(s, "ad", "base", save_tiny(tmp_path / "ad", seed=1), job_id=train).id
    claimed = queue.claim("test-runner", ["solve"], 30)
    assert claimed is not None and claimed.id == job
    queue.resolve_model(claimed)
    with transaction(db.engine()) as s:
        assert s.get(Job, job).model_id == ad  # type: ignore[union-attr]


# --- rplat explain ------------------------------------------------------------------------------------


def test_explain_a_document_reaches_the_import_job_and_the_file_hash(db: Store, tmp_path: Path) -> None:
    seed(db, tmp_path)
    tree = json.loads(db.rplat("explain", "documents", "1", "--json", check=True).stdout)
    assert tree["table"] == "documents" and tree["row"]["text"] == "Tom had 5 apples. He ate 2."
    job = tree["job"]
    assert job["kind"] == "import-documents" and job["status"] == "succeeded"
    assert job["params"]["sha256"] == hashlib.sha256((tmp_path / "docs.jsonl").read_bytes()).hexdigest()
    assert tree["inputs"]["dataset_id"]["row"]["name"] == "docs"


def test_explain_refuses_an_unknown_table_and_an_unknown_id(db: Store) -> None:
    for args, expect in ((("explain", "rationale", "1"), "there is no table 'rationale' with lineage"),
                         (("explain", "rationales", "999"), "rationales has no row with id 999")):
        proc = db.rplat(*args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        (line,) = proc.stderr.splitlines()
        assert line.startswith(f"error: {expect}") and line.endswith("."), line


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pipeline_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[Store, dict[str, Any]]]:
    """The RATIONALYST pipeline on the tiny model (greedy and rationalyst-implicit), run to the end once per
    backend: (store, the pipeline's job ids)."""
    tmp_path = tmp_path_factory.mktemp(f"pipeline-{request.param}")
    for store in make_store(request.param, tmp_path, templates=request.getfixturevalue("_templates")):
        seed(store, tmp_path)
        overrides = tmp_path / "overrides.json"
        overrides.write_text(json.dumps({
            "prefilter": {"threshold": -1.0}, "extract-rationales": {"max_tokens": 6},
            "score-rationales": {"tau": -1e9},
            "train-rationalyst": {"batch_size": 1, "grad_accum": 1, "checkpoint_every": 1, "eval_fraction": 0.0},
            "solve": {"max_steps": 2, "step_tokens": 4, "rationale_tokens": 4, "n_fewshot": 1}}))
        ids = json.loads(store.rplat(
            "pipeline", "rationalyst", "--documents", "docs", "--benchmark", "gsm", "--model", "tiny",
            "--methods", "greedy,rationalyst-implicit", "--extract-mode", "insert", "--limit", "1",
            "--train-steps", "1", "--params-file", str(overrides), "--json", check=True).stdout)
        run = store.rplat("runner", "--once", "--lease-seconds", "30", timeout=1200)
        assert run.returncode == 0, run.stderr
        yield store, ids


def explain(store: Store, table: str) -> dict[str, Any]:
    """`rplat explain TABLE ID --json` for the first row of TABLE."""
    with store.engine().connect() as conn:
        row_id = conn.execute(select(func.min(Base.metadata.tables[table].c.id))).scalar_one()
    assert row_id is not None, f"the pipeline wrote no {table}"
    return json.loads(store.rplat("explain", table, str(row_id), "--json", check=True).stdout)


def facts(store: Store) -> tuple[str, dict[str, str]]:
    with transaction(store.engine()) as s:
        fingerprint = s.scalar(select(Model.fingerprint).where(Model.name == "tiny"))
        hashes = dict(s.execute(select(PromptTemplate.name, PromptTemplate.content_hash)).all())
    assert fingerprint is not None
    return fingerprint, hashes


def test_every_pipeline_job_records_its_model_and_the_timeline_shows_it(pipeline_run: tuple[Store, dict[str, Any]]
                                                                       ) -> None:
    store, ids = pipeline_run
    with transaction(store.engine()) as s:
        jobs = s.execute(select(Job.kind, Job.status, Model.name).join(Model, Model.id == Job.model_id, isouter=True)
                         .where(Job.kind.not_like("import-%"))).all()
    assert {status for _, status, _ in jobs} == {"succeeded"}
    # prefilter's model is the bundled embedder, registered by the job itself and recorded once it ran
    assert {(kind, model) for kind, _, model in jobs} == {
        ("prefilter", BUNDLED_EMBEDDER), ("extract-rationales", "tiny"), ("score-rationales", "tiny"),
        ("train-rationalyst", "tiny"), ("solve", "tiny"), ("evaluate", "tiny")}
    timeline = json.loads(store.rplat("sql", "SELECT kind, model FROM job_timeline WHERE kind NOT LIKE 'import-%'",
                                      "--json", check=True).stdout)
    assert all(r["model"] for r in timeline) and len(timeline) == len(jobs)


def test_explain_a_rationale_score_reaches_the_scorer_fingerprint_and_the_prompt_hash(
        pipeline_run: tuple[Store, dict[str, Any]]) -> None:
    store, ids = pipeline_run
    fingerprint, hashes = facts(store)
    tree = explain(store, "rationale_scores")
    job = tree["job"]
    assert (job["id"], job["kind"], job["experiment"]) == (ids["score"], "score-rationales", None)
    assert job["model"]["fingerprint"] == fingerprint
    assert job["prompt_template"]["content_hash"] == hashes["score-future"] == template_hash("score-future")
    assert job["prompt_template"]["text"] == TEMPLATES["score-future"].system
    assert [p["id"] for p in job["parents"]] == [ids["extract"]]
    # the rationale it scored, and the extraction that rationale came from, with its extractor prompt
    extraction = tree["inputs"]["rationale_id"]["inputs"]["extraction_id"]
    assert extraction["prompt_templates"]["prompt_template_id"]["content_hash"] == hashes["extract-insert"]


def test_explain_a_step_candidate_reaches_agent_and_rationalyst(pipeline_run: tuple[Store, dict[str, Any]]) -> None:
    store, ids = pipeline_run
    fingerprint, hashes = facts(store)
    tree = explain(store, "step_candidates")
    job = tree["job"]
    assert job["kind"] == "solve" and job["model"]["fingerprint"] == fingerprint
    assert job["prompt_template"]["content_hash"] == hashes["agent-gsm8k"]
    with transaction(store.engine()) as s:
        adapter = s.scalar(select(Model).where(Model.job_id == ids["train"]))
        assert adapter is not None
    if job["id"] == ids["solve"]["rationalyst-implicit"]:
        rationalyst = job["references"]["rationalyst"]["model"]
        assert (rationalyst["name"], rationalyst["fingerprint"], rationalyst["base"]) == (
            adapter.name, adapter.fingerprint, "tiny")
        assert rationalyst["made_by"]["id"] == ids["train"]
    assert tree["inputs"]["step_id"]["inputs"]["trajectory_id"]["table"] == "solve_trajectories"


def test_explain_a_prediction_reaches_the_solve_job_model_and_prompt(pipeline_run: tuple[Store, dict[str, Any]]
                                                                    ) -> None:
    store, ids = pipeline_run
    fingerprint, hashes = facts(store)
    tree = explain(store, "predictions")
    job = tree["job"]
    assert job["kind"] == "evaluate" and job["id"] in ids["evaluate"].values()
    assert job["model"]["fingerprint"] == fingerprint
    (solve,) = job["parents"]
    assert solve["kind"] == "solve" and solve["prompt_template"]["content_hash"] == hashes["agent-gsm8k"]
    assert job["references"]["solve_job"]["job"] == {"id": solve["id"], "kind": "solve", "status": "succeeded",
                                                     "repeated": True}


def test_explain_prints_a_tree_for_people(pipeline_run: tuple[Store, dict[str, Any]]) -> None:
    store, ids = pipeline_run
    fingerprint, hashes = facts(store)
    out = store.rplat("explain", "jobs", str(ids["evaluate"]["rationalyst-implicit"]), check=True).stdout
    lines = out.splitlines()
    assert lines[0] == f"job {ids['evaluate']['rationalyst-implicit']}: evaluate, succeeded"
    assert f"  model tiny (base, role agent) fingerprint {fingerprint}" in lines
    assert any(line.strip().startswith(f"prompt agent-gsm8k v1, content hash {hashes['agent-gsm8k']}")
               for line in lines)
    assert any(line.strip().startswith(f"after job {ids['train']}: train-rationalyst, succeeded") for line in lines)
