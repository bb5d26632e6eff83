"""The Problem page (`problem?problem=ID`), the links to it from every table naming a problem, and the text rendering
every page uses (dashboard/render.py: KaTeX math in Markdown, everything else inert)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import apptests
import pandas as pd
import pyarrow as pa
import pytest
import streamlit as st
from dashboard_seed_tdg import seed_tdg
from markdown_it import MarkdownIt
from sqlalchemy import select
from streamlit.testing.v1 import AppTest

from rplat import reviews
from rplat.dashboard import ALLOW_REVIEW, app
from rplat.dashboard.common import REVIEW_OFF, literal
from rplat.dashboard.problem_page import problem_page as problem_page_function
from rplat.dashboard.problem_queries import why_chosen
from rplat.dashboard.render import (
    LINK_COLUMN,
    RAW,
    answer_markdown,
    named_url,
    problem_name,
    problem_url,
    to_markdown,
)
from rplat.models import Problem, Review, SolveTrajectory, Step, StepCandidate, TeacherChain
from rplat.prompts import TEMPLATES, ensure_template
from rplat.store import transaction

import factories as make
from stores import MigratedTemplates, Store, make_store

NASTY_QUESTION = ("Compute $\\frac{1}{2} + \\frac{1}{2}$. <b>bold</b> <script>alert(1)</script> "
                  "[click](javascript:alert(1)) ![img](http://x/y.png)\n# heading\n`code` :red[red]")
HASH = hashlib.sha256(b"a MATH problem").hexdigest()  # how a MATH store names its problems
# RATIONALYST's two steps on "What is 2 + 3?": (rationale, [(candidate, score)], chosen candidate)
STEPS = [("We need $2 + 3$.", [("So $2 + 3 = 6$.", -2.5), ("So $2 + 3 = 5$.", -0.5)], 1),
         (None, [("\\boxed{5}", -0.25)], 0)]
SECTIONS = ["Question", "Gold answer", "Every run's answer", "Steps, rationales and candidates", "Teacher chains",
            "Samples and votes", "Reviews"]


def seed_problem(store: Store) -> dict[str, int]:
    """The TDG world, plus on its first problem a RATIONALYST solve and evaluation, a review of its gold answer and
    one of a chain; plus a MATH-like problem named by a hash whose question tries every injection."""
    ids = seed_tdg(store)
    with transaction(store.engine()) as s:
        experiment = make.experiment(s, "problem-page")
        model = make.model(s, "rationalyst-dash")
        solve = make.job(s, "solve", {"method": "rationalyst-implicit"}, experiment=experiment, model=model)
        evaluate = make.job(s, "evaluate", {"solve_job": solve.id}, experiment=experiment)
        imported = make.job(s, "import-problems", experiment=experiment)
        (nasty,) = make.problems(s, make.dataset(s, "math-hash", imported), [
            {"external_id": HASH, "benchmark": "math", "split": "test", "subject": "Algebra", "level": "Level 5",
             "question": NASTY_QUESTION, "answer": "1"}])
        first = s.get(Problem, ids["problem0"])
        trajectory = SolveTrajectory(job_id=solve.id, problem_id=first.id, method="rationalyst-implicit",
                                     final_text="\\boxed{5}", prediction="5", normalized_pred="5", correct=True,
                                     n_steps=2, stopped_reason="answer")
        s.add(trajectory)
        s.flush()
        for step_idx, (rationale, candidates, chosen) in enumerate(STEPS):
            step = Step(job_id=solve.id, trajectory_id=trajectory.id, step_idx=step_idx, rationale_text=rationale,
                        chosen_candidate_idx=chosen, text=candidates[chosen][0])
            s.add(step)
            s.flush()
            s.add_all([StepCandidate(job_id=solve.id, step_id=step.id, candidate_idx=k, text=text, score=score,
                                     chosen=k == chosen) for k, (text, score) in enumerate(candidates)])
        make.prediction(s, evaluate, first, model, "rationalyst-implicit", "5", 1.0, tie_size=1)
        extract = make.job(s, "extract-rationales", experiment=experiment)
        extraction = make.extraction(s, extract, model, ensure_template(s, TEMPLATES["extract-insert"]), "x", "x",
                                     problem=first)
        make.rationale(s, extraction, "2 + 3", "add $2$ and $3$", "= 5", source="math")
        make.prediction(s, evaluate, nasty, model, "rationalyst-implicit", "\\frac{1}{2}", 0.0, tie_size=1)
        ids.update({"solve": solve.id, "evaluate": evaluate.id, "nasty": nasty.id})
    chain = _chain_id(store, ids["problem0"], "gpt-3.5", 1)
    engine = store.engine()
    ids["gold-review"] = reviews.add(engine, "problem", ids["problem0"], "\\frac{10}{2}", reviewer="ada",
                                     reason="the same five, as the key writes it").review.id
    ids["chain-review"] = reviews.add(engine, "chain", chain, "pos", reviewer="ada",
                                      reason="the grader accepts this").review.id
    ids["chain"] = chain
    return ids


def _chain_id(store: Store, problem_id: int, teacher: str, sample_idx: int) -> int:
    with transaction(store.engine()) as s:
        return int(s.scalar(select(TeacherChain.id).where(TeacherChain.problem_id == problem_id,
                                                          TeacherChain.teacher == teacher,
                                                          TeacherChain.sample_idx == sample_idx)))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          _templates: MigratedTemplates) -> Iterator[tuple[Store, dict[str, int]]]:
    """One seeded store per backend, shared by the tests that only read it."""
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param), templates=_templates):
        yield store, seed_problem(store)


def problem_page(problem: str | None = None, raw: bool = False) -> AppTest:
    """The Problem page as the URL `problem?problem=<problem>` opens it."""
    at = AppTest.from_string("from rplat.dashboard.problem_page import problem_page\nproblem_page()",
                             default_timeout=apptests.RUN_TIMEOUT)
    if problem is not None:
        at.query_params["problem"] = problem
    if raw:
        at.session_state[RAW] = True
    return at.run()


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def markdown(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def chart_data(at: AppTest, n: int) -> pd.DataFrame:
    proto = at.get("vega_lite_chart")[n].proto
    return pd.concat([pa.ipc.open_stream(d.data.data).read_pandas() for d in proto.datasets], ignore_index=True)


def link_columns(at: AppTest, n: int) -> dict[str, Any]:
    """The column_config of the page's n-th data frame, by column."""
    return json.loads(at.dataframe[n].proto.columns or "{}")


