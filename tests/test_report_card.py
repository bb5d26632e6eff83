"""`rplat report card`: the experiment's tables with the numbers the reports give, its figures as PNG files (md) or
inside the file (html), and every job behind the numbers in the provenance."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_aggregate import _run as run_aggregate
from test_aggregate import _seed as seed_samples
from test_analytics import run_cli
from test_cli_errors import assert_one_clear_sentence
from test_report_compare import seed_world
from test_tdg_report import _seed as seed_tdg

from rplat.asc import asc_curve
from rplat.models import Job, JobDependency, TrainingMetric
from rplat.reports import compare_report, rationalyst_report, tdg_report
from rplat.store import transaction

import factories as make
from stores import Store

PNG = b"\x89PNG\r\n\x1a\n"
LOSSES = (1.0, 0.75, 0.5)  # train-kd's and train-nat's logged steps; train-nat also logs an eval loss at step 2


def _pct(value: float, low: float, high: float, scale: float = 100.0) -> str:
    return f"{scale * value:.2f} [{scale * low:.1f}, {scale * high:.1f}]"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _tdg_experiment(db: Store) -> dict[str, Any]:
    """test_tdg_report's experiment `e` (Tables 2 and 1, decoys, a RATIONALYST solve evaluation), training steps
    of train-kd and train-nat, and kd's evaluate job made a child of the problems' import job (outside `e`)."""
    seeded = seed_tdg(db)
    with transaction(db.engine()) as s:
        trains = {j.kind: j.id for j in s.scalars(select(Job).where(Job.kind.in_(["train-kd", "train-nat"])))}
        for kind, job_id in trains.items():
            s.add_all([TrainingMetric(job_id=job_id, step=step, loss=loss, lr=1e-4,
                                      extra={"eval_loss": 0.8} if kind == "train-nat" and step == 2 else None)
                       for step, loss in enumerate(LOSSES, start=1)])
        importer = s.scalar(select(Job.id).where(Job.kind == "import-problems"))
        s.add(JobDependency(job_id=seeded["evaluate"]["kd"], depends_on_id=importer))
        solve = s.scalar(select(Job.id).where(Job.kind == "solve"))
        makers = {j.kind: j.id for j in s.scalars(select(Job).where(Job.kind.like("train-%")))}
    return {**seeded, "trains": trains, "importer": importer, "solve": solve, "makers": makers}


def _provenance_md(md: str) -> dict[int, str]:
    """The provenance table of a Markdown card: job id -> its row."""
    table = md.split("**Jobs behind the numbers**", 1)[1]
    return {int(line.split(" | ")[0].removeprefix("| ")): line for line in table.splitlines()
            if re.match(r"\| \d+ \|", line)}


def _tdg_rows(db: Store, seeded: dict[str, Any]) -> list[list[object]]:
    """The rows of Table 2, each of Table 1's, the comparisons of nat and of kd against sft, and the training table,
    as a Markdown card must hold them, from the reports' own numbers."""
    report = tdg_report(db.engine(), "e")
    subjects = report["subjects"]
    rows: list[list[object]] = [
        [r["setting"], r["model"], *(_pct(r["accuracy"][s], r["ci_low"][s], r["ci_high"][s], 1) for s in subjects),
         _pct(r["avg"], r["avg_ci_low"], r["avg_ci_high"], 1),
         "n/a" if r["gain"] is None else f"{100 * r['gain']:+.1f}%", r["evaluate_job"], r["sample_job"]]
        for r in report["table2"]]
    for t in report["table1"]:
        cells = t["cells"]
        rows += [[f"{t['a']} & {t['b']}", *(c["intersection"] for c in cells)],
                 [t["a"], *(c["solved_a"] for c in cells)], [t["b"], *(c["solved_b"] for c in cells)],
                 ["IoU", *(f"{c['iou']:.2f}" for c in cells)]]
    ev = seeded["evaluate"]
    for setting in ("nat", "kd"):
        a, b = f"{ev[setting]}:greedy", f"{ev['sft']}:greedy"
        c = compare_report(db.engine(), a, b)
        rows.append([f"{setting} against sft", a, b, c["n"], _pct(c["a"]["accuracy"], c["a"]["ci_low"],
                                                                  c["a"]["ci_high"]),
                     _pct(c["b"]["accuracy"], c["b"]["ci_low"], c["b"]["ci_high"]),
                     f"{100 * c['difference']:+.2f} [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]",
                     f"{c['p_mcnemar']:.4g}", c["both"], c["only_a"], c["only_b"], c["neither"]])
    trains = seeded["trains"]
    rows += [[trains["train-kd"], "train-kd", "", 3, "1", "0.5", ""],
             [trains["train-nat"], "train-nat", "", 3, "1", "0.5", "0.8"]]
    return rows


