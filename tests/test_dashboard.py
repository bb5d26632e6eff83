"""`rplat dashboard` in real Chromium: every page and its filters, 127.0.0.1 only, nothing writes; with
`--allow-review`, a review from the Chains page and nothing else; the Problem page's math, and a table's link to it."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from dashboard_seed_tdg import seed_tdg
from sqlalchemy import func, select
from test_cli_errors import assert_one_clear_sentence, run_main

from rplat.dashboard import ALLOW_REVIEW
from rplat.dashboard.queries import open_store
from rplat.models import (
    Experiment,
    Job,
    JobDependency,
    RationaleScore,
    Review,
    SolveTrajectory,
    Step,
    StepCandidate,
    TeacherChain,
)
from rplat.ports import free_port
from rplat.prompts import TEMPLATES, ensure_template
from rplat.store import transaction

import factories as make
from stores import Store

CHROMIUM = Path("/usr/bin/chromium")
STARTUP_SECONDS = 60.0  # Streamlit's first start on a loaded 2-core machine
PAGE_TIMEOUT_MS = 30_000  # one page's first render, its queries included

T0 = dt.datetime(2026, 1, 5, 10, 0, 0)
# Every job ran once, from T0 + 5 s to T0 + 95 s.
RAN: dict[str, Any] = {"attempts": 1, "progress_done": 1, "progress_total": 1, "created_at": T0,
                       "started_at": T0 + dt.timedelta(seconds=5), "finished_at": T0 + dt.timedelta(seconds=95)}
KEPT_RATIONALE = "Tom must add the four apples he buys to the three he has"
DROPPED_RATIONALE = "apples are a kind of fruit"
LEAK_RATIONALE = "He buys 4 more, so he has 7"  # a copy of the following text: the highest delta, and a leak
# (question, gold, greedy's answer, rationalyst-implicit's answer): greedy solves 1-5, implicit solves 1, 2, 6.
PROBLEMS = [
    ("What is 2 + 3?", "5", "5", "5"),
    ("What is 7 * 6?", "42", "42", "42"),
    ("What is 10 - 4?", "6", "6", "16"),
    ("What is 9 + 9?", "18", "18", "17"),
    ("What is 8 / 2?", "4", "4", "3"),
    ("What is 13 + 29?", "42", "41", "42"),
    ("What is 12 * 12?", "144", "121", "100"),
]


def seed(store: Store) -> dict[str, int]:
    """Hand-made rows for every page: three scored rationales (kept, dropped, a leak), two solving methods with
    their evaluations."""
    with transaction(store.engine()) as s:
        experiment = make.experiment(s, "dash")
        imported = make.job(s, "import-problems", experiment=experiment, **RAN)
        model = make.model(s, "tiny", job=imported)
        problems = make.problems(s, make.dataset(s, "gsm", imported), [
            {"external_id": str(k), "benchmark": "gsm8k", "subject": "arithmetic", "question": q, "answer": gold}
            for k, (q, gold, _, _) in enumerate(PROBLEMS)])

        extract = make.job(s, "extract-rationales", {"model": "tiny"}, experiment=experiment, **RAN)
        score = make.job(s, "score-rationales", {"model": "tiny"}, experiment=experiment, **RAN)
        template_id = ensure_template(s, TEMPLATES["extract-insert"])
        # (rationale, loss delta, kept, overlap with the following text, leak)
        scored = [(KEPT_RATIONALE, 1.25, True, 0.125, False), (DROPPED_RATIONALE, -0.375, False, 0.0, False),
                  (LEAK_RATIONALE, 4.5, False, 1.0, True)]
        for problem, (text, delta, kept, overlap, leak) in zip(problems, scored, strict=False):
            extraction = make.extraction(s, extract, model, template_id, "x", "x", problem=problem)
            row = make.rationale(s, extraction, "Tom has 3 apples.", text, "He buys 4 more, so he has 7.",
                                 source="gsm8k")
            s.add(RationaleScore(job_id=score.id, rationale_id=row.id, scorer_model_id=model.id, lp_without=[-2.5],
                                 lp_with=[-2.5 + delta], gamma=0.9, s_without=-2.5, s_with=-2.5 + delta,
                                 loss_delta=delta, tau=0.5, kept=kept, overlap=overlap, leak=leak))

        ids = {"extract": extract.id, "score": score.id}
        for column, method in [(2, "greedy"), (3, "rationalyst-implicit")]:
            solve = make.job(s, "solve", {"method": method, "model": "tiny"}, experiment=experiment, **RAN)
            evaluate = make.job(s, "evaluate", {"solve_job": solve.id}, experiment=experiment, **RAN)
            s.add(JobDependency(job_id=evaluate.id, depends_on_id=solve.id))
            ids[method] = solve.id
            ids[f"evaluate-{method}"] = evaluate.id
            credits = []
            for problem, row in zip(problems, PROBLEMS, strict=True):
                answer, correct = row[column], row[column] == row[1]
                trajectory = SolveTrajectory(job_id=solve.id, problem_id=problem.id, method=method,
                                             final_text=f"The answer is {answer}.", prediction=answer,
                                             normalized_pred=answer, correct=correct, n_steps=1,
                                             stopped_reason="answer")
                s.add(trajectory)
                s.flush()
                step = Step(job_id=solve.id, trajectory_id=trajectory.id, step_idx=0, chosen_candidate_idx=1,
                            rationale_text="work it out" if method != "greedy" else None,
                            text=f"The answer is {answer}.")
                s.add(step)
                s.flush()
                s.add_all([StepCandidate(job_id=solve.id, step_id=step.id, candidate_idx=0,
                                         text="The answer is 0.", score=-3.5, chosen=False),
                           StepCandidate(job_id=solve.id, step_id=step.id, candidate_idx=1,
                                         text=f"The answer is {answer}.", score=-0.75, chosen=True)])
                make.prediction(s, evaluate, problem, model, method, answer, float(correct), vote_mass=1.0,
                                tie_size=1)
                credits.append(float(correct))
            make.evaluation(s, evaluate, model, method, "all", credits)
    return ids


# --- the server and the browser ------------------------------------------------------------------


@contextmanager
def running_dashboard(store: Store, log: Path, *options: str) -> Iterator[tuple[str, int]]:
    """`rplat dashboard OPTIONS` as a real subprocess; yields its URL and port once Streamlit answers its health
    check."""
    port = free_port()
    with log.open("w") as out:
        proc = store.popen("dashboard", "--port", str(port), *options, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if proc.poll() is not None:
                pytest.fail(f"rplat dashboard exited {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"rplat dashboard did not answer within {STARTUP_SECONDS:.0f} s:\n{log.read_text()}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}", port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing; install it with `make chromium` (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"the browser test is required in CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket in LISTEN state on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


# --- the tests ------------------------------------------------------------------------------------


def only(locator: Any) -> Any:
    """`locator` once it matches exactly one element (a rerunning page shows an element's old and new copies for a
    moment)."""
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while locator.count() != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    return locator


def metric(page: Any, label: str) -> str:
    """The value shown by the Streamlit metric with this label."""
    label_box = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    box = page.get_by_test_id("stMetric").filter(has=label_box)
    return box.get_by_test_id("stMetricValue").inner_text(timeout=PAGE_TIMEOUT_MS).strip()


def grid(page: Any, n: int = 0) -> list[dict[str, str]]:
    """The rows of the page's n-th data frame, as far as they are drawn (Streamlit mirrors them in a DOM table)."""
    header, *rows = page.get_by_test_id("stDataFrame").nth(n).locator("table").evaluate(
        "t => [...t.rows].map(r => [...r.cells].map(c => c.innerText))")
    return [dict(zip(header, row, strict=True)) for row in rows]