# --- rendering ------------------------------------------------------------------------------------------


def split_math(markdown_text: str) -> tuple[list[str], str]:
    """(the math bodies, the rest) of to_markdown's output, reading escapes as Markdown does."""
    bodies, rest, i = [], [], 0
    while i < len(markdown_text):
        if markdown_text[i] == "\\":
            rest.append(markdown_text[i:i + 2])
            i += 2
        elif markdown_text.startswith("$$\n", i):
            end = markdown_text.index("\n$$", i + 3)
            bodies.append(markdown_text[i + 3:end])
            i = end + 3
        elif markdown_text[i] == "$":
            end = markdown_text.index("$", i + 1)
            bodies.append(markdown_text[i + 1:end])
            rest.append("MATH")
            i = end + 1
        else:
            rest.append(markdown_text[i])
            i += 1
    return bodies, "".join(rest)


def html_of(text: str) -> tuple[list[str], str]:
    """The math bodies of to_markdown(text), and the HTML CommonMark (raw HTML on) makes of the rest."""
    bodies, rest = split_math(to_markdown(text))
    return bodies, MarkdownIt("commonmark", {"html": True}).render(rest)


INERT = re.compile(r"<(?!/?(p|br ?/?)>)")  # the only tags plain text may become: paragraphs and line breaks


@pytest.mark.parametrize("text", [
    "<b>bold</b> <script>alert(1)</script> <img src=x onerror=alert(1)> &lt; &amp;",
    "[click](javascript:alert(1)) ![img](http://x/y.png) <http://x.org> [ref]\n\n[ref]: http://x.org",
    "# heading\n## two\nsetext\n===\n- item\n* item\n+ item\n1. first\n2) second\n> quote\n---\n***",
    "`code` ``more`` ```\nfence\n```\n~~~\nfence\n~~~\n    indented code\n\tindented with a tab",
    "*em* _em_ **strong** __strong__ ~~strike~~ | a | b |\n|---|---|\n| 1 | 2 |",
    ":red[red] :smile: :material/home: \\ trailing backslash\\",
    "unbalanced $ dollar, $5 and $10, $ spaced $, $$ never closed, \\[ never closed, \\( never closed",
    "\\boxed{never closed and \\boxed{} empty and }} braces {{",
    "$a$ <b>between</b> $b$ [link](x) \\(c\\) `d` \\[e\\] # f",
])
def test_to_markdown_lets_no_markdown_or_html_out_of_the_text(text: str) -> None:
    _, html = html_of(text)
    assert INERT.search(html) is None, html


