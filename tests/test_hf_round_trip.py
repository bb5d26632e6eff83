"""Hugging Face datasets both ways, for problems and chains: what `rplat export problems|chains --file-type hf` writes,
`rplat import problems` and `rplat import chains --layout flat` read back into another dataset, the chains on the
right problems, labelled again by the importer; and the flat importer's rules for the export's fields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_analytics import run_cli
from test_cli_errors import snapshot

from rplat import reviews
from rplat.errors import UserError
from rplat.export import export_view
from rplat.imports.chains import import_chains
from rplat.models import Dataset, Problem, TeacherChain
from rplat.store import transaction

from stores import Store

PROBLEMS = [
    {"id": "q1", "question": "What is 3 + 4?", "solution": "3 + 4 = 7, so $\\boxed{7}$.", "answer": "7",
     "subject": "Arithmetic", "level": "Level 1"},
    {"id": "q2", "question": "What is 2 + 2?", "solution": "2 + 2 = 4, so $\\boxed{4}$.", "answer": "4",
     "subject": "Arithmetic", "level": "Level 1"},
    {"id": "q3", "question": "What is 5 + 1?", "solution": "5 + 1 = 6, so $\\boxed{6}$.", "answer": "6",
     "subject": "Arithmetic", "level": "Level 2"},
]
CHAINS = [  # teacher T on dataset src
    {"problem_id": "q1", "chain": "Solution:\n3 + 4 = 7, so $\\boxed{7}$."},  # the "Solution:" line is stripped
    {"problem_id": "q1", "chain": "3 + 4 = 8, so $\\boxed{8}$."},
    {"problem_id": "q2", "chain": "2 + 2 = 4. The answer is 4."},  # unboxed: the labelers disagree
    {"problem_id": "q3", "chain": "5 + 1 = 6, so $\\boxed{6}$.", "sample_idx": 5},
]
# What the round trip must leave out: another teacher's chain on a problem of src, and a chain of T on a problem of
# another dataset with the same external id.
OTHER_TEACHER = {"problem_id": "q1", "chain": "3 + 4 = 7, so $\\boxed{7}$.", "sample_idx": 9}
OTHER_DATASET = {"problem_id": "q1", "chain": "It is $\\boxed{1}$.", "sample_idx": 7}
# The commands of docs/trainers.md ("Hugging Face datasets, both ways"), with src for math-train and T for gpt-3.5.
EXPORT_PROBLEMS = ("export", "problems", "--where", "dataset = 'src'", "--file-type", "hf", "--out")
EXPORT_CHAINS = ("export", "chains", "--where",
                 "teacher = 'T' AND problem_id IN (SELECT problem_id FROM problems WHERE dataset = 'src')",
                 "--file-type", "hf", "--out")
COMPARED = ("problem", "question", "sample_idx", "text", "extracted_answer", "gold", "label", "hendrycks_correct",
            "math_verify_correct")


def jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def seed(db: Store, cli: Any) -> None:
    """Dataset src (q1..q3) and dataset other (q1), imported as a user would; chains of T (and U) labelled by
    the importer; q3's gold reviewed to 5 after its chains were labelled."""
    home = db.home
    for name, rows in (("src", PROBLEMS), ("other", PROBLEMS[:1])):
        path = jsonl(home / f"{name}.jsonl", rows)
        code, _, err = cli("import", "problems", str(path), "--dataset", name, "--id-field", "id",
                           "--subject-field", "subject", "--level-field", "level")
        assert code == 0, err
    for name, dataset, teacher, rows in (("t", "src", "T", CHAINS), ("u", "src", "U", [OTHER_TEACHER]),
                                         ("o", "other", "T", [OTHER_DATASET])):
        import_chains(db.engine(), jsonl(home / f"chains-{name}.jsonl", rows), teacher=teacher, dataset=dataset,
                      layout="flat", workers=1)
    with transaction(db.engine()) as s:
        q3 = s.scalar(select(Problem.id).join(Dataset).where(Dataset.name == "src", Problem.external_id == "q3"))
    assert q3 is not None
    reviews.add(db.engine(), "problem", q3, "5", reviewer="ann", reason="the question was meant to be 4 + 1")


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """`rplat ARGS` in this process: (exit code, stdout, stderr)."""
    return lambda *args: run_cli(capsys, *args)


