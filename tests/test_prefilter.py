"""The `prefilter` job (RATIONALYST A1) end to end, interrupted runner processes included, both stores.

Runners run in this process, except the interrupted ones, which need a process of their own (killed, or sent
SIGTERM): each runner start-up imports torch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rplat.models import Checkpoint, Document, Job, JobEvent, Model, PrefilterScore
from rplat.queue import Queue
from rplat.registry import BUNDLED_EMBEDDER, bundled_embedder_path, digest_dir
from rplat.runners.framework.runner import Runner, RunnerOptions

from stores import Store, make_store

MATH_DOCS = {
    "math-notebooks": "Sara buys 3 notebooks at $4 each and a pen for $2. She pays with a $20 bill. How much change "
                      "does she get? 3 * 4 + 2 = 14, so her change is 20 - 14 = 6 dollars.",
    "math-eggs": "A farmer has 48 eggs and packs them into cartons of 12. He sells each carton for $3. How much "
                 "money does he make? 48 / 12 = 4 cartons, 4 * 3 = 12 dollars.",
    "math-train": "A train travels 60 miles per hour for 3 hours and then 40 miles per hour for 2 hours. The "
                  "total distance is 60 * 3 + 40 * 2 = 260 miles.",
    "math-pages": "Mia reads 15 pages every day. After 6 days she has 30 pages left in her book. How many pages "
                  "does the book have? 15 * 6 + 30 = 120 pages.",
}
OTHER_DOCS = {
    "other-cathedral": "The cathedral's gothic spires were restored in the nineteenth century by a French architect "
                       "who admired medieval stonework.",
    "other-jazz": "Jazz emerged in New Orleans in the early twentieth century, blending blues, ragtime and brass "
                  "band traditions.",
    "other-rainforest": "The Amazon rainforest is home to thousands of species of birds, insects and flowering "
                        "plants found nowhere else.",
    "other-treaty": "The Treaty of Westphalia ended the Thirty Years' War and reshaped the political map of "
                    "central Europe.",
}
# Math-like, so close to the reference, but longer than the default max_chars (2000): never embedded, no score.
LONG_ID = "math-long"
LONG_DOC = " ".join([*MATH_DOCS.values()] * 4)
THRESHOLD = 0.3


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gsm_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 GSM8K-style problems with worked solutions, from reasoning-gym (the reference set)."""
    out = tmp_path_factory.mktemp("gsm") / "gsm_symbolic.jsonl"
    subprocess.run([sys.executable, "-m", "rplat.cli", "generate", "reasoning-gym", "gsm_symbolic", "--size", "20",
                    "--seed", "0", "--out", str(out)], check=True, capture_output=True, timeout=300)
    return out


def _import(db: Store, gsm_file: Path, docs: dict[str, str]) -> None:
    doc_file = _write_jsonl(db.home / "docs.jsonl", [{"id": k, "text": v} for k, v in docs.items()])
    db.rplat("import", "problems", str(gsm_file), "--dataset", "gsm", "--id-field", "id", check=True)
    db.rplat("import", "documents", str(doc_file), "--dataset", "docs", "--id-field", "id", check=True)


def _enqueue(db: Store, *extra: str) -> int:
    out = db.rplat("enqueue", "prefilter", "--param", "documents=docs", "--param", 'reference=["gsm"]',
                   *extra, "--json", check=True)
    return int(json.loads(out.stdout)["id"])


def _session(db: Store) -> Session:
    return Session(db.engine())


def _scores(db: Store, job_id: int) -> dict[str, PrefilterScore]:
    """The job's scores keyed by document external id (fails on a duplicate document)."""
    with _session(db) as s:
        rows = s.execute(select(Document.external_id, PrefilterScore)
                         .join(Document, Document.id == PrefilterScore.document_id)
                         .where(PrefilterScore.job_id == job_id)).all()
    by_doc = {ext: score for ext, score in rows}
    assert len(by_doc) == len(rows), "a document was scored twice for one job"
    return by_doc


def _count_scores(db: Store, job_id: int) -> int:
    with _session(db) as s:
        return s.scalar(select(func.count()).select_from(PrefilterScore).where(PrefilterScore.job_id == job_id)) or 0


def _log_messages(db: Store, job_id: int) -> list[str]:
    with _session(db) as s:
        return [m or "" for m in s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id,
                                                                          JobEvent.event == "log"))]


def _checkpoints(db: Store, job_id: int) -> list[tuple[int, int, str]]:
    with _session(db) as s:
        return [(c.id, c.step, c.sha256) for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))]