def test_to_markdown_keeps_every_character_of_the_plain_text() -> None:
    text = "a <b> [c](d) `e` # f *g* :h: \\ i | & ~ ^ _ {} ! '\"?"
    _, html = html_of(text)
    assert MarkdownIt("commonmark").render(to_markdown(text)) == html
    unescaped = re.sub(r"\\(.)", r"\1", to_markdown(text))
    assert unescaped == text


@pytest.mark.parametrize(("text", "bodies"), [
    ("What is $\\frac{1}{2}$ of 4?", ["\\frac{1}{2}"]),
    ("inline \\(x^2\\) and display \\[\\sum_{i=1}^n i\\]", ["x^2", "\\sum_{i=1}^n i"]),
    ("$$\\int_0^1 x\\,dx$$", ["\\int_0^1 x\\,dx"]),
    ("so the answer is \\boxed{\\frac{1}{2}}.", ["\\boxed{\\frac{1}{2}}"]),
    ("$a$$b$", ["a", "b"]),
    ("$\\text{costs } \\$5$", ["\\text{costs } \\text{\\textdollar}5"]),
    ("line one $x$\nline two $y$", ["x", "y"]),
])
def test_to_markdown_turns_every_delimiter_into_katex_math(text: str, bodies: list[str]) -> None:
    assert split_math(to_markdown(text))[0] == bodies


def test_display_math_becomes_a_block_and_inline_math_stays_in_its_line() -> None:
    assert to_markdown("Let \\[x = 1\\] so \\(y\\)") == "Let\n\n$$\nx = 1\n$$\n\nso $y$"
    assert to_markdown("What is $\\frac{1}{2}$ of 4?") == "What is $\\frac{1}{2}$ of 4\\?"


def test_a_dollar_that_opens_no_math_stays_a_dollar_sign() -> None:
    assert to_markdown("costs $5 and $10") == "costs \\$5 and \\$10"
    assert to_markdown("one $ alone") == "one \\$ alone"
    assert to_markdown("escaped \\$x\\$ is money") == "escaped \\$x\\$ is money"
    assert to_markdown("$x\n\ny$") == "\\$x  \n  \ny\\$"  # math never spans paragraphs


def test_lines_keep_their_breaks_and_indentation() -> None:
    assert to_markdown("a\n  b\n\tc") == "a  \n&#160;&#160;b  \n&#160;&#160;&#160;&#160;c"


def test_very_long_text_converts_whole_whatever_its_delimiters() -> None:
    long = "Let $x$ be. " * 20_000 + "$a " * 20_000 + "\\[ " * 20_000 + "\\boxed{" * 2_000 + "end"
    out = to_markdown(long)
    bodies, rest = split_math(out)
    assert bodies == ["x"] * 20_000
    assert rest.endswith("end") and rest.count("\\$a") == 20_000 and rest.count("\\\\\\[") == 20_000
    assert to_markdown("x" * 300_000) == "x" * 300_000


def test_empty_text_is_empty_markdown() -> None:
    assert to_markdown(None) == "" and to_markdown("") == ""


def test_answers_are_math_when_they_look_like_latex() -> None:
    assert answer_markdown("\\frac{1}{2}") == "$\\frac{1}{2}$"
    assert answer_markdown("x^2") == "$x^2$"
    assert answer_markdown("42") == "42"
    assert answer_markdown("(A) <b>") == "\\(A\\) \\<b\\>"
    assert answer_markdown(None) == "-" and answer_markdown(float("nan")) == "-"


def test_a_problem_is_named_by_its_id_and_the_start_of_its_question() -> None:
    assert problem_name(12, "Compute  2 +\n3.") == "#12 · Compute 2 + 3."
    assert problem_name(12, "x" * 100) == "#12 · " + "x" * 59 + "…"
    assert problem_name(7, None) == "#7"
    assert problem_url(12) == "problem?problem=12"
    url = named_url(12, "What is 2 + 3?")
    assert url.startswith("problem?problem=12#") and unquote(url.split("#", 1)[1]) == "#12 · What is 2 + 3?"