def view_rows(db: Store, tmp_path: Path, view: str, where: str) -> list[dict[str, Any]]:
    out = tmp_path / f"{view}-{len(list(tmp_path.iterdir()))}.jsonl"
    export_view(db.url, view, out, where=where)
    return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def test_problems_and_chains_exported_as_hf_import_back_into_another_dataset(db: Store, tmp_path: Path,
                                                                             cli: Any) -> None:
    import datasets

    seed(db, cli)
    d1, d2 = db.home / "d1", db.home / "d2"
    assert cli(*EXPORT_PROBLEMS, str(d1))[:2] == (0, f"wrote 3 rows of problems to {d1}\n")
    assert cli(*EXPORT_CHAINS, str(d2))[:2] == (0, f"wrote 4 rows of chains to {d2}\n")
    exported = datasets.load_from_disk(str(d2)).to_list()
    assert (d2 / "README.md").is_file() and "rows of the rplat view chains" in (d2 / "README.md").read_text()
    # what the export writes: problem_id is the store's row id, problem the external id, text the chain
    assert {r["problem"] for r in exported} == {"q1", "q2", "q3"} and all(isinstance(r["problem_id"], int)
                                                                          for r in exported)

    code, _, err = cli("import", "problems", str(d1), "--dataset", "X", "--id-field", "problem", "--answer-field",
                       "gold")
    assert code == 0, err
    code, printed, err = cli("import", "chains", str(d2), "--dataset", "X", "--teacher", "T", "--layout", "flat",
                             "--workers", "1", "--json")
    assert code == 0, err
    summary = json.loads(printed)
    # the directory is one unit of 4 records: its README.md card is not read as data
    assert {k: summary[k] for k in ("layout", "files", "read", "imported", "problems_created", "problems_reused")} \
        == {"layout": "flat", "files": 1, "read": 4, "imported": 4, "problems_created": 0, "problems_reused": 3}

    with transaction(db.engine()) as s:
        x_problems = dict(s.execute(select(Problem.id, Problem.external_id).join(Dataset)
                                    .where(Dataset.name == "X")).all())
        landed = s.execute(select(TeacherChain.problem_id, TeacherChain.sample_idx)
                           .join(Problem).join(Dataset).where(Dataset.name == "X")).all()
    assert sorted(x_problems.values()) == ["q1", "q2", "q3"]
    assert sorted((x_problems[pid], idx) for pid, idx in landed) == [("q1", 0), ("q1", 1), ("q2", 0), ("q3", 5)]

    before = {r["problem"] + f"/{r['sample_idx']}": {k: r[k] for k in COMPARED} for r in exported}
    x_where = "teacher = 'T' AND problem_id IN (SELECT problem_id FROM problems WHERE dataset = 'X')"
    after = {r["problem"] + f"/{r['sample_idx']}": {k: r[k] for k in COMPARED}
             for r in view_rows(db, tmp_path, "chains", x_where)}
    assert sorted(after) == ["q1/0", "q1/1", "q2/0", "q3/5"]
    assert after["q1/0"]["text"] == "3 + 4 = 7, so $\\boxed{7}$."
    assert (after["q2/0"]["hendrycks_correct"], after["q2/0"]["math_verify_correct"]) == (False, True)
    # where the gold is unchanged the importer's labels are the exported ones; q3's gold was reviewed to 5 before
    # the export, so its copy's gold is 5 and its chain (answer 6) is labelled against it
    assert {k: after[k] for k in ("q1/0", "q1/1", "q2/0")} == {k: before[k] for k in ("q1/0", "q1/1", "q2/0")}
    assert {k: v for k, v in after["q3/5"].items() if k not in ("gold", "label", "hendrycks_correct",
                                                                 "math_verify_correct")} \
        == {k: v for k, v in before["q3/5"].items() if k not in ("gold", "label", "hendrycks_correct",
                                                                  "math_verify_correct")}
    assert (before["q3/5"]["gold"], before["q3/5"]["label"]) == ("5", "pos")  # labelled before the review
    assert (after["q3/5"]["gold"], after["q3/5"]["label"], after["q3/5"]["math_verify_correct"]) == ("5", "neg", False)

    # --layout auto reads the export too; a re-import adds nothing
    code, printed, err = cli("import", "chains", str(d2), "--dataset", "X", "--teacher", "T2", "--workers", "1",
                             "--json")
    assert code == 0, err
    assert (json.loads(printed)["layout"], json.loads(printed)["imported"]) == ("flat", 4)
    assert import_chains(db.engine(), d2, teacher="T", dataset="X", layout="flat", workers=1)["imported"] == 0