def _cited(db: Store, seeded: dict[str, Any]) -> set[int]:
    """Every job the TDG card's numbers come from, the import job upstream of kd's evaluation, and the training job
    that made each model of Table 2 (named by its sample job's params)."""
    report = tdg_report(db.engine(), "e")
    return ({r["evaluate_job"] for r in report["table2"]} | {r["sample_job"] for r in report["table2"]}
            | {seeded["solve_eval"], seeded["solve"], seeded["importer"], *seeded["makers"].values()})


def test_a_markdown_card_holds_the_reports_numbers_its_images_and_every_job_behind_them(
        db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    seeded = _tdg_experiment(db)
    (db.home / "cards").mkdir()
    out = db.home / "cards" / "e.md"
    code, stdout, err = run_cli(capsys, "report", "card", "--experiment", "e", "--out", str(out))
    assert code == 0, err
    images = db.home / "cards" / "e_files"
    assert stdout == f"wrote the results card of experiment e to {out}, its 3 images in {images}\n"
    md = out.read_text(encoding="utf-8")
    for cells in _tdg_rows(db, seeded):
        assert _row(*cells) in md.splitlines(), cells
    # the RATIONALYST evaluation of `e`'s solve job, as `rplat report rationalyst` gives it
    solved = next(r for r in rationalyst_report(db.engine(), experiment="e")["results"] if r["subject"] == "all")
    assert _row("greedy", "all", 13, f"{solved['correct']:g}", _pct(solved["accuracy"], solved["ci_low"],
                                                                      solved["ci_high"]),
                seeded["solve_eval"], seeded["solve"]) in md.splitlines()

    linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md)
    assert linked == ["e_files/figure-1-rationalyst-accuracy.png", "e_files/figure-2-tdg-accuracy.png",
                      "e_files/figure-3-training-curves.png"]
    assert sorted(p.name for p in images.iterdir()) == [Path(p).name for p in linked]
    assert all((out.parent / p).read_bytes().startswith(PNG) for p in linked)
    assert sorted(p.name for p in out.parent.iterdir()) == ["e.md", "e_files"]  # nothing else written

    provenance = _provenance_md(md)
    assert set(provenance) == _cited(db, seeded)
    kd_eval = seeded["evaluate"]["kd"]
    assert f"| {kd_eval} | evaluate | succeeded | e |" in provenance[kd_eval]
    assert "Table 2; Table 1 kd/neg; Greedy accuracy per setting" in provenance[kd_eval]
    importer = provenance[seeded["importer"]]
    assert "| import-problems | succeeded |  |" in importer and importer.endswith("| upstream of the jobs above |")
    maker = provenance[seeded["makers"]["train-sft"]]  # made e-sft; logged no steps
    assert "| train-sft | succeeded | e | model: student; makes: " in maker
    assert maker.endswith("| upstream of the jobs above |")
    sample = tdg_report(db.engine(), "e")["table2"][0]["sample_job"]
    assert "| model: student; makes: " not in provenance[sample] and "model: student" in provenance[sample]
    assert "problems: test" in provenance[sample] and '"temperature": 0.0' in provenance[sample]

    # the same store gives the same card, byte for byte (images too)
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    assert run_cli(capsys, "report", "card", "--experiment", "e", "--out", str(out))[0] == 0
    assert out.read_text(encoding="utf-8") == md
    assert {p.name: p.read_bytes() for p in images.iterdir()} == before