def candidates(*rows: tuple[int, float | None, bool]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["candidate_idx", "score", "chosen"])


def test_why_chosen_explains_the_winner_by_its_score() -> None:
    assert why_chosen(candidates((0, -2.5, False), (1, -0.5, True))) == (
        "chosen: highest score s=-0.500 of 2 candidates (next s=-2.500)")
    assert why_chosen(candidates((0, -0.25, True))) == "chosen: the only candidate (s=-0.250)"
    assert why_chosen(candidates((0, -1.0, True), (1, -1.0, False))) == (
        "chosen: highest score s=-1.000 of 2 candidates (tied with 1 other; the first of them)")
    assert why_chosen(candidates((0, -3.0, True), (1, -1.0, False))) == (
        "chosen: candidate 0, s=-3.000, below the highest s=-1.000")
    assert why_chosen(candidates((0, None, True), (1, None, False))) == (
        "chosen: candidate 0 (the candidates carry no score)")
    assert why_chosen(candidates((0, -1.0, False))) == "no candidate chosen"


# --- the page -----------------------------------------------------------------------------------------------


def test_the_problem_page_shows_every_section_of_a_seeded_problem(ids: dict[str, int]) -> None:
    at = ok(problem_page(str(ids["problem0"])))
    assert at.title[0].value == f"Problem #{ids['problem0']}"
    assert [s.value for s in at.subheader] == SECTIONS
    shown = markdown(at)
    assert "What is 2 \\+ 3\\?" in shown  # the question, rendered
    assert "$\\frac{10}{2}$" in shown  # the gold answer in effect (reviewed), as math
    assert "set by a review; the dataset says 5" in captions(at)

    answers = at.dataframe[0].value
    assert answers[["run", "answer", "credit", "tie_size"]].values.tolist()[:3] == [
        [f"rationalyst-implicit / rationalyst-dash / job {ids['evaluate']}", "5", 1.0, 1],
        [f"greedy / student / job {ids['aggregate']}", "5", 1.0, 1],
        [f"sc / student / job {ids['aggregate']}", "5", 1.0, 1]]
    assert len(answers) == 7  # RATIONALYST's, greedy, sc, asc-f0..f3

    assert any(m.startswith("**solve job") and "rationalyst\\-implicit" in m for m in shown)
    assert "rationale: We need $2 + 3$\\." in shown
    assert "**chosen** 1 (s=-0.500): So $2 + 3 = 5$\\." in shown
    assert "candidate 0 (s=-2.500): So $2 + 3 = 6$\\." in shown
    assert "chosen: highest score s=-0.500 of 2 candidates (next s=-2.500)" in captions(at)
    assert "chosen: the only candidate (s=-0.250)" in captions(at)

    grid = chart_data(at, 0)  # teacher x sample, by label; the reviewed chain is positive now
    assert sorted(zip(grid["teacher"], grid["sample_idx"], grid["label"], grid["mark"], strict=True)) == [
        ("gpt-3.5", 0, "pos", "pos"), ("gpt-3.5", 1, "pos", "pos"), ("smol", 0, "pos", "pos")]
    assert [e.label for e in at.expander if e.label.startswith("chain")] == [
        f"chain {c} · {literal('gpt-3.5')} sample {k} · pos" + (" (review; the labeler said neg)" if k == 1 else "")
        for k, c in enumerate(sorted(grid.loc[grid["teacher"] == "gpt-3.5", "chain_id"]))] + [
        f"chain {int(grid.loc[grid['teacher'] == 'smol', 'chain_id'].iloc[0])} · smol sample 0 · pos"]
    assert "2 \\+ 3 \\= 5\\, so $\\boxed{5}$\\." in shown  # a chain's text, its bare \boxed as math

    samples, votes = at.dataframe[1].value, at.dataframe[2].value
    assert samples[["sample_idx", "extracted_answer", "score"]].values.tolist() == [
        [0, "5", 0.875], [1, "5", 0.75], [2, "6", 0.125], [3, "7", 0.25]]
    assert votes[["method", "answer", "credit", "tie_size"]].values.tolist() == [
        ["greedy", "5 ✓", 1.0, 1], ["sc", "5 ✓", 1.0, 1], ["asc-f0", "5 ✓", 1.0, 1], ["asc-f1", "5 ✓", 1.0, 1],
        ["asc-f2", "5 ✓", 1.0, 1], ["asc-f3", "5 ✓", 1.0, 1]]

    history = at.dataframe[-1].value
    assert history[["review_id", "target", "new_value", "reviewer"]].values.tolist() == [
        [ids["gold-review"], "problem", "\\frac{10}{2}", "ada"], [ids["chain-review"], "chain", "pos", "ada"]]
    assert REVIEW_OFF in captions(at) and len(at.text_input) == 0


