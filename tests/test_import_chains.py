"""`rplat import chains`: the released TDG format and the flat one, labels, idempotence, lineage, bad records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from test_cli_errors import assert_one_clear_sentence, snapshot

from rplat.errors import UserError
from rplat.hashing import content_hash, file_sha256
from rplat.imports.chains import import_chains
from rplat.imports.datasets import FieldMap, import_file
from rplat.models import Dataset, Job, Problem, TeacherChain
from rplat.store import transaction

from stores import TESTS, Store

DATA = TESTS / "data" / "chains"
RELEASED = DATA / "released"
ALGEBRA = RELEASED / "algebra.jsonl"
MORE = RELEASED / "more" / "geometry_number_theory.jsonl"

COIN = "A fair coin is flipped twice. What is the probability of getting exactly one head?"
LINEAR = "What is the value of $x$ if $2x + 3 = 8$?"


def cli_json(db: Store, *args: str) -> dict[str, Any]:
    return json.loads(db.rplat("import", "chains", *args, "--json", check=True).stdout)


def chains(db: Store) -> list[TeacherChain]:
    with transaction(db.engine()) as s:
        return list(s.scalars(select(TeacherChain).order_by(TeacherChain.problem_id, TeacherChain.sample_idx)))


def counts(db: Store) -> tuple[int, int, int]:
    with transaction(db.engine()) as s:
        return (s.scalar(select(func.count()).select_from(TeacherChain)) or 0,
                s.scalar(select(func.count()).select_from(Problem)) or 0,
                s.scalar(select(func.count()).select_from(Dataset)) or 0)


def test_a_released_file_stores_every_chain_once_with_both_verdicts(db: Store) -> None:
    summary = cli_json(db, str(ALGEBRA), "--teacher", "gpt-3.5", "--workers", "1")
    job_id = summary.pop("job_id")
    assert summary == {"dataset": "math-train", "teacher": "gpt-3.5", "labeler": "hendrycks", "layout": "released",
                       "files": 1, "read": 8, "imported": 8, "already_present": 0, "positives": 4, "negatives": 4,
                       "labelers_disagree": 1, "problems_created": 2, "problems_reused": 0,
                       "problems_without_gold": 0, "workers": 1, "relabelled": 0, "math_verify_timeouts": 0,
                       "timeout_chain_ids": []}
    with transaction(db.engine()) as s:
        problems = {p.question: p for p in s.scalars(select(Problem))}
        job = s.get(Job, job_id)
        ds = s.scalar(select(Dataset).where(Dataset.name == "math-train"))
        assert job is not None and ds is not None
        assert (job.kind, job.status, job.progress_done) == ("import-chains", "succeeded", 8)
        assert job.params["sha256"] == file_sha256(ALGEBRA)
        assert (job.params["teacher"], job.params["labeler"], job.params["dataset"]) == (
            "gpt-3.5", "hendrycks", "math-train")
        assert (ds.kind, ds.job_id) == ("problems", job_id)
    assert set(problems) == {LINEAR, COIN}  # "Problem:\n" stripped
    coin = problems[COIN]
    assert (coin.subject, coin.level, coin.benchmark, coin.split, coin.answer) == (
        "Counting & Probability", "Level 3", "math", "train", "\\frac{1}{2}")
    assert coin.solution is not None and coin.solution.startswith("Of the 4 equally likely outcomes")
    assert coin.external_id == content_hash(COIN)
    assert coin.content_hash == content_hash(COIN, coin.solution, coin.answer)
    assert coin.job_id == job_id

    rows = chains(db)
    assert len(rows) == 8 and {r.job_id for r in rows} == {job_id} and {r.teacher for r in rows} == {"gpt-3.5"}
    linear = [r for r in rows if r.problem_id == problems[LINEAR].id]
    assert [r.sample_idx for r in linear] == [0, 1, 2, 3, 4]
    assert [(r.extracted_answer, r.label, r.hendrycks_correct, r.math_verify_correct) for r in linear] == [
        ("\\dfrac{5}{2}", "pos", True, True),
        ("2.5", "neg", False, True),  # the labelers disagree: math-verify knows 2.5 = 5/2
        ("\\frac{11}{2}", "neg", False, False),
        (None, "neg", False, False),  # no box: negative
        ("5/2", "pos", True, True),  # A/B of integers -> \frac{A}{B}
    ]
    assert linear[3].text == "Subtract 3 and divide by 2. Therefore $x = 5/2$."  # "Solution:\n" stripped
    assert [r.n_chars for r in linear] == [len(r.text) for r in linear]
    assert {r.labeler for r in rows} == {"hendrycks"}

    again = db.rplat("import", "chains", str(ALGEBRA), "--teacher", "gpt-3.5", check=True)
    assert again.stdout.startswith("imported 0 chains of teacher gpt-3.5 into dataset math-train (8 already present;")
    assert counts(db) == (8, 2, 1)
    assert [(r.id, r.label) for r in chains(db)] == [(r.id, r.label) for r in rows]


def test_a_directory_reuses_problems_and_the_chains_view_shows_where_the_labelers_disagree(db: Store) -> None:
    first = import_chains(db.engine(), ALGEBRA, teacher="gpt-4", dataset="math")
    summary = cli_json(db, str(RELEASED), "--teacher", "gpt-4", "--dataset", "math")
    assert (summary["files"], summary["read"], summary["imported"], summary["already_present"]) == (2, 20, 12, 8)
    assert (summary["problems_created"], summary["problems_reused"]) == (2, 2)
    assert (summary["positives"], summary["negatives"], summary["labelers_disagree"]) == (7, 5, 1)
    assert counts(db) == (20, 4, 1)
    with transaction(db.engine()) as s:
        jobs = dict(s.execute(select(TeacherChain.job_id, func.count()).group_by(TeacherChain.job_id)).all())
    assert jobs == {first["job_id"]: 8, summary["job_id"]: 12}

    # Another teacher's chains on the same problems: new chains, no new problems; labelled by math-verify.
    other = import_chains(db.engine(), RELEASED, teacher="other", dataset="math", labeler="math-verify")
    assert (other["imported"], other["problems_created"], other["problems_reused"]) == (20, 0, 4)
    assert (other["positives"], other["negatives"]) == (13, 7)
    assert counts(db) == (40, 4, 1)

    out = db.rplat("sql", "SELECT teacher, subject, sample_idx, extracted_answer, gold, label, hendrycks_correct, "
                   "math_verify_correct, labeler FROM chains WHERE labelers_disagree ORDER BY teacher, subject",
                   "--json", check=True).stdout
    assert json.loads(out) == [
        {"teacher": t, "subject": subject, "sample_idx": idx, "extracted_answer": answer, "gold": gold,
         "label": label, "hendrycks_correct": False, "math_verify_correct": True, "labeler": labeler}
        for t, label, labeler in (("gpt-4", "neg", "hendrycks"), ("other", "pos", "math-verify"))
        for subject, idx, answer, gold in (("Algebra", 1, "2.5", "\\frac{5}{2}"),
                                           ("Number Theory", 6, "\\text{2}", "2"))]


def import_gsm(db: Store) -> None:
    fmap = FieldMap("problems", "id", {"question": "question"}, {"solution": "solution", "answer": "answer"})
    import_file(db.engine(), DATA / "problems.jsonl", "gsm", fmap)


def test_flat_chains_attach_to_problems_already_in_the_dataset(db: Store) -> None:
    import_gsm(db)
    summary = cli_json(db, str(DATA / "flat.jsonl"), "--teacher", "smol", "--dataset", "gsm", "--labeler",
                       "math-verify")
    assert (summary["layout"], summary["imported"], summary["positives"], summary["negatives"]) == ("flat", 4, 3, 1)
    assert (summary["problems_created"], summary["problems_reused"], summary["labelers_disagree"]) == (0, 2, 1)
    with transaction(db.engine()) as s:
        got = s.execute(select(Problem.external_id, TeacherChain.sample_idx, TeacherChain.extracted_answer,
                               TeacherChain.label, TeacherChain.hendrycks_correct, TeacherChain.text)
                        .join(Problem, Problem.id == TeacherChain.problem_id)
                        .order_by(Problem.external_id, TeacherChain.sample_idx)).all()
    assert [row[:5] for row in got] == [
        ("gsm-1", 0, "12", "pos", False),  # unboxed "The answer is 12": right for math-verify, not for hendrycks
        ("gsm-1", 1, "7", "neg", False),
        ("gsm-1", 2, "12", "pos", True),  # third chain of gsm-1 in order of appearance
        ("gsm-2", 5, "12", "pos", True),  # its own sample_idx
    ]
    assert got[0][5].startswith("3 bags of 4 apples")
    assert import_chains(db.engine(), DATA / "flat.jsonl", teacher="smol", dataset="gsm")["imported"] == 0
    assert counts(db) == (4, 2, 1)


def test_flat_chains_naming_an_unknown_problem_are_refused(db: Store, tmp_path: Path) -> None:
    import_gsm(db)
    path = tmp_path / "flat.jsonl"
    path.write_text(json.dumps({"problem_id": "gsm-1", "chain": "\\boxed{12}"}) + "\n"
                    + json.dumps({"problem_id": "gsm-9", "chain": "\\boxed{3}"}) + "\n")
    before = snapshot(db)
    proc = db.rplat("import", "chains", str(path), "--teacher", "smol", "--dataset", "gsm")
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, [f"{path} line 2", "'gsm-9'"])
    assert snapshot(db) == before
    with pytest.raises(UserError, match="does not exist"):
        import_chains(db.engine(), path, teacher="smol", dataset="nowhere")


GOOD = {"question": "Problem:\nWhat is $1+1$?", "answer": "Solution:\n$\\boxed{2}$", "level": "Level 1",
        "type": "Algebra", "generated_answer": ["Solution:\n$1+1=\\boxed{2}$"]}


@pytest.mark.parametrize(("bad", "layout", "expect"), [
    ('{"question": "Problem:\\nWhat', "auto", "is not valid JSON"),
    (json.dumps({**GOOD, "generated_answer": "Solution:\n\\boxed{2}"}), "auto",
     "field 'generated_answer' is text, not an array of chains"),
    (json.dumps({**GOOD, "generated_answer": ["Solution:\n\\boxed{2}", 7]}), "auto",
     "generated_answer item 1 is a number, not text"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "question"}), "auto", "has no field 'question'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "generated_answer"}), "auto",
     "is neither a released record"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "generated_answer"}), "released",
     "field 'generated_answer' is null"),
    (json.dumps({**GOOD, "level": 3}), "auto", "field 'level' is a number, not text"),
    (json.dumps({"problem_id": "x", "chain": "y", "sample_idx": -1}), "auto", "'sample_idx' is -1"),
], ids=["json", "chains-not-a-list", "chain-not-text", "no-question", "neither", "released-no-chains",
        "level-number", "negative-index"])
def test_a_malformed_record_names_file_and_line_and_writes_nothing(db: Store, tmp_path: Path, bad: str, layout: str,
                                                                   expect: str) -> None:
    path = tmp_path / "chains.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + bad + "\n" + json.dumps(GOOD) + "\n")
    before = snapshot(db)
    with pytest.raises(UserError) as caught:
        import_chains(db.engine(), path, teacher="t", dataset="math", layout=layout)
    message = str(caught.value)
    assert message.startswith(f"{path} line 2 ") and expect in message, message
    assert snapshot(db) == before


def test_the_cli_refuses_a_malformed_record_in_one_sentence_exit_2(db: Store, tmp_path: Path) -> None:
    directory = tmp_path / "release" / "algebra"
    directory.mkdir(parents=True)
    (directory / "0.jsonl").write_text(json.dumps(GOOD) + "\n")
    (directory / "1.jsonl").write_text(json.dumps(GOOD) + "\n\n" + json.dumps({**GOOD, "answer": ""}) + "\n")
    before = snapshot(db)
    proc = db.rplat("import", "chains", str(tmp_path / "release"), "--teacher", "gpt-3.5")
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode,
                              [f"{directory / '1.jsonl'} line 3", "field 'answer' is empty"])
    assert snapshot(db) == before
    proc = db.rplat("import", "chains", str(tmp_path / "missing.jsonl"), "--teacher", "gpt-3.5")
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, ["does not exist"])
    assert snapshot(db) == before


def test_a_repeated_question_continues_its_sample_indices(db: Store, tmp_path: Path) -> None:
    path = tmp_path / "chains.jsonl"
    second = {**GOOD, "generated_answer": ["Solution:\n$\\boxed{3}$", "Solution:\nIt is 2."]}
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(second) + "\n")
    summary = import_chains(db.engine(), path, teacher="t", dataset="math")
    assert (summary["imported"], summary["problems_created"], summary["positives"]) == (3, 1, 1)
    assert [(c.sample_idx, c.label) for c in chains(db)] == [(0, "pos"), (1, "neg"), (2, "neg")]
    assert import_chains(db.engine(), path, teacher="t", dataset="math")["imported"] == 0


# --- compressed, streamed and sharded input (through rplat.imports.readers) ----------------------------------


def _teacher_rows(db: Store, teacher: str) -> list[tuple[Any, ...]]:
    with transaction(db.engine()) as s:
        return [tuple(r) for r in s.execute(
            select(Problem.question, TeacherChain.sample_idx, TeacherChain.text, TeacherChain.label,
                   TeacherChain.hendrycks_correct, TeacherChain.math_verify_correct)
            .join(Problem, Problem.id == TeacherChain.problem_id).where(TeacherChain.teacher == teacher)
            .order_by(Problem.question, TeacherChain.sample_idx)).all()]


def test_gzip_zstandard_parquet_stdin_and_a_directory_of_compressed_shards_import_the_same_chains(
        db: Store, tmp_path: Path) -> None:
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    assert cli_json(db, str(ALGEBRA), "--teacher", "plain", "--workers", "1")["imported"] == 8
    raw = ALGEBRA.read_bytes()
    gz, zst, parquet = tmp_path / "a.jsonl.gz", tmp_path / "a.jsonl.zst", tmp_path / "a.parquet"
    gz.write_bytes(gzip.compress(raw))
    zst.write_bytes(zstandard.ZstdCompressor().compress(raw))
    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in raw.decode().splitlines()]), parquet)
    shards = tmp_path / "shards"
    (shards / "sub").mkdir(parents=True)
    (shards / "01.jsonl.gz").write_bytes(gzip.compress(raw))
    (shards / "sub" / "02.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(MORE.read_bytes()))
    (shards / "README.md").write_text("not a chain file: left alone")
    for teacher, path in (("gz", gz), ("zst", zst), ("parquet", parquet)):
        summary = cli_json(db, str(path), "--teacher", teacher, "--workers", "1")
        assert (summary["imported"], summary["problems_created"], summary["problems_reused"]) == (8, 0, 2)
        assert _teacher_rows(db, teacher) == _teacher_rows(db, "plain")
        (job,) = [j for j in _jobs_of(db) if j.params["teacher"] == teacher]
        assert job.params["sha256"] == file_sha256(path)
    piped = json.loads(db.rplat("import", "chains", "-", "--teacher", "stdin", "--json", "--workers", "2",
                                input=raw.decode(), check=True).stdout)
    assert piped["imported"] == 8 and _teacher_rows(db, "stdin") == _teacher_rows(db, "plain")
    (job,) = [j for j in _jobs_of(db) if j.params["teacher"] == "stdin"]
    assert (job.params["file"], job.params["sha256"]) == ("-", file_sha256(ALGEBRA))
    sharded = cli_json(db, str(shards), "--teacher", "shards", "--workers", "2")
    assert (sharded["files"], sharded["read"], sharded["imported"]) == (2, 20, 20)
    assert [r for r in _teacher_rows(db, "shards") if r[0] in {COIN, LINEAR}] == _teacher_rows(db, "plain")


def _jobs_of(db: Store) -> list[Job]:
    with transaction(db.engine()) as s:
        jobs = list(s.scalars(select(Job).where(Job.kind == "import-chains").order_by(Job.id)))
        s.expunge_all()
        return jobs


def test_a_truncated_zstandard_file_is_refused_in_one_sentence_and_writes_nothing(db: Store, tmp_path: Path) -> None:
    import zstandard

    bad = tmp_path / "cut.jsonl.zst"
    bad.write_bytes(zstandard.ZstdCompressor().compress(ALGEBRA.read_bytes())[:-9])
    before = snapshot(db)
    proc = db.rplat("import", "chains", str(bad), "--teacher", "t")
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, ["cut.jsonl.zst"])
    assert snapshot(db) == before