def grid_once(page: Any, n: int, rows: int) -> list[dict[str, str]]:
    """The n-th data frame's rows once it has `rows` of them: a rerun redraws the page's elements one by one."""
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while len(shown := grid(page, n)) != rows and time.monotonic() < deadline:
        time.sleep(0.2)
    return shown


def grid_when(page: Any, n: int, ready: Callable[[list[dict[str, str]]], bool]) -> list[dict[str, str]]:
    """The n-th data frame's rows once `ready` holds for them: the text above a table can show a rerun's result before
    the table's grid has redrawn its rows."""
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while not ready(shown := grid(page, n)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return shown


def choose(page: Any, label: str, option: str) -> None:
    """Pick `option` in the Streamlit selectbox labelled `label`."""
    box = page.get_by_test_id("stSelectbox").filter(has_text=label).locator("input")
    box.click()
    box.fill(option)  # the options narrow down to the one typed; Enter takes it
    box.press("Enter")


def visit(page: Any, url: str, expect: str, *also: str) -> str:
    """Open a page, wait until `expect` shows and then every text of `also` (Streamlit draws a page's elements one
    by one, so what the caller reads must all have arrived), and return its text; Streamlit must show no error."""
    page.goto(url)
    page.get_by_text(expect).first.wait_for(timeout=PAGE_TIMEOUT_MS)
    text = page.inner_text("body")
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while not all(a in text for a in also) and time.monotonic() < deadline:
        time.sleep(0.2)
        text = page.inner_text("body")
    assert page.get_by_test_id("stException").count() == 0, text
    assert "Page not found" not in text, text
    return text


def shoot(page: Any, directory: Path, name: str) -> None:
    """A full-page screenshot in `directory`, and a copy in $RPLAT_SCREENSHOTS when set (CI keeps them there as
    artefacts: .ci/run sets it to .ci/artifacts/screenshots)."""
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True)
    assert (directory / f"{name}.png").stat().st_size > 0
    kept = os.environ.get("RPLAT_SCREENSHOTS")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        backend = "postgresql" if "postgresql" in os.environ.get("RPLAT_DATABASE_URL", "") else "sqlite"
        shutil.copyfile(directory / f"{name}.png", Path(kept) / f"{name}-{backend}.png")