def test_a_tie_and_the_labelers_disagreement_are_marked(ids: dict[str, int]) -> None:
    at = ok(problem_page(str(ids["problem2"])))  # 10 - 4: SC ties 4 and 6; the labelers disagree on a chain
    (runs,) = [m for m in markdown(at) if m.startswith("- ")]
    assert f"- {literal('sc / student / job')} {ids['aggregate']}: 4 (tie of 2: 4, 6), credit 0.5\n" in runs
    # asc-f0's tie of the same answers was written without them (as by a job before they were recorded)
    assert f"- {literal('asc-f0 / student / job')} {ids['aggregate']}: 4 (tie of 2), credit 0.5\n" in runs
    table = at.dataframe[0].value.set_index("run")
    assert table.loc[f"sc / student / job {ids['aggregate']}", "answer as shown"] == "4 (tie of 2: 4, 6; credit 0.5)"
    assert list(table.loc[f"sc / student / job {ids['aggregate']}", "tied_answers"]) == ["4", "6"]
    grid = chart_data(at, 0)
    assert sorted(grid["mark"]) == ["neg ≠", "pos"]
    assert any("≠ the labelers disagree" in e.label for e in at.expander)


def test_the_problem_comes_from_the_query_parameter(ids: dict[str, int]) -> None:
    for key in ["problem1", "nasty"]:
        at = ok(problem_page(str(ids[key])))
        assert at.title[0].value == f"Problem #{ids[key]}"
    assert "What is 7 \\* 6\\?" in markdown(ok(problem_page(str(ids["problem1"]))))


def test_a_hash_named_problems_question_is_rendered_and_nothing_in_it_gets_out(ids: dict[str, int]) -> None:
    at = ok(problem_page(str(ids["nasty"])))
    (question,) = [m for m in markdown(at) if m.startswith("Compute")]
    assert question == to_markdown(NASTY_QUESTION) and "$\\frac{1}{2} + \\frac{1}{2}$" in question
    assert "\\<script\\>" in question and "\\[click\\]" in question
    assert f"external id `{HASH}`" in at.caption[0].value


@pytest.mark.parametrize(("given", "says"), [
    ("abc", "abc is not a problem id"), ("-3", "\\-3 is not a problem id"), ("1e3", "1e3 is not a problem id"),
    ("99999999999999999999999", "is not a problem id"), ("424242", "There is no problem 424242 in this store")])
def test_a_missing_or_invalid_problem_id_says_what_to_do(ids: dict[str, int], given: str, says: str) -> None:
    at = ok(problem_page(given))
    (error,) = [e.value for e in at.error]
    assert says in error and "link" in error
    assert [s.value for s in at.subheader] == []


def test_without_a_problem_id_the_page_asks_for_one(ids: dict[str, int]) -> None:
    at = ok(problem_page())
    assert "No problem chosen" in at.info[0].value
    at.text_input[0].input(str(ids["problem1"])).run()
    assert at.query_params["problem"] == str(ids["problem1"])
    assert ok(at).title[0].value == f"Problem #{ids['problem1']}"


def test_the_raw_toggle_shows_the_stored_text(ids: dict[str, int]) -> None:
    at = ok(problem_page(str(ids["nasty"]), raw=True))
    assert NASTY_QUESTION in [t.value for t in at.text]
    assert not any(m.startswith("Compute") for m in markdown(at))