def _parse_one(db: Store, tmp_path: Path, records: list[dict[str, Any]], teacher: str = "T") -> list[tuple[Any, ...]]:
    """Import `records` (flat) into dataset src for `teacher`; (external id, sample index, text) of its chains."""
    import_chains(db.engine(), jsonl(tmp_path / f"{teacher}.jsonl", records), teacher=teacher, dataset="src",
                  layout="flat", workers=1)
    with transaction(db.engine()) as s:
        return sorted(s.execute(select(Problem.external_id, TeacherChain.sample_idx, TeacherChain.text)
                                .join(Problem).where(TeacherChain.teacher == teacher)).all())


def test_the_flat_importer_prefers_its_own_fields_and_reads_the_exports(db: Store, tmp_path: Path, cli: Any) -> None:
    path = jsonl(db.home / "src.jsonl", PROBLEMS)
    assert cli("import", "problems", str(path), "--dataset", "src", "--id-field", "id")[0] == 0
    got = _parse_one(db, tmp_path, [
        # chain and text: chain wins, and with it problem_id names the problem
        {"problem_id": "q1", "problem": "q2", "chain": "Solution:\nfrom chain", "text": "from text"},
        # text without chain: an export row; problem names the problem, problem_id (a row id) is ignored
        {"problem_id": 424242, "problem": "q2", "text": "Solution:\nas exported", "sample_idx": 3},
        {"problem_id": "q1", "chain": "the old flat form", "sample_idx": 4},
        {"problem": "q3", "text": "no sample index"},
    ])
    assert got == [("q1", 0, "from chain"), ("q1", 4, "the old flat form"),
                   ("q2", 3, "Solution:\nas exported"),  # an export's text is taken as it is
                   ("q3", 0, "no sample index")]


@pytest.mark.parametrize(("records", "layout", "expect"), [
    ([{"problem_id": "q1", "sample_idx": 0}], "flat",
     "line 1 has neither field 'chain' nor field 'text'; give each chain in 'chain' with its problem's external id "
     "in 'problem_id', or in 'text' with the id in 'problem'"),
    ([{"problem_id": "q1", "chain": None, "text": None}], "flat", "has neither field 'chain' nor field 'text'"),
    ([{"problem_id": "q1", "sample_idx": 0}], "auto", "line 1 is neither a released record"),
    ([{"problem_id": "q1", "text": "x"}], "flat", "line 1 has its chain in 'text' but no field 'problem'"),
    ([{"problem": "q1", "text": "a", "teacher": "T", "sample_idx": 0},
      {"problem": "q1", "text": "b", "teacher": "U", "sample_idx": 0}], "auto",
     "line 2 repeats sample_idx 0 of problem 'q1' first seen on {path} line 1 (the export holds the chains of "
     "teachers 'T' and 'U': export one teacher's, e.g. with --where \"teacher = 'T'\")"),
    ([{"problem": "q1", "text": ""}], "flat", "line 1 field 'text' is empty"),
    ([{"problem": 7.5, "text": "a"}], "flat", "line 1 field 'problem' is a number, not text"),
], ids=["neither", "both-null", "neither-auto", "text-without-problem", "two-teachers", "empty-text",
        "problem-not-text"])
def test_a_flat_record_the_importer_cannot_read_is_one_sentence_and_writes_nothing(
        db: Store, tmp_path: Path, records: list[dict[str, Any]], layout: str, expect: str) -> None:
    path = jsonl(tmp_path / "bad.jsonl", records)
    before = snapshot(db)
    with pytest.raises(UserError) as caught:
        import_chains(db.engine(), path, teacher="T", dataset="src", layout=layout, workers=1)
    assert str(caught.value).startswith(f"{path} ") and expect.format(path=path) in str(caught.value), caught.value
    assert snapshot(db) == before