def _run_in_process(db: Store, **options: Any) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(lease_seconds=30, poll_seconds=0.1, **options)).run()


# --- one finished job per backend, shared by the tests that only read it ---------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def prefiltered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                gsm_file: Path) -> Iterator[tuple[Store, int]]:
    """A store where a runner finished one prefilter job over MATH_DOCS, OTHER_DOCS and LONG_DOC."""
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param)):
        _import(store, gsm_file, {**MATH_DOCS, **OTHER_DOCS, LONG_ID: LONG_DOC})
        job_id = _enqueue(store)
        _run_in_process(store, once=True)
        yield store, job_id


def test_prefilter_job_succeeds(prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    job = db.job(job_id)
    assert (job.status, job.attempts, job.error) == ("succeeded", 1, None)


def test_every_document_within_max_chars_gets_exactly_one_score_and_a_longer_one_none(
        prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    assert set(_scores(db, job_id)) == {*MATH_DOCS, *OTHER_DOCS}
    assert _count_scores(db, job_id) == len(MATH_DOCS) + len(OTHER_DOCS)


def test_scores_carry_the_job_and_the_fingerprinted_embedding_model(prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    with _session(db) as s:
        model = s.scalar(select(Model).where(Model.name == BUNDLED_EMBEDDER))
    assert model is not None
    assert (model.format, model.role) == ("embedding", "prefilter")
    assert model.fingerprint == digest_dir(bundled_embedder_path()).fingerprint
    assert {(sc.job_id, sc.embed_model_id) for sc in _scores(db, job_id).values()} == {(job_id, model.id)}


def test_math_like_documents_score_higher_than_unrelated_ones(prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    scores = _scores(db, job_id)
    lowest_math = min(scores[k].cosine for k in MATH_DOCS)
    highest_other = max(scores[k].cosine for k in OTHER_DOCS)
    assert lowest_math > highest_other
    assert lowest_math >= THRESHOLD > highest_other


def test_passed_iff_cosine_reaches_threshold_and_text_is_short_enough(prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    with _session(db) as s:
        n_chars = dict(s.execute(select(Document.external_id, Document.n_chars)).all())
    scores = _scores(db, job_id)
    for ext, sc in scores.items():
        assert sc.threshold == THRESHOLD
        assert sc.passed == (sc.cosine >= THRESHOLD and n_chars[ext] <= 2000), ext
    assert n_chars[LONG_ID] > 2000 and LONG_ID not in scores
    assert {k for k, sc in scores.items() if sc.passed} == set(MATH_DOCS)


def test_cosines_equal_the_pure_methods_applied_in_process(prefiltered: tuple[Store, int], gsm_file: Path) -> None:
    from rplat.llm.embeddings import encode, load_encoder
    from rplat.methods.prefilter import centroid, cosine_to, preprocess, reference_text

    db, job_id = prefiltered
    encoder = load_encoder(str(bundled_embedder_path()))
    refs = [json.loads(line) for line in gsm_file.read_text().splitlines()]
    center = centroid(encode(encoder, [preprocess(reference_text(r["question"], r["solution"])) for r in refs], 64))
    docs = {**MATH_DOCS, **OTHER_DOCS}
    expected = cosine_to(center, encode(encoder, [preprocess(t) for t in docs.values()], 64)).tolist()
    scores = _scores(db, job_id)
    assert [scores[k].cosine for k in docs] == pytest.approx(expected, abs=1e-5)


def test_job_result_summarises_the_rows(prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    scores = list(_scores(db, job_id).values())
    result = db.job(job_id).result
    assert result is not None
    assert result["scored"] == len(scores) == 8
    assert result["passed"] == sum(sc.passed for sc in scores) == len(MATH_DOCS)
    assert result["mean_cosine"] == pytest.approx(sum(sc.cosine for sc in scores) / len(scores), abs=1e-9)
    assert result["threshold"] == THRESHOLD
    assert (result["over_max_chars"], result["outside_subsets"]) == (1, 0)


def test_progress_counts_every_document_to_embed(prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    job = db.job(job_id)
    assert job.progress_done == job.progress_total == 8


def test_reference_centroid_is_saved_as_checkpoint_step_zero(prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    assert [step for _, step, _ in _checkpoints(db, job_id)] == [0]
    assert _log_messages(db, job_id) == ["reference centroid from 20 problems"]


def test_report_shows_counts_and_math_documents_closest(prefiltered: tuple[Store, int]) -> None:
    db, job_id = prefiltered
    report = json.loads(db.rplat("report", "prefilter", "--json", "--examples", "4", check=True).stdout)
    assert (report["job_id"], report["status"], report["scored"], report["passed"]) == (job_id, "succeeded", 8, 4)
    assert (report["threshold"], report["max_chars"]) == (THRESHOLD, 2000)
    assert (report["over_max_chars"], report["outside_subsets"]) == (1, 0)
    assert {d["external_id"] for d in report["farthest"]} == set(OTHER_DOCS)
    assert {d["external_id"] for d in report["closest"]} <= set(MATH_DOCS)
    q = report["cosine_quantiles"]
    assert q["min"] <= q["p25"] <= q["median"] <= q["p75"] <= q["max"]
    text = db.rplat("report", "prefilter", check=True).stdout
    assert text.splitlines()[0] == (f"prefilter job {job_id} (succeeded): 4 of 8 documents kept at cosine >= 0.3 "
                                    "(max 2000 chars)")
    assert text.splitlines()[1] == "not embedded: 1 documents over max_chars, 0 outside the chosen subsets"


def test_runners_registering_the_embedder_at_once_share_one_model_row(db: Store) -> None:
    from rplat.registry import ensure_bundled_embedder
    from rplat.store import transaction

    engine = db.engine()
    ids: list[int] = []
    errors: list[BaseException] = []

    def second_runner() -> None:
        try:
            with transaction(engine) as session:
                ids.append(ensure_bundled_embedder(session).id)
        except BaseException as exc:
            errors.append(exc)

    with transaction(engine) as session:
        ids.append(ensure_bundled_embedder(session).id)
        other = threading.Thread(target=second_runner)
        other.start()
        time.sleep(1)  # the second looks the model up (and misses it) before the first commits
    other.join(timeout=120)

    assert errors == []
    assert len(ids) == 2 and ids[0] == ids[1]
    with _session(db) as s:
        assert s.scalar(select(func.count()).select_from(Model)) == 1


# --- corpus scale: what is embedded, in which order, resuming ------------------------------------------

SUBSETS = ["ArXiv", "FreeLaw", "Pile-CC", None]


def _import_with_subsets(db: Store, gsm_file: Path, records: list[dict[str, Any]]) -> None:
    doc_file = _write_jsonl(db.home / "docs.jsonl", records)
    db.rplat("import", "problems", str(gsm_file), "--dataset", "gsm", "--id-field", "id", check=True)
    db.rplat("import", "documents", str(doc_file), "--dataset", "docs", "--id-field", "id", "--subset-field",
             "subset", check=True)


def test_only_documents_of_the_chosen_subsets_within_max_chars_are_embedded_up_to_the_limit(
        db: Store, gsm_file: Path) -> None:
    texts = list(_many_docs(16).values())
    records = [{"id": f"doc-{i:02d}", "subset": SUBSETS[i % 4], "text": text * (4 if i in (0, 5) else 1)}
               for i, text in enumerate(texts)]
    _import_with_subsets(db, gsm_file, records)
    job_id = _enqueue(db, "--param", 'subsets=["ArXiv", "FreeLaw"]', "--param", "max_chars=200",
                      "--param", "limit=5")
    _run_in_process(db, once=True)

    chosen = [r["id"] for r in records if r["subset"] in ("ArXiv", "FreeLaw") and len(r["text"]) <= 200]
    assert {r["id"] for r in records if len(r["text"]) > 200} == {"doc-00", "doc-05"}
    assert set(_scores(db, job_id)) == set(chosen[:5])
    result = db.job(job_id).result
    assert result is not None
    assert (result["scored"], result["over_max_chars"], result["outside_subsets"]) == (5, 2, 8)
    assert db.job(job_id).progress_total == 5


def test_texts_are_read_one_length_sorted_batch_at_a_time(db: Store, gsm_file: Path) -> None:
    from sqlalchemy import event

    docs = {k: " ".join([v] * (1 + i * 7 % 5)) for i, (k, v) in enumerate(_many_docs(22).items())}
    _import(db, gsm_file, docs)
    job_id = _enqueue(db, "--param", "batch_size=4", "--param", "max_chars=100000")
    batches: list[list[int]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().startswith("SELECT documents.id, documents.text"):
            # The statement's only parameters are the ids it reads (positional on SQLite, named on PostgreSQL).
            batches.append(list(parameters.values() if isinstance(parameters, dict) else parameters))

    engine = db.engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        _run_in_process(db, once=True)
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert db.job(job_id).status == "succeeded"
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 2]
    with _session(db) as s:
        length = dict(s.execute(select(Document.id, Document.n_chars)).tuples().all())
    read = [doc_id for batch in batches for doc_id in batch]
    assert sorted(read) == sorted(length)
    assert [(length[i], i) for i in read] == sorted((length[i], i) for i in read)
    assert read != sorted(read)  # import order is not length order: the job sorted them


def test_a_rerun_skips_the_documents_already_scored_and_says_so(db: Store, gsm_file: Path) -> None:
    from rplat.registry import ensure_bundled_embedder
    from rplat.store import transaction

    _import(db, gsm_file, {**MATH_DOCS, **OTHER_DOCS})
    job_id = _enqueue(db)
    already = ["math-eggs", "other-jazz", "other-treaty"]
    with transaction(db.engine()) as s:
        embedder = ensure_bundled_embedder(s).id
        ids = s.scalars(select(Document.id).where(Document.external_id.in_(already))).all()
        # A cosine no embedding gives: re-embedding any of these documents would overwrite it.
        s.add_all(PrefilterScore(job_id=job_id, document_id=i, embed_model_id=embedder, cosine=-2.0,
                                 threshold=THRESHOLD, passed=False) for i in ids)

    _run_in_process(db, once=True)

    scores = _scores(db, job_id)
    assert set(scores) == {*MATH_DOCS, *OTHER_DOCS}
    assert {k for k, sc in scores.items() if sc.cosine == -2.0} == set(already)
    assert all(-1.0 <= sc.cosine <= 1.0 for k, sc in scores.items() if k not in already)
    assert _log_messages(db, job_id) == ["reference centroid from 20 problems",
                                         "resumed: 3 of 8 documents already scored"]
    job = db.job(job_id)
    assert job.progress_done == job.progress_total == 8


# --- interruption and resumption -------------------------------------------------------------------

TEMPLATES_MATH = [
    "Ann buys {a} apples at {b} cents each and pays with {c} dollars. What change does she get back?",
    "A tank holds {a} liters and drains {b} liters per minute. After {c} minutes, how much water is left?",
    "Each of {a} boxes holds {b} pencils. {c} pencils are given away. How many pencils remain? {a} * {b} - {c}.",
]
TEMPLATES_OTHER = [
    "The museum in district {a} shows paintings from {b} artists of the baroque period and {c} sculptures.",
    "Route {a} crosses the mountains through a pass where {b} species of wildflowers bloom each spring.",
]


def _many_docs(n: int) -> dict[str, str]:
    templates = TEMPLATES_MATH + TEMPLATES_OTHER
    return {f"doc-{i:04d}": templates[i % len(templates)].format(a=i + 3, b=2 * i + 5, c=i % 17 + 1)
            for i in range(n)}


def _wait_for_scores(db: Store, job_id: int, runner: subprocess.Popen[str], minimum: int = 1) -> None:
    deadline = time.monotonic() + 240
    while _count_scores(db, job_id) < minimum:
        assert runner.poll() is None, "the runner exited before writing any score"
        assert time.monotonic() < deadline, "the runner wrote no score within 240 s"
        time.sleep(0.02)


N_MANY = 160
LEASE_SECONDS = 3


@pytest.mark.slow
def test_killed_runner_job_resumes_from_checkpoint_without_duplicates(db: Store, gsm_file: Path) -> None:
    _import(db, gsm_file, _many_docs(N_MANY))
    job_id = _enqueue(db, "--param", "batch_size=2")
    first = db.popen("runner", "--once", "--lease-seconds", str(LEASE_SECONDS), stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    try:
        _wait_for_scores(db, job_id, first)
    finally:
        first.kill()
        first.wait(timeout=30)
    written_before = _count_scores(db, job_id)
    assert 0 < written_before < N_MANY
    checkpoint_before = _checkpoints(db, job_id)
    assert [step for _, step, _ in checkpoint_before] == [0]
    # The same job again under another id, run without interruption, as the yardstick.
    baseline_id = _enqueue(db, "--param", "batch_size=2", "--no-dedupe")

    # Runs the baseline, then waits for the dead runner's lease to expire and reclaims the job.
    _run_in_process(db, until_done=True)

    job = db.job(job_id)
    assert (job.status, job.attempts) == ("succeeded", 2)
    assert job.progress_done == job.progress_total == N_MANY
    resumed, baseline = _scores(db, job_id), _scores(db, baseline_id)
    assert len(resumed) == _count_scores(db, job_id) == N_MANY
    assert _checkpoints(db, job_id) == checkpoint_before
    assert _log_messages(db, job_id) == ["reference centroid from 20 problems",
                                         f"resumed: {written_before} of {N_MANY} documents already scored"]
    assert {k for k, sc in resumed.items() if sc.passed} == {k for k, sc in baseline.items() if sc.passed}
    assert {k: sc.cosine for k, sc in resumed.items()} == pytest.approx(
        {k: sc.cosine for k, sc in baseline.items()}, abs=1e-5)
    assert job.result is not None and db.job(baseline_id).result is not None
    assert job.result["scored"] == db.job(baseline_id).result["scored"] == N_MANY
    assert job.result["passed"] == db.job(baseline_id).result["passed"]


@pytest.mark.slow
def test_sigterm_releases_the_job_and_the_next_runner_finishes_it(db: Store, gsm_file: Path) -> None:
    _import(db, gsm_file, _many_docs(N_MANY))
    job_id = _enqueue(db, "--param", "batch_size=2")
    first = db.popen("runner", "--once", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_scores(db, job_id, first)
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    released = db.job(job_id)
    assert (released.status, released.attempts) == ("queued", 0)
    written_before = _count_scores(db, job_id)
    assert 0 < written_before < N_MANY
    checkpoint_before = _checkpoints(db, job_id)

    _run_in_process(db, once=True)

    job = db.job(job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert len(_scores(db, job_id)) == _count_scores(db, job_id) == N_MANY
    assert _checkpoints(db, job_id) == checkpoint_before
    assert _log_messages(db, job_id) == ["reference centroid from 20 problems",
                                         f"resumed: {written_before} of {N_MANY} documents already scored"]
    assert job.result is not None and job.result["scored"] == N_MANY


# --- bad input -------------------------------------------------------------------------------------

UNKNOWN_DATASETS = [
    ({"documents": "nope", "reference": ["gsm"]},
     "parameter 'documents' of prefilter names dataset 'nope', which does not exist"),
    ({"documents": "docs", "reference": ["gsm", "nope"]},
     "parameter 'reference' of prefilter names dataset 'nope', which does not exist"),
    ({"documents": "gsm", "reference": ["gsm"]},
     "parameter 'documents' of prefilter names dataset 'gsm', which holds problems, not documents"),
]


def _write_params(db: Store, params: dict[str, Any]) -> Path:
    path = db.home / f"params-{len(list(db.home.glob('params-*')))}.json"
    path.write_text(json.dumps(params), encoding="utf-8")
    return path


def test_jobs_naming_unknown_datasets_are_refused_at_enqueue_with_one_sentence(db: Store, gsm_file: Path) -> None:
    _import(db, gsm_file, MATH_DOCS)
    with _session(db) as s:
        before = s.scalar(select(func.count()).select_from(Job))
    for params, expected in UNKNOWN_DATASETS:
        out = db.rplat("enqueue", "prefilter", "--params-file", str(_write_params(db, params)), "--json")
        assert out.returncode == 2 and out.stdout == "", out.stderr
        (line,) = out.stderr.splitlines()
        assert line.startswith(f"error: {expected}") and line.endswith("."), line
    with _session(db) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == before


@pytest.mark.parametrize("bad", [{"threshold": 1.5}, {"threshold": "high"}, {"batch_size": 0}, {"max_chars": -1},
                                 {"reference": []}, {"embed_model": [1]}, {"shreshold": 0.3},
                                 {"subsets": []}, {"subsets": "ArXiv"}, {"limit": 0}])
def test_invalid_prefilter_params_are_rejected_with_one_sentence(bad: dict[str, Any]) -> None:
    from rplat.errors import UserError
    from rplat.kinds import validate_params

    name = next(iter(bad))
    with pytest.raises(UserError, match=f"^bad parameter for job kind 'prefilter': '{name}' ") as caught:
        validate_params("prefilter", {"documents": "docs", "reference": ["gsm"], **bad})
    assert "\n" not in str(caught.value)


def test_enqueue_with_an_invalid_param_exits_2_and_writes_nothing(db: Store) -> None:
    proc = db.rplat("enqueue", "prefilter", "--param", "documents=docs", "--param", 'reference=["gsm"]',
                    "--param", "threshold=1.5")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: bad parameter for job kind 'prefilter': 'threshold' ")
    assert proc.stderr.count("\n") == 1
    with _session(db) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_report_without_a_prefilter_job_says_how_to_enqueue_one(db: Store) -> None:
    proc = db.rplat("report", "prefilter")
    assert proc.returncode == 2
    assert proc.stderr == "error: there is no prefilter job yet; enqueue one with `rplat enqueue prefilter ...`.\n"
