"""`rplat import problems --layout math`: the released MATH files as problems, and the warning every problem
import gives when the gold answers it stores look like worked solutions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_cli_errors import run_main

from rplat.imports.datasets import LAYOUTS, LONG_GOLD_CHARS, gold_warning
from rplat.methods.answers import is_correct
from rplat.models import Job, Problem
from rplat.store import transaction

from stores import Store

# Hendrycks MATH records (problem, solution) and the TDG release's (question "Problem:\n...", answer = solution).
MATH = [
    {"problem": "Problem:\nWhat is $\\frac{2}{4}$ in lowest terms?",
     "solution": "Divide top and bottom by 2: $\\frac{2}{4} = \\boxed{\\frac{1}{2}}$.",
     "type": "Algebra", "level": "Level 1"},
    {"problem": "What is $\\sin 60^\\circ$?",
     "solution": "From the 30-60-90 triangle, $\\sin 60^\\circ = \\boxed{\\frac{\\sqrt{3}}{2}}$.",
     "type": "Precalculus", "level": "Level 2"},
    {"question": "Problem:\nWhat is $2 + 2$?",
     "answer": "Solution:\nA first guess is $\\boxed{5}$, but counting again, $2 + 2 = \\boxed{4}$.",
     "type": "Prealgebra", "level": "Level 5", "generated_answer": ["Solution:\n$\\boxed{4}$"]},
]
# (question, solution, gold answer, subject, level) as they should be stored
STORED = [
    ("What is $\\frac{2}{4}$ in lowest terms?", MATH[0]["solution"], "\\frac{1}{2}", "Algebra", "Level 1"),
    ("What is $\\sin 60^\\circ$?", MATH[1]["solution"], "\\frac{\\sqrt{3}}{2}", "Precalculus", "Level 2"),
    ("What is $2 + 2$?", "A first guess is $\\boxed{5}$, but counting again, $2 + 2 = \\boxed{4}$.", "4",
     "Prealgebra", "Level 5"),
]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def rplat(db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
          *args: str) -> tuple[str, str, int]:
    return run_main(list(args), monkeypatch, capsys, db.home)


def stored(db: Store, dataset_job: int | None = None) -> list[Problem]:
    with transaction(db.engine()) as session:
        query = select(Problem).order_by(Problem.id)
        if dataset_job is not None:
            query = query.where(Problem.job_id == dataset_job)
        rows = list(session.scalars(query))
        session.expunge_all()
        return rows


def test_the_cli_offers_the_layouts_the_importer_reads() -> None:
    from rplat.cli.data import import_problems

    layout = next(p for p in import_problems.params if p.name == "layout")
    assert tuple(layout.type.choices) == LAYOUTS  # type: ignore[attr-defined]


def test_math_layout_stores_the_bare_question_the_last_box_subject_level_and_solution(
        db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(db.home / "math.jsonl", MATH)
    out, err, code = rplat(db, monkeypatch, capsys, "import", "problems", "math.jsonl", "--dataset", "m",
                           "--layout", "math", "--split", "train", "--json")
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert (summary["imported"], summary["layout"], "gold_suspect" in summary) == (3, "math", False)
    rows = stored(db)
    assert [(p.question, p.solution, p.answer, p.subject, p.level) for p in rows] == STORED
    assert {(p.benchmark, p.split) for p in rows} == {("math", "train")}
    with transaction(db.engine()) as session:
        params = session.get(Job, summary["job_id"]).params
    assert (params["layout"], params["fallback_fields"]["solution"]) == ("math", "answer")


def test_the_stored_gold_judges_the_boxed_answer_right_and_a_wrong_one_wrong(
        db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(db.home / "math.jsonl", MATH)
    assert rplat(db, monkeypatch, capsys, "import", "problems", "math.jsonl", "--dataset", "m", "--layout",
                 "math")[2] == 0
    golds = [p.answer for p in stored(db)]
    assert all(is_correct(f"\\boxed{{{answer}}}", gold) for (*_, answer, _s, _l), gold in zip(STORED, golds,
                                                                                             strict=True))
    assert is_correct("0.5", golds[0]) and not is_correct("5", golds[2]) and not is_correct("\\frac{1}{3}", golds[0])


def test_a_problem_imported_with_the_math_layout_is_the_one_import_chains_reuses(
        db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(db.home / "math.jsonl", MATH)
    write_jsonl(db.home / "chains.jsonl", [MATH[2]])
    assert rplat(db, monkeypatch, capsys, "import", "problems", "math.jsonl", "--dataset", "m", "--layout",
                 "math")[2] == 0
    out, _err, code = rplat(db, monkeypatch, capsys, "import", "chains", "chains.jsonl", "--dataset", "m",
                            "--teacher", "gpt", "--workers", "1", "--json")
    summary = json.loads(out)
    assert (code, summary["problems_created"], summary["problems_reused"], summary["positives"]) == (0, 0, 1, 1)
    assert len(stored(db)) == 3
    # and the same file again with --append adds nothing: the id is the bare question's hash
    out, _err, code = rplat(db, monkeypatch, capsys, "import", "problems", "math.jsonl", "--dataset", "m",
                            "--layout", "math", "--append", "--json")
    assert (code, json.loads(out)["imported"], json.loads(out)["already_present"]) == (0, 0, 3)


def test_the_released_file_imported_without_the_layout_warns_and_says_how_to_fix_it(
        db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    long_solution = "Solution:\n" + "We expand the product term by term. " * 12 + "So $x = \\boxed{7}$."
    assert len(long_solution) > LONG_GOLD_CHARS
    released = [{**MATH[2], "answer": long_solution}, {**MATH[2], "question": "Problem:\nWhat is 3 + 4?",
                                                       "answer": long_solution}]
    write_jsonl(db.home / "released.jsonl", released)
    out, err, code = rplat(db, monkeypatch, capsys, "import", "problems", "released.jsonl", "--dataset", "trap",
                           "--solution-field", "answer", "--json")
    assert code == 0
    summary = json.loads(out)
    assert (summary["imported"], summary["gold_too_long"], summary["gold_without_answer"]) == (2, 2, 0)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: 2 gold answers imported into dataset trap")
    assert f"2 longer than {LONG_GOLD_CHARS} characters" in lines[0] and "--layout math" in lines[0]
    assert "--answer-field" in lines[0] and "'answer'" in lines[0]
    assert {p.answer for p in stored(db)} == {long_solution}  # imported all the same


def test_a_gold_answer_with_no_final_answer_in_it_warns_and_final_answers_do_not(
        db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    records = [
        {"question": "What is 2 + 3?", "answer": "5"},
        {"question": "Half of one?", "answer": "\\frac{1}{2}"},
        {"question": "What is 4 * 6?", "answer": "4 * 6 = 24\n#### 24"},
        {"question": "What is 7 - 2?", "answer": "Seven take away two\nleaves five apples on the table"},
    ]
    write_jsonl(db.home / "p.jsonl", records)
    out, err, code = rplat(db, monkeypatch, capsys, "import", "problems", "p.jsonl", "--dataset", "p", "--json")
    summary = json.loads(out)
    assert (code, summary["imported"], summary["gold_too_long"], summary["gold_without_answer"],
            summary["gold_suspect"]) == (0, 4, 0, 1, 1)
    assert err.startswith("warning: 1 gold answers imported into dataset p") and "no final answer" in err
    assert "--answer-field" in err and len(err.splitlines()) == 1
    write_jsonl(db.home / "final.jsonl", records[:3])
    out, err, code = rplat(db, monkeypatch, capsys, "import", "problems", "final.jsonl", "--dataset", "f")
    assert (code, err) == (0, "") and out.startswith("imported 3 problems")


def test_problems_without_gold_answers_do_not_warn(db: Store, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(db.home / "q.jsonl", [{"question": "Why?"}, {"question": "How?", "solution": "Slowly.\nCarefully."}])
    _out, err, code = rplat(db, monkeypatch, capsys, "import", "problems", "q.jsonl", "--dataset", "q")
    assert (code, err) == (0, "")


def test_the_warning_is_none_without_suspect_golds_and_names_the_box_under_the_math_layout() -> None:
    assert gold_warning({"dataset": "d", "read": 3}) is None
    line = gold_warning({"dataset": "d", "layout": "math", "gold_too_long": 1, "gold_without_answer": 0,
                         "gold_suspect": 1})
    assert line is not None and line.startswith("warning: 1 gold answers") and "last \\boxed{}" in line


def test_a_math_record_with_explicit_fields_reads_them_and_no_fallback(
        db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    write_jsonl(db.home / "x.jsonl", [{"q": "Problem:\nWhat is 1 + 1?", "worked": "$\\boxed{2}$", "topic": "Algebra",
                                       "problem": "not this"}])
    _out, err, code = rplat(db, monkeypatch, capsys, "import", "problems", "x.jsonl", "--dataset", "x", "--layout",
                            "math", "--question-field", "q", "--solution-field", "worked", "--subject-field",
                            "topic", "--benchmark", "mine")
    assert (code, err) == (0, "")
    [p] = stored(db)
    assert (p.question, p.answer, p.subject, p.level, p.benchmark) == ("What is 1 + 1?", "2", "Algebra", None, "mine")