def test_every_page_shows_the_stores_rows_and_says_so_when_there_are_none(
        db: Store, browser: Any, tmp_path: Path) -> None:
    with running_dashboard(db, tmp_path / "dashboard.log") as (url, port):
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and no other address
        # Streamlit scrolls inside its own container, so a screenshot shows what fits this viewport.
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        for path, what in [("", "rationales"), ("failures", "wrong predictions"), ("intersections", "evaluated runs"),
                           ("chains", "teacher chains"), ("votes", "aggregated votes"),
                           ("training", "training metrics"), ("jobs", "jobs")]:
            visit(page, f"{url}/{path}", f"No {what} yet")
        assert "make demo" in page.inner_text("body")

        ids = seed(db)
        text = visit(page, f"{url}/", "a leak, dropped",  # the highest delta, shown in its context
                     "Tom has 3 apples.", "He buys 4 more, so he has 7.")
        assert [(r["rationale_id"], r["extract_rationales_job_id"], r["score_rationales_job_id"], r["loss_delta"],
                 r["overlap"], r["leak"], r["rationale"]) for r in grid(page)] == [
            ("3", str(ids["extract"]), str(ids["score"]), "4.5", "1", "true", LEAK_RATIONALE),
            ("1", str(ids["extract"]), str(ids["score"]), "1.25", "0.125", "false", KEPT_RATIONALE),
            ("2", str(ids["extract"]), str(ids["score"]), "-0.375", "0", "false", DROPPED_RATIONALE)]
        assert metric(page, "leaks") == "1"
        assert metric(page, "loss delta") == "4.5000"
        assert "Tom has 3 apples." in text and "He buys 4 more, so he has 7." in text
        assert f"extracted by job {ids['extract']}" in text and f"scored by job {ids['score']}" in text
        page.get_by_test_id("stVegaLiteChart").first.wait_for(timeout=PAGE_TIMEOUT_MS)  # the loss-delta histogram
        shoot(page, tmp_path, "rationales")

        # The newest run comes first: rationalyst-implicit, whose first failure is "10 - 4" answered 16.
        text = visit(page, f"{url}/failures", "chosen: The answer is 16.", "rationale: work it out",
                     f"solve job {ids['rationalyst-implicit']}")
        assert metric(page, "prediction") == "16"
        assert metric(page, "gold") == "6"
        assert metric(page, "evaluate job") == str(ids["evaluate-rationalyst-implicit"])
        assert metric(page, "problems answered wrongly") == "4"
        assert "rationale: work it out" in text and f"solve job {ids['rationalyst-implicit']}" in text
        assert [(r["job_id"], r["solve_job_id"], r["prediction"], r["gold"]) for r in grid(page)] == [
            (str(ids["evaluate-rationalyst-implicit"]), str(ids["rationalyst-implicit"]), answer, gold)
            for _, gold, _, answer in PROBLEMS if answer != gold]
        assert [(r["job_id"], r["candidate"], r["score"]) for r in grid(page, 1)] == [
            (str(ids["rationalyst-implicit"]), "The answer is 0.", "-3.5"),
            (str(ids["rationalyst-implicit"]), "The answer is 16.", "-0.75")]
        shoot(page, tmp_path, "failures")

        # The TDG world lands while the dashboard runs: Intersections takes in its runs on the next visit.
        tdg = seed_tdg(db)
        f0, f1, f2, f3 = (f"asc-f{k} / student / job {tdg['aggregate']}" for k in range(4))
        visit(page, f"{url}/intersections", "common problems")
        assert [metric(page, label) for label in ["common problems", "solved by all", "solved by none"]] == [
            "4", "1", "1"]
        page.get_by_test_id("stVegaLiteChart").nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)  # the UpSet chart
        assert [r["problem"] for r in grid(page, 1)] == ["m3"]  # the largest combination first: solved by none
        choose(page, "combination", f"solved only by {f1}, {f2}, {f3} (1 problem)")
        # The grid is drawn on a canvas; its mirror table is in the DOM but hidden.
        page.get_by_test_id("stDataFrame").nth(1).get_by_text("m2", exact=True).wait_for(state="attached",
                                                                                        timeout=PAGE_TIMEOUT_MS)
        assert [(r["problem"], r["gold"], r[f0], r[f1], r[f2], r[f3]) for r in grid(page, 1)] == [
            ("m2", "6", "4", "6", "6", "6")]
        shoot(page, tmp_path, "intersections")
        visit(page, f"{url}/slices", "Positive chains per level, subject and teacher", "Accuracy per subject")
        page.get_by_test_id("stVegaLiteChart").nth(1).wait_for(timeout=PAGE_TIMEOUT_MS)  # accuracy per subject
        shoot(page, tmp_path, "slices")

        visit(page, f"{url}/chains", "positive chains", "rplat dashboard --allow-review")
        assert len(grid(page)) == 10
        # started without --allow-review: no review form, only the hint (a query parameter changes nothing)
        assert page.get_by_test_id("stForm").count() == 0 and page.locator("textarea").count() == 0
        visit(page, f"{url}/chains?allow_review=1", "positive chains", "rplat dashboard --allow-review")
        assert page.get_by_test_id("stForm").count() == 0
        page.get_by_text("only problems where the two labelers disagree on a chain").click()
        # the two problems with all their chains, the disagreeing ones marked
        assert [(r["problem"], r["teacher"], r["sample_idx"], r["label"], r["labelers_disagree"])
                for r in grid_once(page, 0, 4)] == [
            ("m1", "gpt-3.5", "0", "neg", "true"), ("m1", "gpt-3.5", "1", "neg", "false"),
            ("m2", "gpt-3.5", "0", "pos", "false"), ("m2", "gpt-3.5", "1", "neg", "true")]
        shoot(page, tmp_path, "chains")

        visit(page, f"{url}/votes", "only problems where ASC and SC disagree")
        shoot(page, tmp_path, "votes")
        visit(page, f"{url}/training", "training jobs")
        page.get_by_test_id("stVegaLiteChart").first.wait_for(timeout=PAGE_TIMEOUT_MS)
        shoot(page, tmp_path, "training")

        visit(page, f"{url}/jobs", "succeeded")
        with transaction(db.engine()) as s:
            assert metric(page, "succeeded") == str(s.scalar(select(func.count()).select_from(Job)))
        page.get_by_test_id("stVegaLiteChart").first.wait_for(timeout=PAGE_TIMEOUT_MS)  # the timeline
        shoot(page, tmp_path, "jobs")

        visit(page, f"{url}/sql", "Views")
        page.get_by_test_id("stTextArea").locator("textarea").fill("DELETE FROM store.jobs")
        page.get_by_test_id("stButton").get_by_text("run", exact=True).click()
        page.get_by_test_id("stAlertContentError").wait_for(timeout=PAGE_TIMEOUT_MS)
        assert "only read-only queries run here" in page.get_by_test_id("stAlertContentError").inner_text()
        # issue 17: the page reads no file (DuckDB's default temp directory is `.tmp` under the dashboard's working
        # directory, the store's home) and no PostgreSQL catalog; the store's own tables it does read.
        (db.home / ".tmp").mkdir()
        (db.home / ".tmp" / "s.txt").write_text("planted-secret-for-the-sql-page\n")
        for query, says in [("SELECT * FROM read_text('.tmp/s.txt')", "the function read_text reaches outside"),
                            ("SELECT rolname, rolpassword FROM store.pg_catalog.pg_authid", "pg_authid")]:
            page.get_by_test_id("stTextArea").locator("textarea").fill(query)
            page.get_by_test_id("stButton").get_by_text("run", exact=True).click()
            page.get_by_test_id("stAlertContentError").filter(has_text=says).wait_for(timeout=PAGE_TIMEOUT_MS)
            assert "planted-secret" not in page.inner_text("body")
        page.get_by_test_id("stTextArea").locator("textarea").fill("SELECT count(*) AS n FROM store.jobs")
        page.get_by_test_id("stButton").get_by_text("run", exact=True).click()
        page.get_by_text("1 rows").wait_for(timeout=PAGE_TIMEOUT_MS)
        with transaction(db.engine()) as s:
            assert grid(page) == [{"n": str(s.scalar(select(func.count()).select_from(Job)))}]
        shoot(page, tmp_path, "sql")
        assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted(
            ["rationales", "failures", "intersections", "slices", "chains", "votes", "training", "jobs", "sql"])
        page.close()