def test_the_app_has_the_problem_page_and_the_raw_toggle(ids: dict[str, int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A table's link opens url_path `problem` (AppTest opens no page by its path: the browser test does that).
    pages: list[Any] = []

    class Navigation:
        def run(self) -> None:
            pass

    monkeypatch.setattr(st, "Page", lambda page, **options: (page, options))  # outside a run a Page keeps nothing
    monkeypatch.setattr(st, "navigation", lambda given, **options: (pages.extend(given), Navigation())[1])
    app.main()
    assert (problem_page_function, {"title": "Problem", "url_path": "problem"}) in pages
    monkeypatch.undo()
    at = ok(AppTest.from_file(app.__file__, default_timeout=apptests.RUN_TIMEOUT).run())
    assert at.toggle(key=RAW).label == "show raw text"


# --- links from the tables -------------------------------------------------------------------------------


def assert_links(at: AppTest, n: int) -> pd.DataFrame:
    """The n-th table has a link column to the Problem page of each row's problem, named by it, before its id."""
    rows = at.dataframe[n].value
    columns = rows.columns.tolist()
    assert columns[columns.index("problem_id") - 1] == LINK_COLUMN
    assert link_columns(at, n)[LINK_COLUMN]["type_config"]["type"] == "link"
    for url, problem_id in zip(rows[LINK_COLUMN], rows["problem_id"], strict=True):
        assert url.startswith(f"problem?problem={problem_id}#")
        assert unquote(url.split("#", 1)[1]).startswith(f"#{problem_id} · ")
    return rows


def test_every_table_naming_a_problem_links_to_its_page(ids: dict[str, int]) -> None:
    at = ok(apptests.page("tdg_pages", "chains_page"))
    rows = assert_links(at, 0)
    assert unquote(rows[LINK_COLUMN].iloc[0].split("#", 1)[1]) == f"#{ids['problem0']} · What is 2 + 3?"
    assert any(f"(problem?problem={ids['problem0']})" in m for m in markdown(at))
    at = ok(apptests.page("tdg_pages", "votes_page"))
    for n in [1, 2, 3]:  # the comparison's flips, the votes per problem... every one with a problem_id
        if "problem_id" in at.dataframe[n].value:
            assert_links(at, n)
    at = ok(apptests.page("app", "failures_page"))
    rows = assert_links(at, 0)
    nasty = rows[rows["problem_id"] == ids["nasty"]]
    assert unquote(nasty[LINK_COLUMN].iloc[0].split("#", 1)[1]).startswith(f"#{ids['nasty']} · Compute $")
    rows = assert_links(ok(apptests.page("app", "rationales_page")), 0)  # a rationale mined from a problem
    assert rows["problem_id"].tolist() == [ids["problem0"]]
    at = ok(apptests.page("app", "intersections_page"))
    assert_links(at, 1)  # the chosen combination's problems, after the accuracies
    assert_links(at, 3)  # the flips against the baseline, after the comparison


def test_tables_without_problems_have_no_link_column(ids: dict[str, int]) -> None:
    at = ok(apptests.page("app", "jobs_page"))
    assert LINK_COLUMN not in at.dataframe[0].value.columns


# --- reviews from the page ---------------------------------------------------------------------------------


def test_with_allow_review_the_page_reviews_the_gold_answer_and_a_chain(db: Store,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    made = seed_tdg(db)
    monkeypatch.setenv(ALLOW_REVIEW, "1")
    monkeypatch.setenv("RPLAT_REVIEWER", "grace")
    at = ok(problem_page(str(made["problem3"])))
    key = f"review-problem-{made['problem3']}"
    assert at.text_input(key=f"{key}-value").value == "18"  # the gold in effect
    assert at.radio(key=f"review-chain-{at.selectbox[0].value}-value").value in ("pos", "neg")
    at.text_input(key=f"{key}-value").input("\\frac{36}{2}")
    at.text_area(key=f"{key}-reason").input("as the key writes it")
    at = ok(at.button(key=f"{key}-save").click().run())
    with transaction(db.engine()) as s:
        (row,) = s.scalars(select(Review)).all()
        assert (row.target_table, row.target_id, row.field, row.machine_value, row.new_value, row.reviewer) == (
            "problems", made["problem3"], "answer", "18", "\\frac{36}{2}", "grace")
    assert "$\\frac{36}{2}$" in markdown(at)  # the page read again: the reviewed gold in effect
    assert at.dataframe[-1].value["review_id"].tolist() == [row.id]

    at.text_input(key=f"{key}-value").input(" ")
    at.text_area(key=f"{key}-reason").input("blank")
    at = ok(at.button(key=f"{key}-save").click().run())
    assert [e.value for e in at.error] == ["a gold answer is a non-empty string; write it in the gold answer box."]
