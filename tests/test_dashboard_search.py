"""Search and paging on Chains, Votes and Failures (queries and AppTest pages), on a MATH-like store of 420
problems keyed by 64-character hashes: 5,880 chains, one aggregate run's votes and failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apptests
import duckdb
import pytest
from dashboard_seed_scale import external_id, seed_scale, words_of
from dashboard_seed_tdg import seed_tdg
from streamlit.testing.v1 import AppTest

from rplat import analytics
from rplat.dashboard import queries, serve, tdg_queries
from rplat.models import TeacherChain
from rplat.store import transaction

import factories as make
from stores import MigratedTemplates, Store, make_store

PROBLEMS = 420  # more than a page (100 rows) of problems, and of one run's failures
CHAINS = 14 * PROBLEMS
K = 137  # the problem the tests look for


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          _templates: MigratedTemplates) -> Iterator[tuple[Store, dict[str, Any]]]:
    """One seeded store per backend, shared by the tests (they only read it)."""
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param), templates=_templates):
        yield store, seed_scale(store, PROBLEMS)


def page(module: str, name: str) -> AppTest:
    at = apptests.page(module, name)
    assert not at.exception, [e.value for e in at.exception]
    return at


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def searched(at: AppTest, text: str) -> AppTest:
    at.text_input[0].input(text).run()
    assert at.text_input[0].label == "search problems"
    assert not at.exception, [e.value for e in at.exception]
    return at


# --- queries ------------------------------------------------------------------------------------------


def test_two_question_words_find_one_problem_among_hundreds(duck: duckdb.DuckDBPyConnection,
                                                           ids: dict[str, Any]) -> None:
    counts = tdg_queries.chain_counts(duck, search=words_of(K))
    assert (counts["problems"], counts["chains"]) == (1, 14)
    rows = tdg_queries.chains(duck, search=words_of(K).upper())  # in any case
    assert rows["problem_id"].unique().tolist() == [ids["first_problem"] + K]
    # shown by its short id and the start of its question, not its 64-character hash
    assert rows["problem"].unique().tolist() == [external_id(K)[:8] + "…"]
    question = rows["question"].iloc[0]
    assert question.startswith(f"A {words_of(K).split()[0]} costs") and question.endswith("…")
    assert len(question) == queries.QUESTION_START


def test_a_problem_id_or_hash_prefix_finds_it_and_puts_it_first(duck: duckdb.DuckDBPyConnection,
                                                               ids: dict[str, Any]) -> None:
    problem_id = ids["first_problem"] + K
    # "138" is also in other questions ($\frac{138}{7}$...): the problem with that id comes first
    by_id = tdg_queries.chains(duck, search=str(problem_id))
    assert by_id["problem_id"].iloc[0] == problem_id and by_id["problem_id"].nunique() > 1
    by_hash = tdg_queries.chains(duck, search=external_id(K)[:6])
    assert problem_id in by_hash["problem_id"].tolist()
    assert set(by_hash["problem"]) == {external_id(k)[:8] + "…" for k in range(PROBLEMS)
                                       if external_id(k).startswith(external_id(K)[:6])}
    # the search's % and _ are letters, not wildcards; a word nowhere finds nothing
    assert tdg_queries.chain_counts(duck, search="%")["chains"] == 0
    assert tdg_queries.chain_counts(duck, search="_")["chains"] == 0
    assert tdg_queries.chain_counts(duck, search="apple nowhere")["chains"] == 0


def test_pages_of_chains_follow_each_other_without_gaps(duck: duckdb.DuckDBPyConnection) -> None:
    first, second = (tdg_queries.chains(duck, offset=offset, limit=1000) for offset in (0, 1000))
    last = tdg_queries.chains(duck, offset=CHAINS - 5, limit=1000)
    assert (len(first), len(second), len(last)) == (1000, 1000, 5)
    every = tdg_queries.chains(duck, limit=CHAINS)
    assert every["chain_id"].tolist()[:2000] == [*first["chain_id"], *second["chain_id"]]
    assert every["chain_id"].tolist()[-5:] == last["chain_id"].tolist()


def test_votes_and_failures_search_and_page_over_problems(duck: duckdb.DuckDBPyConnection,
                                                         ids: dict[str, Any]) -> None:
    job = ids["aggregate"]
    assert tdg_queries.votes_count(duck, job) == PROBLEMS
    page2 = tdg_queries.votes(duck, job, offset=100, limit=100)
    assert page2["problem_id"].unique().tolist() == [ids["first_problem"] + k for k in range(100, 200)]
    assert len(page2) == 3 * 100  # greedy, sc and asc-f1 per problem
    found = tdg_queries.votes(duck, job, search=words_of(K), limit=100)
    assert found["problem_id"].unique().tolist() == [ids["first_problem"] + K]

    run = f"sc / student / job {job}"
    wrong = [k for k in range(PROBLEMS) if (k + 2) % 4 == 0]  # the seed's sc fails these
    assert queries.failures_count(duck, run) == len(wrong)
    rows = queries.failures(duck, run, offset=10, limit=5)
    assert rows["problem_id"].tolist() == [ids["first_problem"] + k for k in wrong[10:15]]
    assert rows["problem"].tolist() == [external_id(k)[:8] + "…" for k in wrong[10:15]]
    assert queries.failures_count(duck, run, search=words_of(wrong[3])) == 1
    assert queries.failures_count(duck, run, search=words_of(wrong[3] + 1)) == 0  # sc solved that one


# --- the pages ----------------------------------------------------------------------------------------


def test_chains_page_searches_by_question_words_and_pages_through_every_chain(ids: dict[str, Any]) -> None:
    at = page("tdg_pages", "chains_page")
    assert f"rows 1-100 of {CHAINS:,} chains" in captions(at)
    assert at.number_input[0].label == f"page (of {CHAINS // 100 + 1})"
    at.number_input[0].set_value(3).run()
    assert f"rows 201-300 of {CHAINS:,} chains" in captions(at)
    assert len(at.dataframe[0].value) == 100
    at.selectbox[0].set_value(1000).run()  # rows per page: the page count changes, so page 1 again
    assert f"rows 1-1,000 of {CHAINS:,} chains" in captions(at)
    assert at.number_input[0].label == f"page (of {CHAINS // 1000 + 1})"

    searched(at, words_of(K))
    assert {m.label: m.value for m in at.metric}["problems"] == "1"
    assert "rows 1-14 of 14 chains" in captions(at)
    table = at.dataframe[0].value
    assert table["problem"].unique().tolist() == [external_id(K)[:8] + "…"]
    assert at.selectbox[1].value == ids["first_problem"] + K  # its chains open below
    # the chain's text, rendered (st.markdown) unless the raw-text switch is on (st.text)
    assert any(f"{words_of(K).split()[0]} costs" in t.value for t in [*at.text, *at.markdown])

    searched(at, "nowhere-at-all")
    assert [i.value for i in at.info] == ["No chain matches these filters."]


def test_votes_page_searches_and_pages_problems(ids: dict[str, Any]) -> None:
    at = page("tdg_pages", "votes_page")
    assert {m.label: m.value for m in at.metric}["problems shown"] == str(PROBLEMS)
    assert f"rows 1-100 of {PROBLEMS} problems" in captions(at)
    pager = next(n for n in at.number_input if n.label.startswith("page (of"))
    pager.set_value(5).run()
    assert f"rows 401-{PROBLEMS} of {PROBLEMS} problems" in captions(at)
    wide = next(d.value for d in at.dataframe if "sc margin" in d.value.columns)
    assert len(wide) == PROBLEMS - 400

    searched(at, words_of(K))
    assert {m.label: m.value for m in at.metric}["problems shown"] == "1"
    wide = next(d.value for d in at.dataframe if "sc margin" in d.value.columns)
    assert wide["problem"].tolist() == [external_id(K)[:8] + "…"]


def test_failures_page_searches_by_problem_id_and_pages(ids: dict[str, Any]) -> None:
    at = page("app", "failures_page")
    run = at.selectbox[0].value
    wrong = [k for k in range(PROBLEMS) if (k + len(run.split(" / ")[0])) % 4 == 0]
    assert f"rows 1-100 of {len(wrong)} problems" in captions(at)
    at.number_input[0].set_value(2).run()
    assert f"rows 101-{len(wrong)} of {len(wrong)} problems" in captions(at)
    assert at.dataframe[0].value["problem_id"].tolist() == [ids["first_problem"] + k for k in wrong[100:]]
    problem_id = ids["first_problem"] + wrong[7]
    searched(at, str(problem_id))
    assert at.dataframe[0].value["problem_id"].iloc[0] == problem_id  # the problem with that id first
    assert at.selectbox[2].value == problem_id  # [1]: rows per page; the failure opens below

    searched(at, words_of(wrong[7] + 1))  # a problem this run solved
    assert at.info[0].value == f"Nothing to show under \"{list(queries.FAILURES)[0]}\" for this run and this search."


# --- the copy the Chains page reads ---------------------------------------------------------------------


def test_the_chains_copy_takes_in_new_and_relabelled_chains(db: Store) -> None:
    ids = seed_tdg(db)
    con = queries.open_store(db.url)
    try:
        assert tdg_queries.chain_counts(con)["chains"] == 10
        with transaction(db.engine()) as s:
            job = make.job(s, "import-chains", {"teacher": "gpt-4"})
            chain = TeacherChain(job_id=job.id, problem_id=ids["problem0"], teacher="gpt-4", sample_idx=0,
                                 text="\\boxed{5}", label="pos", n_chars=9, extracted_answer="5")
            s.add(chain)
            s.flush()
            chain_id = chain.id
        assert tdg_queries.chain_counts(con)["chains"] == 11
        assert tdg_queries.chain_teachers(con) == ["gpt-3.5", "gpt-4", "smol"]
        with transaction(db.engine()) as s:  # a relabel is an UPDATE, recorded by its job
            make.job(s, "relabel-chains", {"teacher": "gpt-4"})
            s.get(TeacherChain, chain_id).label = "neg"
        assert tdg_queries.chains(con, teachers=["gpt-4"])["label"].tolist() == ["neg"]
    finally:
        con.close()


def test_the_warm_up_makes_the_chains_copy_that_the_pages_then_read_as_it_is(db: Store) -> None:
    """What `rplat dashboard` does before serving its first page (rplat.dashboard.serve): open the shared connection
    and copy the chains; a page's first query then finds the copy made and copies nothing again."""
    seed_tdg(db)
    said = serve.warm_up(db.url)
    assert said.startswith("store opened and 10 chains copied for the Chains page in ")
    con = queries.shared_store(db.url)
    assert tdg_queries.copied_chains(con) == 10
    con.execute(f"UPDATE {analytics.CACHE}.chain_rows SET teacher = 'marked'")  # made by the warm-up, not again
    assert tdg_queries.chain_teachers(con) == ["marked"]
    with transaction(db.engine()) as s:  # a job that adds chains: the next query copies again
        make.job(s, "import-chains", {"teacher": "gpt-4"})
    assert tdg_queries.chain_teachers(con) == ["gpt-3.5", "smol"]