def test_a_dashboard_started_with_allow_review_saves_a_chain_review(db: Store, browser: Any, tmp_path: Path) -> None:
    tdg = seed_tdg(db)
    with transaction(db.engine()) as s:
        wrong = s.scalar(select(TeacherChain.id).where(TeacherChain.problem_id == tdg["problem0"],
                                                        TeacherChain.teacher == "gpt-3.5",
                                                        TeacherChain.sample_idx == 1))
    with running_dashboard(db, tmp_path / "dashboard.log", "--allow-review") as (url, port):
        assert listening_addresses(port) == {"0100007F"}
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        visit(page, f"{url}/chains", "positive chains", "save the review")
        assert metric(page, "positive chains") == "4"
        choose(page, "chain", f"chain {wrong}, gpt-3.5 sample 1")
        form = page.get_by_test_id("stForm")
        form.get_by_text(f"Review chain {wrong}").wait_for(timeout=PAGE_TIMEOUT_MS)
        # while the page reruns after the choice, Streamlit keeps the old elements beside the new ones: act once
        # the form holds one of each
        only(form.get_by_test_id("stRadio").get_by_text("pos", exact=True)).click()
        only(form.locator("textarea")).fill("the grader accepts 6 here")
        only(form.get_by_test_id("stTextInput").locator("input")).fill("ada")
        only(form.get_by_role("button", name="save the review")).click()
        said = page.get_by_test_id("stAlertContentSuccess").inner_text(timeout=PAGE_TIMEOUT_MS)
        with transaction(db.engine()) as s:
            (row,) = s.scalars(select(Review)).all()
            assert (row.target_id, row.machine_value, row.new_value, row.reviewer, row.reason) == (
                wrong, "neg", "pos", "ada", "the grader accepts 6 here")
        assert said == f"review #{row.id}: chain {wrong} label neg (machine) \u2192 pos, by ada."  # Streamlit's arrow
        # the page reruns after the save: wait for the rerun's values rather than read the page mid-run
        heading = f"chain {wrong}, gpt-3.5 sample 1: pos (review; the labeler said neg)"
        page.get_by_text(heading).first.wait_for(timeout=PAGE_TIMEOUT_MS)
        deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
        while metric(page, "positive chains") != "5" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(page, "positive chains") == "5"
        shoot(page, tmp_path, "chain-review")
        page.close()


