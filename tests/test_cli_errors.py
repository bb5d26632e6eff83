"""Bad input through the CLI: one `error:` sentence, exit 2, no traceback, store unchanged.

The cases run the CLI's entry point (`rplat.cli.main`, what `rplat` and `python -m rplat.cli` call) in this process,
its output captured: the same code path and output, without ~110 interpreter start-ups. The schema checks below, and
tests/test_cli.py, run the real `rplat` process."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import inspect, text

from rplat.imports.datasets import FieldMap, import_file
from rplat.store import transaction

import factories as make
from stores import Store

DOCS = FieldMap("documents", None, {"text": "text"}, {}, {"source": None, "split": None})
PROBLEMS = FieldMap("problems", None, {"question": "question"}, {"answer": "answer"})


def snapshot(store: Store) -> dict[str, list[str]]:
    """Every row of every table (sorted renderings) and, on SQLite, the bytes of the database file and its WAL
    after a checkpoint (hashed; an empty WAL is no WAL): equal snapshots mean the database did not change."""
    engine = store.engine()
    with engine.connect() as conn:
        rows = {name: sorted(repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{name}"')))
                for name in sorted(inspect(conn).get_table_names())}
    if store.backend == "sqlite":
        # What is committed moves from the WAL into the file first: any process's last connection may do that at
        # any time, which changes the file's bytes and not its content.
        raw = engine.raw_connection()  # outside a transaction: the engine begins each one with BEGIN IMMEDIATE
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
        database = Path(engine.url.database or "")
        for path in (database, database.with_name(database.name + "-wal")):
            rows[f"file {path.name}"] = [hashlib.sha256(path.read_bytes() if path.exists() else b"").hexdigest()]
    return rows


def assert_one_clear_sentence(proc_stdout: str, proc_stderr: str, returncode: int, expect: list[str]) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line `error: <one sentence>.` containing `expect`."""
    output = proc_stdout + proc_stderr
    assert "Traceback" not in output, output
    assert returncode == 2, output
    assert proc_stdout == "", output
    lines = proc_stderr.splitlines()
    assert len(lines) == 1, output
    line = lines[0]
    assert line.startswith("error: "), line
    assert line.endswith("."), line
    # one sentence: no sentence break outside quotes, code spans and parentheses ("e.g." is not one)
    bare = line.replace("e.g.", "eg")
    bare = re.sub(r"'[^']*'|\"[^\"]*\"|`[^`]*`", "Q", bare)
    while re.search(r"\([^()]*\)", bare):
        bare = re.sub(r"\([^()]*\)", "P", bare)
    assert not re.search(r"[.?!] ", bare), f"more than one sentence: {line}"
    for fragment in expect:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


# --- setups: files in the store's home (the CLI's working directory) and rows made before the snapshot ---