def test_an_html_card_is_one_file_with_its_images_inside(db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    seeded = _tdg_experiment(db)
    out = db.home / "card.page"
    code, stdout, err = run_cli(capsys, "report", "card", "--experiment", "e", "--file-type", "html",
                                "--out", str(out))
    assert code == 0, err
    assert stdout == f"wrote the results card of experiment e to {out}\n"
    assert not (db.home / "card_files").exists()
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'src="http' not in page
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([^"]+)">', page)
    assert len(images) == 3 and all(base64.b64decode(data).startswith(PNG) for data in images)
    for cells in _tdg_rows(db, seeded):
        assert "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>" in page, cells
    listed = {int(m) for m in re.findall(r"<tr><td>(\d+)</td><td>[a-z-]+</td><td>(?:succeeded|queued)</td>", page)}
    assert listed == _cited(db, seeded)
    # `--format html` (the name people reach for) is `--file-type html`, with the line saying so
    again = db.home / "again.page"
    code, stdout, err = run_cli(capsys, "report", "card", "--experiment", "e", "--format", "html", "--out", str(again))
    assert (code, err) == (0, "rplat: --format is deprecated; use --file-type\n")
    assert again.read_bytes() == out.read_bytes()


def test_the_asc_card_holds_the_curve_and_the_votes_against_sc_and_lists_the_jobs_upstream(
        db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    ids = seed_samples(db)
    job = run_aggregate(db, {"sample_job": ids["sample"], "score_samples_job": ids["score"], "votes": ["f1", "f3"]})
    out = db.home / "asc.md"
    code, _, err = run_cli(capsys, "report", "card", "--experiment", "asc", "--out", str(out))
    assert code == 0, err
    md = out.read_text(encoding="utf-8")
    curve = asc_curve(db.engine(), "asc", repeats=20, seed=0)
    for method in ("sc", "asc-f1", "asc-f3"):
        mine = sorted((r for r in curve if r["method"] == method), key=lambda r: r["k"])
        assert _row("student", method, 3, "vote", *(_pct(r["accuracy"], r["ci_low"], r["ci_high"]) for r in mine),
                    job.id, ids["sample"]) in md.splitlines()
    for method in ("asc-f1", "asc-f3"):
        c = compare_report(db.engine(), f"{job.id}:{method}", f"{job.id}:sc")
        assert (f"| {method} against sc (all samples) | {job.id}:{method} | {job.id}:sc | 3 | "
                f"{_pct(c['a']['accuracy'], c['a']['ci_low'], c['a']['ci_high'])} | "
                f"{_pct(c['b']['accuracy'], c['b']['ci_low'], c['b']['ci_high'])} | "
                f"{100 * c['difference']:+.2f} [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] |") in md
    assert re.findall(r"!\[[^]]*\]\(([^)]+)\)", md) == ["asc_files/figure-1-asc-curve.png"]
    provenance = _provenance_md(md)
    # the sample job is cited; its score-samples job is named in the aggregate job's params: upstream
    assert set(provenance) == {job.id, ids["sample"], ids["score"]}
    assert provenance[ids["score"]].endswith("| upstream of the jobs above |")
    assert f'"score_samples_job": {ids["score"]}' in provenance[job.id]


def test_the_rationalyst_card_holds_the_funnel_and_the_prompt_template_hash(
        db: Store, capsys: pytest.CaptureFixture[str]) -> None:
    world = seed_world(db)
    out = db.home / "rat.md"
    code, _, err = run_cli(capsys, "report", "card", "--experiment", "rat", "--out", str(out))
    assert code == 0, err
    md = out.read_text(encoding="utf-8")
    report = rationalyst_report(db.engine(), experiment="rat")
    funnel = report["funnel"]
    for key, label in (("prefilter_passed", "documents kept by the prefilter"), ("leaks",
                       "leaks (restating the following text, never kept)"), ("kept", "kept by loss delta")):
        assert _row(label, funnel[key]) in md.splitlines()
    assert (funnel["prefilter_passed"], funnel["leaks"], funnel["kept"]) == (3, 1, 1)
    (result,) = report["results"]
    assert _row("rationalyst-implicit", "all", 4, "3", _pct(result["accuracy"], result["ci_low"], result["ci_high"]),
                result["evaluate_job"], result["solve_job"]) in md.splitlines()
    provenance = _provenance_md(md)
    assert "| extract-insert (sha256 t1) |" in provenance[world.extract]
    assert provenance[world.score].endswith("| The mining funnel |")
    assert provenance[result["evaluate_job"]].endswith(
        "| Accuracy per solving method; Accuracy per solving method, all problems |")


@pytest.mark.parametrize(("name", "expect"), [
    ("nope", "experiment 'nope' does not exist"),
    ("waiting", "experiment 'waiting' has no succeeded jobs yet (1 failed, 1 queued)"),
    ("probed", "experiment 'probed' has no results a card shows: none of its succeeded jobs (probe)"),
])
def test_an_experiment_without_results_is_one_sentence_and_nothing_is_written(
        db: Store, capsys: pytest.CaptureFixture[str], name: str, expect: str) -> None:
    with transaction(db.engine()) as s:
        waiting, probed = make.experiment(s, "waiting"), make.experiment(s, "probed")
        make.job(s, "probe", experiment=waiting, status="queued")
        make.job(s, "probe", experiment=waiting, status="failed")
        make.job(s, "probe", experiment=probed)
    for file_type in ("md", "html"):
        code, out, err = run_cli(capsys, "report", "card", "--experiment", name, "--out",
                                 str(db.home / f"card.{file_type}"))
        assert_one_clear_sentence(out, err, code, [expect])
    assert not list(db.home.glob("card*"))
