"""`rplat export`: a view's rows with their jobs' lineage, loadable elsewhere; bad input refused, no file left."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from test_analytics import run_cli
from test_cli_errors import assert_one_clear_sentence
from test_report_compare import B_SC, World, seed_world

from rplat.errors import UserError
from rplat.export import export_view

from stores import Store


@pytest.fixture
def world(db: Store) -> tuple[Store, World]:
    return db, seed_world(db)


def test_kept_rationales_export_to_parquet_with_the_lineage_of_their_extract_and_score_jobs(
        world: tuple[Store, World], tmp_path: Path) -> None:
    db, w = world
    out = tmp_path / "kept.parquet"
    assert export_view(db.url, "rationales", out, where="kept") == 1
    (row,) = pq.read_table(out).to_pylist()
    assert (row["rationale_id"], row["rationale"], row["kept"], row["leak"]) == (
        w.kept_rationale, "Adding means counting on.", True, False)
    assert row["overlap"] == pytest.approx(0.10)
    assert (row["extract_rationales_job_id"], row["extract_rationales_job_kind"], row["extract_rationales_job_model"],
            row["extract_rationales_job_prompt_template"]) == (w.extract, "extract-rationales", "student",
                                                              "extract-insert")
    assert json.loads(row["extract_rationales_job_params"]) == {"model": "student", "mode": "insert"}
    assert (row["score_rationales_job_id"], row["score_rationales_job_kind"],
            row["score_rationales_job_prompt_template"]) == (w.score, "score-rationales", None)
    assert json.loads(row["score_rationales_job_params"]) == {"extract_job": w.extract, "tau": 0.5}
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}') WHERE NOT leak").fetchone() == (1,)


def test_predictions_export_as_jsonl_and_csv_with_the_same_rows(world: tuple[Store, World], tmp_path: Path) -> None:
    db, w = world
    where = f"job_id = {w.b} AND method = 'sc'"
    assert export_view(db.url, "predictions", tmp_path / "sc.jsonl", where=where) == len(B_SC)
    assert export_view(db.url, "predictions", tmp_path / "sc.txt", file_type="csv", where=where) == len(B_SC)
    lines = [json.loads(line) for line in (tmp_path / "sc.jsonl").read_text().splitlines()]
    with open(tmp_path / "sc.txt", newline="") as f:
        rows = list(csv.DictReader(f))
    want = {w.problems[i]: credit for i, credit in B_SC.items()}
    assert {r["problem_id"]: r["credit"] for r in lines} == want
    assert {int(r["problem_id"]): float(r["credit"]) for r in rows} == want
    assert {(r["job_kind"], json.loads(r["job_params"])["vote"]) for r in lines + rows} == {("aggregate", "f3")}


def test_export_refuses_bad_input_in_one_sentence_and_leaves_no_file(world: tuple[Store, World],
                                                                      tmp_path: Path) -> None:
    db, _ = world
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = out_dir / "previous.jsonl"
    previous.write_text("an earlier export\n")
    cases = [
        ("votes", {}, out_dir / "x.jsonl", "cannot export 'votes'; the views with lineage are rationales"),
        ("rationales", {"where": "kept; DELETE FROM store.rationales"}, out_dir / "x.jsonl",
         "give exactly one query, not 2 statements"),
        ("rationales", {"where": "kept); DELETE FROM store.rationales; SELECT (1"}, out_dir / "x.jsonl",
         "is not valid SQL"),
        ("rationales", {"where": "rationale_id IN (SELECT id FROM sqlite_scan('x.db', 'jobs'))"},
         out_dir / "x.jsonl", "the function sqlite_scan reaches outside the read-only views"),
        ("rationales", {"where": "no_such_column"}, out_dir / "x.jsonl", "does not run on the view rationales"),
        ("rationales", {"where": "  "}, out_dir / "x.jsonl", "--where is empty"),
        # fails while the rows are read, with the earlier file in the way: it must survive untouched
        ("rationales", {"where": "CAST(rationale AS INTEGER) > 0"}, previous, "Conversion Error"),
        ("rationales", {}, out_dir / "x.xlsx", "cannot tell the file type"),
        ("rationales", {}, tmp_path / "missing" / "x.jsonl", "does not exist"),
        ("rationales", {}, Path("/sys/rplat-export.jsonl"), "cannot write /sys/rplat-export.jsonl"),
    ]
    for view, options, out, expect in cases:
        with pytest.raises(UserError) as info:
            export_view(db.url, view, out, **options)
        assert expect in str(info.value), (view, options)
    assert sorted(p.name for p in out_dir.iterdir()) == ["previous.jsonl"]
    assert previous.read_text() == "an earlier export\n"
    assert not (tmp_path / "missing").exists()


def test_export_cli_prints_the_row_count_and_refuses_a_smuggled_write(world: tuple[Store, World],
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = world
    out = db.home / "chains.jsonl"
    code, printed, _ = run_cli(capsys, "export", "chains", "--where", "label = 'pos'", "--out", str(out))
    assert (code, printed) == (0, f"wrote 1 rows of chains to {out}\n")
    assert [json.loads(line)["job_kind"] for line in out.read_text().splitlines()] == ["collect-chains"]
    code, printed, err = run_cli(capsys, "export", "chains", "--where", "kept); DROP TABLE store.jobs; SELECT (1",
                                 "--out", str(out))
    assert_one_clear_sentence(printed, err, code, ["is refused", "not valid SQL"])