def write(store: Store, name: str, content: str | bytes) -> Path:
    path = store.home / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def jsonl(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def five_docs_line3_broken(store: Store) -> None:
    write(store, "bad.jsonl", jsonl({"text": "one"}, {"text": "two"}) + '{"text": "three"\n'
          + jsonl({"text": "four"}, {"text": "five"}))


def bad_utf8(store: Store) -> None:
    write(store, "latin1.jsonl", jsonl({"text": "fine"}).encode() + '{"text": "café"}\n'.encode("latin-1"))


def missing_text(store: Store) -> None:
    write(store, "docs.jsonl", jsonl({"text": "one"}, {"body": "two"}, {"text": "three"}))


def empty_text(store: Store) -> None:
    write(store, "docs.jsonl", jsonl({"text": "one"}, {"text": "two"}, {"text": "three"}, {"text": "  \t"}))


def array_line(store: Store) -> None:
    write(store, "docs.jsonl", jsonl({"text": "one"}, ["two", "three"]))


def duplicate_ids(store: Store) -> None:
    write(store, "docs.jsonl", jsonl({"id": "a", "text": "one"}, {"id": "b", "text": "two"},
                                     {"id": "c", "text": "three"}, {"id": "a", "text": "four"}))


def id_is_object(store: Store) -> None:
    write(store, "docs.jsonl", jsonl({"id": {"n": 1}, "text": "one"}))


def nul_in_text(store: Store) -> None:
    write(store, "docs.jsonl", jsonl({"text": "one"}, {"text": "two\u0000three"}))


def unpaired_surrogate(store: Store) -> None:
    write(store, "docs.jsonl", '{"text": "one"}\n{"text": "bad \\ud800 escape"}\n')


def subject_too_long(store: Store) -> None:
    write(store, "problems.jsonl", jsonl({"question": "2+2?", "subject": "s" * 100}))


def empty_file(store: Store) -> None:
    write(store, "empty.jsonl", "\n\n")


def csv_file(store: Store) -> None:
    write(store, "docs.csv", "text\none\n")


def corrupt_parquet(store: Store) -> None:
    write(store, "docs.parquet", b"PAR1 this is not really parquet")


def parquet_without_question(store: Store) -> None:
    pq.write_table(pa.table({"prompt": ["2+2?", "3+3?"]}), store.home / "problems.parquet")


def two_docs(store: Store) -> None:
    write(store, "docs.jsonl", jsonl({"text": "one"}, {"text": "two"}))


def existing_dataset(store: Store) -> dict[str, str]:
    path = write(store, "docs.jsonl", jsonl({"text": "one"}, {"text": "two"}))
    summary = import_file(store.engine(), path, "corpus", DOCS)
    return {"job": str(summary["job_id"])}


def params_not_json(store: Store) -> None:
    write(store, "params.json", '{"sleep_seconds": 0,\n "tag": }\n')


def params_not_object(store: Store) -> None:
    write(store, "params.json", "[1, 2]\n")


def tags_line2_not_json(store: Store) -> None:
    write(store, "tags.jsonl", jsonl({"tag": "a"}) + '{"tag": \n' + jsonl({"tag": "c"}))


def tags_blank(store: Store) -> None:
    write(store, "tags.jsonl", "\n\n")


def two_tags(store: Store) -> None:
    write(store, "tags.jsonl", jsonl({"tag": "a"}, {"tag": "b"}))


def existing_experiment(store: Store) -> None:
    with transaction(store.engine()) as session:
        make.experiment(session, "baseline")


def tiny_and_gsm(store: Store) -> None:
    """A registered model `tiny` and a problems dataset `gsm`."""
    from tiny_lm import register_tiny

    with transaction(store.engine()) as session:
        register_tiny(session, store.home)
    path = write(store, "gsm.jsonl", jsonl({"question": "What is 2+3?", "answer": "5"}))
    import_file(store.engine(), path, "gsm", PROBLEMS)


def queued_solve(store: Store) -> dict[str, str]:
    from rplat.queue import Queue

    tiny_and_gsm(store)
    job_id, _ = Queue(store.engine()).enqueue("solve", {"problems": "gsm", "model": "tiny"})
    return {"job": str(job_id)}


def adapter_names_jsonl(store: Store) -> None:
    write(store, "a.jsonl", jsonl({"adapter_name": "fine-one"}, {"adapter_name": "a/b"}))


def tdg_experiment(store: Store) -> None:
    """An experiment holding a trained NAT job with training metrics, and no RATIONALYST job."""
    from rplat.models import TrainingMetric

    with transaction(store.engine()) as session:
        job = make.job(session, "train-nat", {}, experiment=make.experiment(session, "tdg"))
        session.add_all([TrainingMetric(job_id=job.id, step=step, loss=1.0, lr=1e-4) for step in (1, 2)])


def negative_chain_only(store: Store) -> None:
    """A problem with one chain, a negative: nothing to pair it with."""
    with transaction(store.engine()) as session:
        problem = make.problems(session, make.dataset(session, "train", make.job(session, "import-problems")),
                                [{"external_id": "q1", "question": "What is 1+1?", "answer": "2"}])[0]
        make.chain(session, problem, "teacher", "1 + 1 = 3.", "neg")


def taken_directory(store: Store) -> None:
    (store.home / "taken").mkdir()
    write(store, "taken/mine.txt", "mine")


def record_without_chains(store: Store) -> None:
    released = {"question": "Problem:\nWhat is 1+1?", "answer": "Solution:\n$\\boxed{2}$", "level": "Level 1",
                "type": "Algebra"}
    write(store, "chains.jsonl", jsonl({**released, "generated_answer": ["Solution:\n$\\boxed{2}$"]},
                                       {**released, "generated_answer": []}))


def flat_chain_without_text(store: Store) -> None:
    write(store, "c.jsonl", jsonl({"problem_id": "q1", "sample_idx": 0}))


# issue 17: semantic checks (the setups of that section's cases)
def params_file_with_infinity(store: Store) -> None:
    write(store, "params.json", '{"sleep_seconds": Infinity}\n')


def params_jsonl_with_nan(store: Store) -> None:
    write(store, "tags.jsonl", '{"tag": "a"}\n{"burn_seconds": NaN}\n')


def asc_sample_of_one(store: Store) -> None:
    tiny_and_gsm(store)
    write(store, "pipeline.json", json.dumps({"asc-sample": {"n_samples": 1}}))


def gsm_chains_and_models(store: Store) -> dict[str, str]:
    """tiny_and_gsm, chains of teacher `t` on gsm, a LoRA `kd-lora` (role kd), a greedy sample job of tiny and two
    sampled ones, each with its score-samples job; returns the jobs' ids."""
    from sqlalchemy import select

    from rplat.models import Dataset, Problem

    tiny_and_gsm(store)
    with transaction(store.engine()) as session:
        problem = session.scalar(select(Problem).join(Dataset, Dataset.id == Problem.dataset_id)
                                 .where(Dataset.name == "gsm"))
        make.chain(session, problem, "t", "2 + 3 = 5, so \\boxed{5}.", "pos")
        make.model(session, "kd-lora", "lora", role="kd")
        greedy = make.job(session, "sample", {"problems": "gsm", "model": "tiny", "n_samples": 1, "temperature": 0})
        ids = {"greedy": str(greedy.id)}
        for key in ("sample", "other"):
            sample = make.job(session, "sample", {"problems": "gsm", "model": "tiny", "n_samples": 4,
                                                  "temperature": 0.7})
            ids[key] = str(sample.id)
            ids[f"score_{key}"] = str(make.job(session, "score-samples", {"sample_job": sample.id,
                                                                          "ranker": "r"}).id)
        return ids


def reviewable(store: Store) -> dict[str, str]:
    """A problem with a chain, a review of the chain and a later one; review files in the home. Returns the ids."""
    from rplat import reviews

    with transaction(store.engine()) as session:
        dataset = make.dataset(session, "p", make.job(session, "import-problems"))
        (problem,) = make.problems(session, dataset, [{"external_id": "q", "question": "1 + 1?", "answer": "2"}])
        chain = make.chain(session, problem, "t", "1 + 1 = 2, so \\boxed{2}.", "pos")
        first = reviews.add_in(session, "chain", chain.id, "neg", reviewer="ada", reason="r1").review
        reviews.add_in(session, "chain", chain.id, "pos", reviewer="bob", reason="r2")
        assert first is not None
        ids = {"chain": str(chain.id), "problem": str(problem.id), "first": str(first.id)}
    write(store, "bad-label.jsonl", jsonl({"chain": chain.id, "label": "neg", "reason": "r"},
                                          {"chain": chain.id, "label": "maybe", "reason": "r"}))
    write(store, "unknown-chain.jsonl", jsonl({"chain": 999999, "label": "neg", "reason": "r"}))
    write(store, "no-reason.jsonl", jsonl({"problem": problem.id, "gold": "3"}))
    write(store, "two-targets.jsonl", jsonl({"problem": problem.id, "chain": chain.id, "gold": "3", "reason": "r"}))
    write(store, "not-json.jsonl", "{chain: 1}\n")
    write(store, "empty.jsonl", "\n")
    return ids


def tmp_file(store: Store) -> None:
    """A file in DuckDB's default temporary directory under the working directory, as a text and a CSV file."""
    (store.home / ".tmp").mkdir()
    write(store, ".tmp/s.txt", "a secret\n")
    write(store, ".tmp/s.csv", "secret\nvalue\n")


def unknown_revision(store: Store) -> None:
    with store.engine().begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'feedfacecafe'"))


# MATH format (issue 18): `import problems --layout math`
MATH_GOOD = {"problem": "Problem:\nWhat is $1+1$?", "solution": "$1+1=\\boxed{2}$", "type": "Algebra",
             "level": "Level 1"}


def math_without_box(store: Store) -> None:
    write(store, "math.jsonl", jsonl(MATH_GOOD, {**MATH_GOOD, "problem": "What is 2+2?", "solution": "It is 4."}))


def math_without_solution(store: Store) -> None:
    write(store, "math.jsonl", jsonl({"problem": "What is 1+1?", "type": "Algebra"}))


def math_prefix_only(store: Store) -> None:
    write(store, "math.jsonl", jsonl(MATH_GOOD, {**MATH_GOOD, "problem": "Problem:\n  "}))


def math_file(store: Store) -> None:
    write(store, "math.jsonl", jsonl(MATH_GOOD))


# results card (issue 20): `rplat report card`
def experiment_waiting(store: Store) -> None:
    """An experiment whose only job is still queued."""
    with transaction(store.engine()) as session:
        make.job(session, "probe", experiment=make.experiment(session, "waiting"), status="queued")


def experiment_probed(store: Store) -> None:
    """An experiment whose only succeeded job is a probe: no number to show."""
    with transaction(store.engine()) as session:
        make.job(session, "probe", experiment=make.experiment(session, "probed"))


def card_files_taken(store: Store) -> None:
    write(store, "card_files", "a file where the card's images would go")


# named slices (issue 19): `rplat slice`
def a_sliced_run(store: Store) -> None:
    """One evaluated run with two predictions, and the slice `algebra` over it."""
    from rplat.models import Slice

    with transaction(store.engine()) as session:
        dataset = make.dataset(session, "math", make.job(session, "import-problems"))
        problems = make.problems(session, dataset, [
            {"external_id": "a", "question": "1 + 1?", "answer": "2", "subject": "Algebra"},
            {"external_id": "g", "question": "2 + 2?", "answer": "4", "subject": "Geometry"}])
        evaluate = make.job(session, "evaluate")
        for problem, credit in zip(problems, (1.0, 0.5), strict=True):
            make.prediction(session, evaluate, problem, None, "greedy", problem.answer, credit)
        session.add(Slice(name="algebra", predicate="subject = 'Algebra'", metric="accuracy", created_by="ada"))


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    expect: list[str]
    setup: Callable[[Store], dict[str, str] | None] | None = None
    url: str | None = None  # run the CLI against this RPLAT_DATABASE_URL instead of the store's


CASES = [
    # files: the sentence names the file and the line (Parquet: row), and nothing is imported
    Case("malformed-json-on-line-3-of-5", ("import", "documents", "bad.jsonl", "--dataset", "d"),
         ["bad.jsonl line 3 is not valid JSON", "fix or remove that line"], five_docs_line3_broken),
    Case("bad-utf8", ("import", "documents", "latin1.jsonl", "--dataset", "d"),
         ["latin1.jsonl line 2 is not valid UTF-8", "re-encode the file as UTF-8"], bad_utf8),
    Case("missing-required-field", ("import", "documents", "docs.jsonl", "--dataset", "d"),
         ["docs.jsonl line 2 has no field 'text'", "--text-field"], missing_text),
    Case("empty-required-field", ("import", "documents", "docs.jsonl", "--dataset", "d"),
         ["docs.jsonl line 4 field 'text' is empty"], empty_text),
    Case("line-is-a-json-array", ("import", "documents", "docs.jsonl", "--dataset", "d"),
         ["docs.jsonl line 2 is a JSON list, not an object"], array_line),
    Case("duplicate-ids", ("import", "documents", "docs.jsonl", "--dataset", "d", "--id-field", "id"),
         ["docs.jsonl line 4 repeats id 'a' first seen on line 1", "unique"], duplicate_ids),
    Case("id-field-is-an-object", ("import", "documents", "docs.jsonl", "--dataset", "d", "--id-field", "id"),
         ["docs.jsonl line 1 field 'id' is a JSON object, not text", "--id-field"], id_is_object),
    Case("nul-character-in-text", ("import", "documents", "docs.jsonl", "--dataset", "d"),
         ["docs.jsonl line 2 field 'text' contains a NUL character", "remove it"], nul_in_text),
    Case("unpaired-surrogate-escape", ("import", "documents", "docs.jsonl", "--dataset", "d"),
         ["docs.jsonl line 2 field 'text' contains an unpaired surrogate", "\\ud800"], unpaired_surrogate),
    Case("value-longer-than-its-column", ("import", "problems", "problems.jsonl", "--dataset", "p",
                                          "--subject-field", "subject"),
         ["problems.jsonl line 1 field 'subject' is 100 characters long", "at most 64"], subject_too_long),
    Case("file-without-records", ("import", "documents", "empty.jsonl", "--dataset", "d"),
         ["empty.jsonl holds no records"], empty_file),
    Case("nonexistent-file", ("import", "documents", "missing.jsonl", "--dataset", "d"),
         ["missing.jsonl does not exist"]),
    Case("unsupported-extension", ("import", "documents", "docs.csv", "--dataset", "d"),
         ["docs.csv has a suffix rplat cannot read", "use .jsonl"], csv_file),
    Case("corrupt-parquet", ("import", "documents", "docs.parquet", "--dataset", "d"),
         ["docs.parquet is not a readable Parquet file"], corrupt_parquet),
    Case("parquet-without-the-mapped-column", ("import", "problems", "problems.parquet", "--dataset", "p"),
         ["problems.parquet row 1 has no field 'question'", "--question-field"], parquet_without_question),
    Case("dataset-exists-without-append", ("import", "documents", "docs.jsonl", "--dataset", "corpus"),
         ["dataset 'corpus' already exists", "--append"], existing_dataset),
    Case("append-problems-to-a-documents-dataset",
         ("import", "problems", "docs.jsonl", "--dataset", "corpus", "--append", "--question-field", "text"),
         ["dataset 'corpus' holds documents, not problems"], existing_dataset),
    Case("dataset-name-too-long", ("import", "documents", "docs.jsonl", "--dataset", "n" * 201),
         ["--dataset is 201 characters long", "at most 200"], two_docs),
    # enqueue: kinds and parameters are checked before anything is written
    Case("unknown-job-kind", ("enqueue", "trian-nat"), ["unknown job kind 'trian-nat'", "known kinds:", "probe"]),
    Case("unknown-parameter", ("enqueue", "probe", "--param", "colour=red"),
         ["'colour' is not a parameter of this kind", "sleep_seconds"]),
    Case("wrong-parameter-type", ("enqueue", "probe", "--param", "sleep_seconds=soon"),
         ["job kind 'probe'", "'sleep_seconds'", "'soon'"]),
    Case("param-without-equals", ("enqueue", "probe", "--param", "sleep_seconds"),
         ["--param 'sleep_seconds' is not of the form key=value"]),
    Case("param-with-broken-json", ("enqueue", "probe", "--param", "tag=[1,"),
         ["--param tag looks like JSON but is not valid"]),
    Case("params-file-not-json", ("enqueue", "probe", "--params-file", "params.json"),
         ["--params-file params.json is not valid JSON", "line 2 column"], params_not_json),
    Case("params-file-not-an-object", ("enqueue", "probe", "--params-file", "params.json"),
         ["--params-file params.json must hold one JSON object"], params_not_object),
    Case("params-file-missing", ("enqueue", "probe", "--params-file", "nope.json"),
         ["--params-file nope.json does not exist"]),
    Case("unknown-experiment", ("enqueue", "probe", "--experiment", "ghost"),
         ["experiment 'ghost' does not exist", "rplat experiments add ghost"]),
    Case("after-a-nonexistent-job", ("enqueue", "probe", "--after", "999"),
         ["--after names job 999, which does not exist"]),
    Case("zero-max-attempts", ("enqueue", "probe", "--max-attempts", "0"),
         ["'--max-attempts'", "0 is not in the range 1<=x<=1000"]),
    # enqueue --params-jsonl: the file is read and every line checked before anything is written
    Case("params-jsonl-line-not-json", ("enqueue", "probe", "--params-jsonl", "tags.jsonl"),
         ["tags.jsonl line 2 is not valid JSON", "fix or remove that line"], tags_line2_not_json),
    Case("params-jsonl-missing", ("enqueue", "probe", "--params-jsonl", "nope.jsonl"),
         ["--params-jsonl nope.jsonl does not exist"]),
    Case("params-jsonl-without-lines", ("enqueue", "probe", "--params-jsonl", "tags.jsonl"),
         ["--params-jsonl tags.jsonl holds no lines of params"], tags_blank),
    Case("params-jsonl-with-one-dedupe-key", ("enqueue", "probe", "--params-jsonl", "tags.jsonl", "--dedupe-key", "k"),
         ["--dedupe-key makes every line one job", "--no-dedupe"], two_tags),
    Case("params-jsonl-of-an-unknown-kind", ("enqueue", "trian-nat", "--params-jsonl", "tags.jsonl"),
         ["error: unknown job kind 'trian-nat'"], two_tags),
    Case("params-jsonl-after-a-nonexistent-job", ("enqueue", "probe", "--params-jsonl", "tags.jsonl", "--after", "999"),
         ["error: --after names job 999, which does not exist"], two_tags),
    # enqueue: the datasets, models and jobs that params name exist (and are of the right kind) before it is queued
    Case("enqueue-names-an-unknown-dataset", ("enqueue", "solve", "--param", "problems=nope", "--param", "model=tiny"),
         ["parameter 'problems' of solve names dataset 'nope', which does not exist",
          "rplat import problems FILE --dataset nope"], tiny_and_gsm),
    Case("enqueue-names-a-dataset-of-another-kind",
         ("enqueue", "prefilter", "--param", "documents=gsm", "--param", 'reference=["gsm"]'),
         ["parameter 'documents' of prefilter names dataset 'gsm', which holds problems, not documents"], tiny_and_gsm),
    Case("enqueue-names-an-unknown-model", ("enqueue", "solve", "--param", "problems=gsm", "--param", "model=nope"),
         ["names model 'nope', which is not registered", "rplat models add"], tiny_and_gsm),
    Case("enqueue-names-an-unknown-job", ("enqueue", "evaluate", "--param", "solve_job=999"),
         ["parameter 'solve_job' of evaluate names job 999, which does not exist", "rplat jobs ls"]),
    Case("enqueue-names-a-job-of-another-kind", ("enqueue", "evaluate", "--param", "solve_job={job}"),
         ["names job {job} of kind 'import-documents', not a solve job"], existing_dataset),
    Case("enqueue-names-a-queued-job-it-does-not-wait-for", ("enqueue", "evaluate", "--param", "solve_job={job}"),
         ["names job {job}, which is still queued", "add --after {job}"], queued_solve),
    Case("pipeline-names-an-unknown-dataset",
         ("pipeline", "rationalyst", "--documents", "nope", "--problems", "gsm", "--model", "tiny"),
         ["parameter 'documents' of prefilter names dataset 'nope', which does not exist"], tiny_and_gsm),
    # issue 17: semantic checks
    Case("enqueue-a-learning-rate-of-inf", ("enqueue", "train-kd", "--param", "problems=gsm", "--param", "teacher=t",
                                            "--param", "lr=inf"),
         ["job kind 'train-kd'", "'lr' input should be a finite number (got 'inf')"]),
    Case("enqueue-a-temperature-of-inf", ("enqueue", "sample", "--param", "problems=gsm", "--param", "temperature=inf"),
         ["job kind 'sample'", "'temperature' input should be a finite number"]),
    Case("enqueue-a-temperature-of-nan", ("enqueue", "sample", "--param", "problems=gsm", "--param", "temperature=nan"),
         ["'temperature' input should be a finite number (got 'nan')"]),
    Case("params-file-with-an-infinity-literal", ("enqueue", "probe", "--params-file", "params.json"),
         ["'sleep_seconds' input should be a finite number (got inf)"], params_file_with_infinity),
    Case("params-jsonl-with-a-nan-literal", ("enqueue", "probe", "--params-jsonl", "tags.jsonl"),
         ["tags.jsonl line 2", "'burn_seconds' input should be a finite number (got nan)"], params_jsonl_with_nan),
    Case("pipeline-tdg-asc-sample-of-one-in-the-params-file",
         ("pipeline", "tdg", "--problems", "gsm", "--test", "gsm", "--teacher", "tiny", "--student", "tiny",
          "--params-file", "pipeline.json"),
         ["ASC votes over several sampled chains", "would draw n_samples=1", '"asc-sample"'], asc_sample_of_one),
    Case("pipeline-tdg-asc-samples-option-of-one",
         ("pipeline", "tdg", "--problems", "gsm", "--test", "gsm", "--teacher", "tiny", "--student", "tiny",
          "--asc-samples", "1"), ["would draw n_samples=1", "--asc-samples N > 1"], tiny_and_gsm),
    Case("pipeline-tdg-student-is-an-embedding-model",
         ("pipeline", "tdg", "--problems", "gsm", "--test", "gsm", "--teacher", "tiny", "--student",
          "all-minilm-l6-v2"),
         ["--student names model 'all-minilm-l6-v2', an embedding model", "not a causal LM (format base)",
          "rplat models ls"], tiny_and_gsm),
    Case("pipeline-tdg-teacher-is-an-embedding-model",
         ("pipeline", "tdg", "--problems", "gsm", "--test", "gsm", "--teacher", "all-minilm-l6-v2", "--student",
          "tiny"),
         ["--teacher names model 'all-minilm-l6-v2', an embedding model", "not a causal LM or an adapter on one"],
         tiny_and_gsm),
    Case("pipeline-rationalyst-model-is-a-lora",
         ("pipeline", "rationalyst", "--documents", "gsm", "--problems", "gsm", "--model", "kd-lora"),
         ["--model names model 'kd-lora', a LoRA adapter", "not a causal LM (format base)"], gsm_chains_and_models),
    Case("train-nat-with-an-embedding-model-as-its-negative-lora",
         ("enqueue", "train-nat", "--param", "problems=gsm", "--param", "teacher=t", "--param", "model=tiny",
          "--param", "neg_model=all-minilm-l6-v2"),
         ["parameter 'neg_model' of train-nat names model 'all-minilm-l6-v2', an embedding model",
          "not a LoRA adapter (format lora, role neg)", "the result of a train-neg job"], gsm_chains_and_models),
    Case("score-samples-with-a-lora-as-its-ranker",
         ("enqueue", "score-samples", "--param", "sample_job={sample}", "--param", "ranker=kd-lora"),
         ["parameter 'ranker' of score-samples names model 'kd-lora', a LoRA adapter", "not a ranker",
          "the result of a train-ranker job"], gsm_chains_and_models),
    Case("train-kd-on-a-chain-set-that-does-not-exist",
         ("enqueue", "train-kd", "--param", "problems=gsm", "--param", "teacher=nobody", "--param", "model=tiny"),
         ["parameter 'teacher' of train-kd names chain set 'nobody', which has no chains on dataset 'gsm'",
          "its teachers: t", "rplat import chains FILE --teacher nobody --dataset gsm"], gsm_chains_and_models),
    Case("aggregate-with-the-score-job-of-another-sample-job",
         ("enqueue", "aggregate", "--param", "sample_job={sample}", "--param", "score_samples_job={score_other}"),
         ["names score-samples job {score_other}, whose sample_job is {other}, not this job's sample_job {sample}",
          "rplat jobs ls --kind score-samples"], gsm_chains_and_models),
    Case("aggregate-over-a-greedy-sample-job", ("enqueue", "aggregate", "--param", "sample_job={greedy}"),
         ["names sample job {greedy}, whose n_samples is 1, not > 1", "name a sample job with n_samples > 1"],
         gsm_chains_and_models),
    # explain and serve
    Case("explain-an-unknown-table", ("explain", "rationale", "1"), ["there is no table 'rationale' with lineage",
                                                                     "rationales"]),
    Case("explain-an-unknown-row", ("explain", "rationale_scores", "999"),
         ["rationale_scores has no row with id 999"]),
    Case("explain-a-job-id-that-is-not-a-number", ("explain", "jobs", "latest"), ["'latest' is not a valid integer"]),
    Case("stop-a-model-without-a-server", ("serve", "stop", "tiny"),
         ["model 'tiny' has no running server recorded", "rplat serve ls"], tiny_and_gsm),
    # issue 17: input boundary
    # counts that memory depends on
    Case("compare-with-ten-billion-resamples",
         ("report", "compare", "50:sc", "50:asc-f3", "--resamples", "10000000000"),
         ["'--resamples'", "10000000000 is not in the range 1<=x<=1000000"]),
    Case("asc-report-with-a-million-repeats", ("report", "asc", "--experiment", "e", "--repeats", "1000000"),
         ["'--repeats'", "1<=x<=10000"]),
    Case("a-negative-seed", ("report", "asc", "--experiment", "e", "--seed", "-1"), ["'--seed'", "-1 is not in"]),
    Case("jobs-ls-limit-past-2-63", ("jobs", "ls", "--limit", "9223372036854775808"),
         ["'--limit'", "not in the range"]),
    Case("import-with-a-million-workers", ("import", "chains", "c.jsonl", "--teacher", "t", "--workers", "1000000"),
         ["'--workers'", "1<=x<=256"]),
    Case("generate-ten-billion-sums", ("generate", "sums", "--size", "10000000000", "--out", "s.jsonl"),
         ["'--size'", "1<=x<=10000000"]),
    # ids in the range both databases hold (SQLite's driver overflowed past 2^63)
    Case("explain-an-id-past-2-63", ("explain", "predictions", "9223372036854775808"),
         ["9223372036854775808 is not an id", "ids run from 1 to 2147483647", "rplat explain --help"]),
    Case("show-an-id-past-2-31", ("jobs", "show", "2147483648"), ["2147483648 is not an id"]),
    Case("enqueue-a-param-naming-a-job-past-2-63", ("enqueue", "evaluate", "--param", "solve_job=9223372036854775808"),
         []),
    Case("show-an-id-past-2-63", ("jobs", "show", "9223372036854775808"), ["'JOB_ID'", "is not an id"]),
    Case("cancel-an-id-past-2-63", ("jobs", "cancel", "9223372036854775808"), ["'JOB_ID'", "is not an id"]),
    Case("logs-of-job-zero", ("jobs", "logs", "0"), ["0 is not an id"]),
    Case("retry-a-negative-job", ("jobs", "retry", "--", "-5"), ["-5 is not an id"]),
    Case("prefilter-report-of-a-job-past-2-63", ("report", "prefilter", "--job", "9223372036854775808"),
         ["'--job'", "is not an id"]),
    Case("compare-a-run-past-2-63", ("report", "compare", "9223372036854775808:sc", "1"),
         ["run '9223372036854775808:sc'", "is not an id"]),
    Case("compare-a-run-that-is-not-a-job", ("report", "compare", "x:sc", "1"),
         ["run 'x:sc' is not JOB or JOB:METHOD"]),
    Case("enqueue-after-a-job-past-2-63", ("enqueue", "probe", "--after", "9223372036854775808"),
         ["'--after'", "is not an id"]),
    Case("enqueue-a-priority-past-32-bits", ("enqueue", "probe", "--priority", "2147483648"),
         ["'--priority'", "-2147483648<=x<=2147483647"]),
    Case("enqueue-a-priority-past-2-63", ("enqueue", "probe", "--priority", "9223372036854775808"), ["'--priority'"]),
    Case("enqueue-a-thousand-and-one-attempts", ("enqueue", "probe", "--max-attempts", "1001"),
         ["'--max-attempts'", "1<=x<=1000"]),
    Case("enqueue-a-dedupe-key-longer-than-its-column", ("enqueue", "probe", "--dedupe-key", "k" * 129),
         ["--dedupe-key is 129 characters long, at most 128"]),
    Case("model-role-longer-than-its-column", ("models", "add", "m", ".", "--role", "r" * 33),
         ["--role is 33 characters long, at most 32"]),
    Case("enqueue-for-100000-gpus", ("enqueue", "probe", "--gpus", "100000"), ["'--gpus'", "0<=x<=64"]),
    Case("enqueue-for-an-empty-host", ("enqueue", "probe", "--host", ""), ["--host is empty", "give a host name"]),
    Case("enqueue-for-a-blank-host", ("enqueue", "probe", "--host", "  "), ["--host is empty"]),
    Case("enqueue-for-a-host-with-a-space", ("enqueue", "probe", "--host", "gpu 01"),
         ["--host 'gpu 01' holds whitespace"]),
    Case("runner-on-an-empty-host", ("runner", "--once", "--host", ""), ["--host is empty"]),
    Case("runner-with-a-hundred-devices", ("runner", "--once", "--gpus", ",".join(map(str, range(100)))),
         ["--gpus lists 100 devices, at most 64"]),
    Case("dashboard-on-an-empty-host", ("dashboard", "--host", ""), ["--host is empty"]),
    Case("pipeline-for-100000-gpus", ("pipeline", "tdg", "--problems", "p", "--test", "t", "--teacher", "x",
                                      "--student", "s", "--gpus", "100000"), ["'--gpus'", "0<=x<=64"]),
    # floats finite
    Case("runner-lease-of-nan-seconds", ("runner", "--once", "--lease-seconds", "nan"),
         ["'--lease-seconds'", "'nan' is not a finite number"]),
    Case("runner-idle-for-ever", ("runner", "--once", "--max-idle", "inf"), ["'--max-idle'", "not a finite number"]),
    Case("asc-temperature-of-infinity", ("pipeline", "tdg", "--problems", "p", "--test", "t", "--teacher", "x",
                                         "--student", "s", "--asc-temperature", "inf"),
         ["'--asc-temperature'", "'inf' is not a finite number"]),
    Case("serve-timeout-of-infinity", ("serve", "start", "tiny", "--timeout", "inf"), ["'--timeout'", "finite"]),
    # bytes that are not UTF-8 (what Python makes of them in argv: lone surrogates)
    Case("sql-with-bytes-that-are-not-utf8", ("sql", "SELECT \udcff\udcfe"),
         ["argument 2 (b'SELECT \\xff\\xfe') is not UTF-8 text", "iconv"]),
    Case("export-where-with-bytes-that-are-not-utf8", ("export", "chains", "--where", "label = '\udcff'", "--out",
                                                       "x.jsonl"),
         ["argument 4 (after --where, ", "is not UTF-8 text"]),
    Case("teacher-with-bytes-that-are-not-utf8", ("import", "chains", "c.jsonl", "--teacher", "a\udcffb"),
         ["argument 5 (after --teacher, b'a\\xffb') is not UTF-8 text"]),
    Case("param-with-bytes-that-are-not-utf8", ("enqueue", "solve", "--param", "problems=\udcff"),
         ["argument 4 (after --param, b'problems=\\xff') is not UTF-8 text"]),
    Case("param-with-bytes-that-are-not-utf8-after-an-equals", ("enqueue", "solve", "--param=problems=\udcff"),
         ["the value of --param, "]),
    # names: one pattern, never a path
    Case("model-with-an-empty-name", ("models", "add", "", "."), ["NAME is empty", "letters, digits"]),
    Case("model-named-like-a-path", ("models", "add", "../../evil", "."),
         ["NAME '../../evil' is not a name rplat accepts", "without '..'", "e.g. 'evil'"]),
    Case("model-with-a-500-character-name", ("models", "add", "m" * 500, "."),
         ["NAME is 500 characters long, at most 200"]),
    Case("model-with-a-slash", ("models", "add", "org/model", "."), ["NAME 'org/model' is not a name"]),
    Case("model-name-starting-with-a-dot", ("models", "add", ".hidden", "."), ["NAME '.hidden' is not a name"]),
    Case("adapter-base-named-like-a-path", ("models", "add", "ok", ".", "--base", "../b"), ["--base '../b'"]),
    Case("serve-a-model-named-like-a-path", ("serve", "../../evil"), ["MODEL '../../evil' is not a name"]),
    Case("serve-stop-a-model-named-like-a-path", ("serve", "stop", "../../evil"), ["MODEL '../../evil'"]),
    Case("serve-an-adapter-named-like-a-path", ("serve", "start", "tiny", "--adapter", "a/../../b"),
         ["--adapter 'a/../../b' is not a name"]),
    Case("experiment-named-like-a-path", ("experiments", "add", "../exp"), ["NAME '../exp' is not a name"]),
    Case("dataset-named-like-a-path", ("import", "documents", "docs.jsonl", "--dataset", "../d"),
         ["--dataset '../d' is not a name"], two_docs),
    Case("dataset-with-a-space", ("import", "problems", "docs.jsonl", "--dataset", "my data"),
         ["--dataset 'my data' is not a name", "e.g. 'my-data'"], two_docs),
    Case("teacher-named-like-a-path", ("import", "chains", "c.jsonl", "--teacher", "../../t"),
         ["--teacher '../../t' is not a name"]),
    Case("relabel-a-teacher-named-like-a-path", ("chains", "relabel", "--teacher", "a/b", "--labeler", "hendrycks"),
         ["--teacher 'a/b' is not a name"]),
    Case("pipeline-student-named-like-a-path", ("pipeline", "tdg", "--problems", "p", "--test", "t", "--teacher",
                                                "x", "--student", "/etc/passwd"), ["--student '/etc/passwd'"]),
    Case("pipeline-experiment-with-a-newline", ("pipeline", "rationalyst", "--documents", "d", "--problems", "p",
                                                "--experiment", "a\nb"), ["--experiment 'a\\nb' is not a name"]),
    Case("pipeline-experiment-too-long-for-its-model-names",
         ("pipeline", "rationalyst", "--documents", "d", "--problems", "p", "--experiment", "e" * 195),
         ["the model name that --experiment makes is 207 characters long, at most 200"]),
    Case("tdg-pipeline-experiment-too-long-for-its-ranker-name",
         ("pipeline", "tdg", "--problems", "p", "--test", "t", "--teacher", "x", "--student", "s", "--experiment",
          "e" * 195), ["the model name that --experiment makes is 202 characters long"]),
    Case("report-experiment-named-like-a-path", ("report", "tdg", "--experiment", ".."), ["--experiment '..'"]),
    Case("jobs-of-an-experiment-named-like-a-path", ("jobs", "ls", "--experiment", "../x"), ["--experiment '../x'"]),
    Case("enqueue-an-adapter-named-like-a-path",
         ("enqueue", "train-kd", "--param", "adapter_name=../../x", "--param", "model=tiny", "--param",
          "teacher=gpt", "--param", "problems=gsm"),
         ["parameter 'adapter_name' of train-kd: '../../x' is not a name rplat accepts"]),
    Case("enqueue-jsonl-with-an-adapter-named-like-a-path",
         ("enqueue", "train-sft", "--param", "model=tiny", "--param", "problems=gsm", "--params-jsonl", "a.jsonl"),
         ["parameter 'adapter_name' of train-sft (a.jsonl line 2): 'a/b' is not a name"], adapter_names_jsonl),
    # jobs and experiments
    Case("show-a-nonexistent-job", ("jobs", "show", "999"), ["job 999 does not exist", "rplat jobs ls"]),
    Case("logs-of-a-nonexistent-job", ("jobs", "logs", "999"), ["job 999 does not exist"]),
    Case("cancel-a-nonexistent-job", ("jobs", "cancel", "999"), ["job 999 does not exist"]),
    Case("retry-a-nonexistent-job", ("jobs", "retry", "999"), ["job 999 does not exist"]),
    Case("retry-a-succeeded-job", ("jobs", "retry", "{job}"),
         ["job {job} is succeeded", "only failed or cancelled jobs can be retried"], existing_dataset),
    Case("cancel-a-succeeded-job", ("jobs", "cancel", "{job}"),
         ["job {job} is already succeeded", "only queued or running jobs can be cancelled"], existing_dataset),
    Case("list-jobs-of-an-unknown-experiment", ("jobs", "ls", "--experiment", "ghost"),
         ["experiment 'ghost' does not exist"]),
    Case("add-an-existing-experiment", ("experiments", "add", "baseline"),
         ["experiment 'baseline' already exists"], existing_experiment),
    Case("experiment-name-too-long", ("experiments", "add", "e" * 300), ["NAME is 300 characters long, at most 200"]),
    # the database itself
    Case("database-at-an-unknown-revision", ("jobs", "ls"),
         ["is at revision feedfacecafe, not at head", "rplat db upgrade"], unknown_revision),
    Case("unreachable-database-url", ("jobs", "ls"),
         ["cannot reach the database", "127.0.0.1:1", "check RPLAT_DATABASE_URL"],
         url="postgresql://postgres@127.0.0.1:1/rplat"),
    Case("unsupported-url-scheme", ("enqueue", "probe"), ["RPLAT_DATABASE_URL uses 'mysql'", "sqlite and postgresql"],
         url="mysql://root@127.0.0.1/rplat"),
    Case("not-a-database-url", ("jobs", "ls"), ["RPLAT_DATABASE_URL 'just-a-name' is not a database URL"],
         url="just-a-name"),
    Case("sqlite-file-where-no-directory-can-be-made", ("init",),
         ["cannot use /proc/rplat", "check the path and its permissions"], url="sqlite:////proc/rplat/rplat.db"),
    # issue 17: SQL surface (the SQL sees the store and nothing else; a time limit; --where is one expression)
    Case("sql-reads-a-file-in-dots-tmp", ("sql", "SELECT * FROM read_text('.tmp/s.txt')"),
         ["the function read_text reaches outside the read-only views"], tmp_file),
    Case("sql-reads-a-file-by-its-name", ("sql", "SELECT * FROM '.tmp/s.csv'"), ["'.tmp/s.csv' names a file"],
         tmp_file),
    Case("sql-globs-the-home", ("sql", "SELECT * FROM glob('*')"), ["the function glob reaches outside"]),
    Case("sql-reads-the-store-file", ("sql", "SELECT * FROM read_blob('rplat.db')"), ["the function read_blob"]),
    Case("sql-shows-the-settings", ("sql", "SELECT * FROM duckdb_settings()"), ["the function duckdb_settings"]),
    Case("sql-shows-the-databases", ("sql", "SELECT path FROM duckdb_databases()"), ["the function duckdb_databases"]),
    Case("sql-shows-the-secrets", ("sql", "SELECT * FROM duckdb_secrets()"), ["the function duckdb_secrets"]),
    Case("sql-reads-pg-authid", ("sql", "SELECT rolname, rolpassword FROM store.pg_catalog.pg_authid"),
         ["the query failed (Catalog Error", "pg_authid", "does not exist"]),
    Case("sql-reads-pg-shadow", ("sql", "SELECT usename, passwd FROM store.pg_catalog.pg_shadow"),
         ["the query failed (Catalog Error", "pg_shadow"]),
    Case("sql-reads-pg-hba-file-rules", ("sql", "SELECT * FROM store.pg_catalog.pg_hba_file_rules"),
         ["the query failed (Catalog Error", "pg_hba_file_rules"]),
    Case("sql-reads-pg-file-settings", ("sql", "SELECT * FROM store.pg_catalog.pg_file_settings"),
         ["the query failed (Catalog Error", "pg_file_settings"]),
    Case("sql-reads-pg-stat-activity", ("sql", "SELECT query FROM store.pg_catalog.pg_stat_activity"),
         ["the query failed (Catalog Error", "pg_stat_activity"]),
    Case("sql-lists-other-databases", ("sql", "SELECT datname FROM store.pg_catalog.pg_database"),
         ["the query failed (Catalog Error", "pg_database"]),
    Case("sql-reads-the-servers-information-schema", ("sql", "SELECT * FROM store.information_schema.tables"),
         ["the query failed (Catalog Error", "information_schema"]),
    Case("sql-runs-a-postgres-query", ("sql", "SELECT * FROM postgres_query('store', 'SELECT 1')"),
         ["the function postgres_query"]),
    Case("sql-past-its-time-limit", ("sql", "--timeout", "1", "SELECT count(*) FROM range(1000000000000::BIGINT) a"),
         ["the query ran past its time limit of 1 s and was stopped", "--timeout"]),
    Case("sql-timeout-zero", ("sql", "--timeout", "0", "SELECT 1"),
         ["--timeout must be a number of seconds above 0 and at most 86400"]),
    Case("sql-timeout-negative", ("sql", "--timeout", "-5", "SELECT 1"), ["--timeout must be", "not -5"]),
    Case("sql-timeout-nan", ("sql", "--timeout", "nan", "SELECT 1"), ["--timeout must be", "not nan"]),
    Case("sql-timeout-infinite", ("sql", "--timeout", "inf", "SELECT 1"), ["--timeout must be", "not inf"]),
    Case("sql-timeout-past-a-day", ("sql", "--timeout", "100000", "SELECT 1"), ["at most 86400 (a day)"]),
    Case("sql-timeout-not-a-number", ("sql", "--timeout", "soon", "SELECT 1"), ["'soon' is not a valid float"]),
    Case("export-where-unions-another-select",
         ("export", "chains", "--where", "false\n) UNION ALL BY NAME SELECT name AS question, path AS chain "
          "FROM store.models WHERE (true", "--out", "x.jsonl"),
         ["the --where predicate", "is refused", "not valid SQL"]),
    Case("export-where-closes-its-parenthesis", ("export", "chains", "--where", "false) OR (true", "--out", "x.jsonl"),
         ["the --where predicate 'false) OR (true' is refused", "not valid SQL"]),
    Case("export-where-adds-a-limit", ("export", "chains", "--where", "true LIMIT 1", "--out", "x.jsonl"),
         ["give one condition over the view's columns with nothing after it"]),
    Case("export-where-adds-a-union", ("export", "chains", "--where", "true UNION SELECT * FROM chains",
                                       "--out", "x.jsonl"), ["give one condition over the view's columns"]),
    Case("export-where-reads-a-file", ("export", "chains", "--where", "EXISTS (SELECT * FROM read_text('.tmp/s.txt'))",
                                       "--out", "x.jsonl"), ["is refused", "the function read_text"], tmp_file),
    Case("export-where-reads-pg-authid", ("export", "chains", "--where",
                                          "EXISTS (SELECT * FROM store.pg_catalog.pg_authid)", "--out", "x.jsonl"),
         ["does not run on the view chains", "pg_authid"]),
    Case("export-timeout-zero", ("export", "chains", "--timeout", "0", "--out", "x.jsonl"),
         ["--timeout must be a number of seconds above 0"]),
    # click's own usage errors, in the same one-line form
    Case("unknown-command", ("enqueu", "probe"),
         ["no such command 'enqueu' (did you mean 'enqueue'?)", "rplat --help"]),
    Case("unknown-option", ("jobs", "ls", "--statu", "queued"),
         ["no such option '--statu'", "did you mean '--status'", "rplat jobs ls --help"]),
    Case("job-id-not-a-number", ("jobs", "show", "latest"),
         ["'latest' is not a valid integer", "rplat jobs show --help"]),
    Case("missing-file-argument", ("import", "documents", "--dataset", "d"), ["missing argument 'FILE'"]),
    Case("missing-required-option", ("import", "documents", "docs.jsonl"), ["missing option '--dataset'"]),
    Case("status-not-a-choice", ("jobs", "ls", "--status", "done"), ["'done' is not one of"]),
    # issue 17: reports and chain imports
    Case("rationalyst-report-of-a-tdg-experiment", ("report", "rationalyst", "--experiment", "tdg"),
         ["experiment 'tdg' holds no RATIONALYST jobs", "rplat report tdg --experiment tdg"], tdg_experiment),
    Case("released-chains-record-without-chains", ("import", "chains", "chains.jsonl", "--teacher", "gpt"),
         ["chains.jsonl line 2 field 'generated_answer' is an empty array", "at least one chain"],
         record_without_chains),
    Case("job-id-in-a-param-past-the-id-range", ("enqueue", "evaluate", "--param", "solve_job=99999999999999999999"),
         ["parameter 'solve_job' of evaluate 99999999999999999999 is not an id", "ids run from 1 to 2147483647"]),
    Case("control-characters-in-a-quoted-value-stay-on-one-line",
         ("generate", "reasoning-gym", "\x0cx\ny", "--out", "g.jsonl"),
         ["reasoning-gym has no dataset '\\x0cx\\ny'"]),
    # issue 18: human review
    Case("review-label-not-a-choice", ("review", "chain", "{chain}", "--label", "maybe", "--reason", "r"),
         ["'maybe' is not one of 'pos', 'neg'"], reviewable),
    Case("review-of-a-chain-that-does-not-exist", ("review", "chain", "999999", "--label", "pos", "--reason", "r"),
         ["there is no chain with id 999999", "SELECT chain_id"], reviewable),
    Case("review-without-a-reason", ("review", "chain", "{chain}", "--label", "neg"),
         ["missing option '--reason'"], reviewable),
    Case("review-with-a-blank-reason", ("review", "chain", "{chain}", "--label", "neg", "--reason", "  "),
         ["--reason is empty"], reviewable),
    Case("review-with-a-blank-reviewer", ("review", "chain", "{chain}", "--label", "neg", "--reason", "r",
                                          "--reviewer", " "), ["--reviewer is empty"], reviewable),
    Case("review-chain-id-zero", ("review", "chain", "0", "--label", "neg", "--reason", "r"),
         ["ids run from 1 to 2147483647"], reviewable),
    Case("review-of-a-rationale-that-does-not-exist", ("review", "rationale", "999999", "--keep", "--reason", "r"),
         ["there is no rationale with id 999999"], reviewable),
    Case("review-rationale-without-keep-or-drop", ("review", "rationale", "1", "--reason", "r"),
         ["--keep or --drop"], reviewable),
    Case("review-gold-empty", ("review", "problem", "{problem}", "--gold", "", "--reason", "r"),
         ["--gold is empty"], reviewable),
    Case("review-gold-too-long", ("review", "problem", "{problem}", "--gold", "9" * 1001, "--reason", "r"),
         ["--gold is 1001 characters long, at most 1000"], reviewable),
    Case("review-gold-with-a-control-character", ("review", "problem", "{problem}", "--gold", "1\x012",
                                                  "--reason", "r"),
         ["a gold answer holds only printable characters"], reviewable),
    Case("undo-of-a-review-that-does-not-exist", ("review", "undo", "999999", "--reason", "r"),
         ["there is no review #999999", "rplat review ls"], reviewable),
    Case("undo-of-a-review-that-is-not-the-latest", ("review", "undo", "{first}", "--reason", "r"),
         ["review #{first} is not the latest of chain {chain}", "first"], reviewable),
    Case("review-file-with-a-bad-label-on-line-2", ("review", "apply", "bad-label.jsonl"),
         ["bad-label.jsonl line 2: a chain's label is pos or neg, not 'maybe'"], reviewable),
    Case("review-file-naming-an-unknown-chain", ("review", "apply", "unknown-chain.jsonl"),
         ["unknown-chain.jsonl line 1: there is no chain with id 999999"], reviewable),
    Case("review-file-line-without-a-reason", ("review", "apply", "no-reason.jsonl"),
         ["no-reason.jsonl line 1: a review needs its reason"], reviewable),
    Case("review-file-line-with-two-targets", ("review", "apply", "two-targets.jsonl"),
         ["two-targets.jsonl line 1: name exactly one of chain, rationale, problem or undo"], reviewable),
    Case("review-file-not-json", ("review", "apply", "not-json.jsonl"),
         ["not-json.jsonl line 1: not JSON"], reviewable),
    Case("review-file-without-reviews", ("review", "apply", "empty.jsonl"),
         ["the review file empty.jsonl holds no reviews"], reviewable),
    Case("review-file-missing", ("review", "apply", "nowhere.jsonl"),
         ["cannot read the review file nowhere.jsonl"], reviewable),
    Case("review-ls-of-two-targets", ("review", "ls", "--chain", "1", "--problem", "1"),
         ["give one of --chain, --rationale, --problem"], reviewable),
    # MATH format (issue 18): `import problems --layout math` takes the gold answer from the solution's last box
    Case("math-layout-record-whose-solution-has-no-box",
         ("import", "problems", "math.jsonl", "--dataset", "m", "--layout", "math"),
         ["math.jsonl line 2 field 'solution' (the solution) has no \\boxed{{}} answer", "--answer-field"],
         math_without_box),
    Case("math-layout-record-without-a-solution", ("import", "problems", "math.jsonl", "--dataset", "m", "--layout",
                                                   "math"),
         ["math.jsonl line 1 has no field 'solution' or 'answer'", "--solution-field"], math_without_solution),
    Case("math-layout-question-that-is-only-its-prefix",
         ("import", "problems", "math.jsonl", "--dataset", "m", "--layout", "math"),
         ["math.jsonl line 2 field 'problem' holds nothing after its 'Problem:' line"], math_prefix_only),
    Case("math-layout-with-an-answer-field", ("import", "problems", "math.jsonl", "--dataset", "m", "--layout", "math",
                                              "--answer-field", "answer"),
         ["--answer-field answer does not go with --layout math", "drop --answer-field"], math_file),
    Case("math-layout-not-a-layout", ("import", "problems", "math.jsonl", "--dataset", "m", "--layout", "hendrycks"),
         ["'hendrycks' is not one of 'fields', 'math'"], math_file),
    # issue 18: reviews from the dashboard, served on this machine only
    Case("dashboard-allowing-review-to-every-machine", ("dashboard", "--host", "0.0.0.0", "--allow-review"),
         ["--allow-review serves the review forms on 127.0.0.1 only, not on --host 0.0.0.0", "rplat review"]),
    # trainer shapes (issue 20): `rplat export --shape`, `--file-type hf`; nothing is written
    Case("shape-unknown", ("export", "chains", "--shape", "ppo", "--out", "x.jsonl"),
         ["'ppo' is not one of 'sft', 'dpo', 'kto', 'prm'"]),
    Case("shape-of-a-view-it-cannot-take", ("export", "samples", "--shape", "dpo", "--out", "x.jsonl"),
         ["the dpo shape cannot be made from samples; it reads chains", "rplat export chains --shape dpo"]),
    Case("shape-dpo-without-pairs", ("export", "chains", "--shape", "dpo", "--out", "x.jsonl"),
         ["the dpo shape found no pairs", "among the 1 rows of chains", "nothing was written"], negative_chain_only),
    Case("shape-dpo-pairing-not-a-rule",
         ("export", "chains", "--shape", "dpo", "--pairing", "best", "--out", "x.jsonl"),
         ["--pairing 'best' is not a pairing rule", "sample:N"]),
    Case("shape-pairing-without-dpo", ("export", "chains", "--shape", "kto", "--pairing", "all", "--out", "x.jsonl"),
         ["--pairing only applies to --shape dpo"]),
    Case("shape-seed-without-a-sample", ("export", "chains", "--shape", "dpo", "--seed", "3", "--out", "x.jsonl"),
         ["--seed only seeds --pairing sample:N, not --pairing per-negative"]),
    Case("shape-prm-as-csv", ("export", "chains", "--shape", "prm", "--out", "x.csv"),
         ["the prm shape has list columns, which CSV cannot hold", "--file-type jsonl, parquet or hf"]),
    Case("export-hf-over-an-existing-directory", ("export", "chains", "--file-type", "hf", "--out", "taken"),
         ["taken already exists", "choose another --out or remove it"], taken_directory),
    # hf round trip (issue 20): `rplat import chains` reads what `rplat export chains` writes
    Case("flat-chain-with-neither-chain-nor-text", ("import", "chains", "c.jsonl", "--teacher", "t", "--layout",
                                                    "flat"),
         ["c.jsonl line 1 has neither field 'chain' nor field 'text'", "in 'chain' with its problem's external id in "
          "'problem_id', or in 'text' with the id in 'problem'"], flat_chain_without_text),
    # issue 20: training metrics to MLflow and W&B (`report_to`)
    Case("enqueue-training-reporting-to-no-tracker", ("enqueue", "train-sft", "--param", "problems=gsm", "--param",
                                                      "report_to=tensorboard"),
         ["job kind 'train-sft'", "'report_to' input should be 'mlflow', 'wandb' or 'none' (got 'tensorboard')"]),
    # named slices (issue 19): `rplat slice add` checks the predicate as `rplat export --where` does; nothing is
    # written
    Case("slice-where-names-an-unknown-column", ("slice", "add", "hard", "--where", "level = 'Level 5'"),
         ["the --where predicate \"level = 'Level 5'\" does not run on the view predictions", "level",
          "`rplat sql --views` lists its columns"], a_sliced_run),
    Case("slice-where-adds-a-second-statement",
         ("slice", "add", "hard", "--where", "true; DELETE FROM store.slices"),
         ["the --where predicate 'true; DELETE FROM store.slices' is refused", "give exactly one query, not 2 "
          "statements"], a_sliced_run),
    Case("slice-where-adds-a-union", ("slice", "add", "hard", "--where", "true UNION SELECT * FROM predictions"),
         ["give one condition over the view's columns"], a_sliced_run),
    Case("slice-where-reads-a-file",
         ("slice", "add", "hard", "--where", "EXISTS (SELECT * FROM read_text('.tmp/s.txt'))"),
         ["is refused", "the function read_text reaches outside the read-only views"], tmp_file),
    Case("slice-where-is-empty", ("slice", "add", "hard", "--where", " "), ["--where is empty"]),
    Case("slice-name-taken", ("slice", "add", "algebra", "--where", "true"),
         ["a slice named 'algebra' already exists", "choose another name"], a_sliced_run),
    Case("slice-name-is-a-path", ("slice", "add", "../algebra", "--where", "true"), ["names are"]),
    Case("slice-metric-not-a-choice", ("slice", "add", "hard", "--where", "true", "--metric", "f1"),
         ["'f1' is not one of 'accuracy', 'n'"]),
    Case("slice-shown-that-does-not-exist", ("slice", "show", "geometry"),
         ["there is no slice named 'geometry'", "`rplat slice ls` lists them"], a_sliced_run),
    Case("slice-shown-on-a-run-that-does-not-exist", ("slice", "show", "algebra", "--run", "999"),
         ["there is no evaluated run '999'", "without --run lists them"], a_sliced_run),
    # results card (issue 20): `rplat report card`; nothing is written
    Case("card-of-an-experiment-that-does-not-exist", ("report", "card", "--experiment", "nope", "--out", "card.md"),
         ["experiment 'nope' does not exist", "rplat experiments ls"]),
    Case("card-of-an-experiment-without-succeeded-jobs",
         ("report", "card", "--experiment", "waiting", "--out", "card.md"),
         ["experiment 'waiting' has no succeeded jobs yet (1 queued)", "rplat runner --until-done"],
         experiment_waiting),
    Case("card-of-an-experiment-without-results", ("report", "card", "--experiment", "probed", "--out", "card.html"),
         ["experiment 'probed' has no results a card shows", "(probe)", "rplat jobs ls"], experiment_probed),
    Case("card-out-without-a-known-suffix", ("report", "card", "--experiment", "e", "--out", "card.txt"),
         ["cannot tell the file type of card.txt from its suffix", "--file-type md or html"]),
    Case("card-file-type-not-a-choice", ("report", "card", "--experiment", "e", "--file-type", "pdf",
                                         "--out", "card.pdf"), ["'pdf' is not one of 'md', 'html'"]),
    Case("card-out-in-a-missing-directory", ("report", "card", "--experiment", "e", "--out", "nowhere/card.md"),
         ["the directory nowhere does not exist", "choose another --out"]),
    Case("card-out-is-a-directory", ("report", "card", "--experiment", "e", "--file-type", "md", "--out", "taken"),
         ["taken is a directory", "give --out a file name"], taken_directory),
    Case("card-images-folder-is-a-file", ("report", "card", "--experiment", "e", "--out", "card.md"),
         ["card_files is a file, where the card's images would go"], card_files_taken),
]


def run_main(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
             cwd: Path) -> tuple[str, str, int]:
    """(stdout, stderr, exit code) of `rplat *args` run in this process in `cwd`."""
    from rplat.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()  # what the setup printed is not the command's
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return out, err, code


def run_cli(store: Store, args: list[str], url: str | None, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> tuple[str, str, int]:
    """(stdout, stderr, exit code) of `rplat *args` run in this process against the store (or `url`), in the
    store's home like `store.rplat`."""
    if url is not None:
        monkeypatch.setenv("RPLAT_DATABASE_URL", url)
    return run_main(args, monkeypatch, capsys, store.home)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_sentence_exit_2_and_changes_nothing(db: Store, case: Case, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    subst = (case.setup(db) if case.setup else None) or {}
    args = [a.format(**subst) for a in case.args]
    before = snapshot(db)
    out, err, code = run_cli(db, args, case.url, monkeypatch, capsys)
    assert_one_clear_sentence(out, err, code, [e.format(**subst) for e in case.expect])
    assert snapshot(db) == before


@pytest.mark.parametrize("args", [("jobs", "ls"), ("enqueue", "probe"), ("import", "documents", "docs.jsonl",
                                                                          "--dataset", "d"), ("runner", "--once")],
                         ids=["jobs-ls", "enqueue", "import", "runner"])
def test_a_database_without_the_schema_is_refused_with_what_to_run(empty_db: Store, args: tuple[str, ...]) -> None:
    write(empty_db, "docs.jsonl", jsonl({"text": "one"}))
    before = snapshot(empty_db)
    proc = empty_db.rplat(*args)
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode,
                              ["has no rplat schema, not at head", "run `rplat db upgrade`"])
    assert snapshot(empty_db) == before
    assert not any(rows for name, rows in before.items() if not name.startswith("file "))


def test_there_are_at_least_fifteen_bad_input_cases() -> None:
    assert len(CASES) >= 15
    assert len({c.id for c in CASES}) == len(CASES)