def click_link(page: Any, frame: Any, row: int) -> Any:
    """Click the link in the first column of `frame`'s row (the grid is a canvas: by position, rows and header 35
    pixels high, the link's text at the cell's left); returns the tab it opens."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    frame.scroll_into_view_if_needed()
    box = frame.bounding_box()
    x, y = box["x"] + 40, box["y"] + 35 * (row + 1) + 17
    deadline = time.monotonic() + PAGE_TIMEOUT_MS / 1000
    while True:  # the grid makes a cell's text a link once the pointer hovers it: move there, then click
        page.mouse.move(x, y)
        try:
            with page.context.expect_page(timeout=2_000) as opened:
                page.mouse.click(x, y)
            return opened.value
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise


def test_the_problem_page_renders_math_and_a_link_on_intersections_opens_it(
        db: Store, browser: Any, tmp_path: Path) -> None:
    tdg = seed_tdg(db)
    problem = tdg["problem3"]  # "What is 9 + 9?", solved by none of the runs: the first combination Intersections shows
    with running_dashboard(db, tmp_path / "dashboard.log") as (url, port):
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        for visit_number in (1, 2):  # the first visit opens the store's connection; the second is what people see
            started = time.monotonic()
            text = visit(page, f"{url}/problem?problem={problem}", "Teacher chains", "What is 9 + 9?", "Reviews")
            print(f"Problem page, visit {visit_number}: its last section drawn {time.monotonic() - started:.2f} s "
                  "after the request")
        assert f"Problem #{problem}" in text and "17 (tie of 2), credit 0" in text  # asc-f3's tie of 17 and 16
        chain = page.get_by_test_id("stExpander").filter(has_text="smol sample 0")
        chain.locator("summary").click()
        chain.locator(".katex").wait_for(timeout=PAGE_TIMEOUT_MS)  # its "\\boxed{18}", drawn by KaTeX
        assert chain.locator(".katex-html").inner_text().strip(" \n\t\u200b") == "18"
        shoot(page, tmp_path, "problem")

        visit(page, f"{url}/problem?problem=abc", "is not a problem id")
        page.get_by_test_id("stAlertContentError").wait_for(timeout=PAGE_TIMEOUT_MS)

        visit(page, f"{url}/intersections", "common problems")
        frame = page.get_by_test_id("stDataFrame").nth(1)
        frame.get_by_text("m3", exact=True).wait_for(state="attached", timeout=PAGE_TIMEOUT_MS)
        assert [r["problem page"] for r in grid(page, 1)] == [
            f"problem?problem={problem}#%23{problem}%20%C2%B7%20What%20is%209%20%2B%209%3F"]
        opened = click_link(page, frame, 0)
        opened.get_by_text(f"Problem #{problem}").wait_for(timeout=PAGE_TIMEOUT_MS)
        assert opened.url.startswith(f"{url}/problem?problem={problem}#")
        opened.get_by_text("What is 9 + 9?").wait_for(timeout=PAGE_TIMEOUT_MS)
        opened.close()
        page.close()


def test_the_dashboards_connection_cannot_write(db: Store) -> None:
    seed(db)
    con = open_store(db.url)
    for statement in ["INSERT INTO store.experiments (name, created_at) VALUES ('intruder', now())",
                      "UPDATE store.experiments SET name = 'renamed'",
                      "DELETE FROM store.jobs"]:
        with pytest.raises(duckdb.Error):
            con.execute(statement)
    con.close()
    with transaction(db.engine()) as s:
        assert s.scalars(select(Experiment.name)).all() == ["dash"]
        assert s.scalar(select(func.count()).select_from(Job)) == 7


class Started(Exception):
    """Raised in place of exec'ing Streamlit: what `rplat dashboard` would have run."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv, self.env = argv, env


@pytest.mark.parametrize("flag", [False, True], ids=["read-only", "allow-review"])
def test_only_the_allow_review_flag_turns_the_review_forms_on(db: Store, flag: bool, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        raise Started(argv, env)

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setenv(ALLOW_REVIEW, "1")  # left over in the shell: without the flag it must not count
    with pytest.raises(Started) as started:
        run_main(["dashboard", "--port", str(free_port()), *(["--allow-review"] if flag else [])], monkeypatch,
                 capsys, db.home)
    argv, env = started.value.argv, started.value.env
    assert argv[argv.index("--server.address") + 1] == "127.0.0.1"
    assert env.get(ALLOW_REVIEW) == ("1" if flag else None)
    assert ("read-only but for reviews" in capsys.readouterr().err) == flag


def test_dashboard_refuses_a_store_that_is_not_at_head(empty_db: Store) -> None:
    proc = empty_db.rplat("dashboard", "--port", str(free_port()), timeout=60)
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, ["not at head", "rplat db upgrade"])


def test_dashboard_refuses_a_port_in_use(db: Store) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = db.rplat("dashboard", "--port", str(port), timeout=60)
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, [f"cannot listen on 127.0.0.1:{port}"])
