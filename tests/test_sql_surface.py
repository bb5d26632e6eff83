"""The SQL surface sees the store and nothing else (docs/security.md): `rplat sql`, `rplat export --where` and the
dashboard's SQL page read no file, no PostgreSQL catalog, other schema or other database, stop at a time limit and
end in one sentence on Ctrl-C; and rplat runs on PostgreSQL as a role that is no superuser, as the docs show."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from test_analytics import rows, run_cli, seed
from test_cli_errors import assert_one_clear_sentence, snapshot

from rplat import analytics
from rplat.dashboard import queries
from rplat.errors import UserError
from rplat.export import export_query, lineage_query

from stores import REPO, Store, _pg_admin_url, _pg_available, _pg_engine, make_store

SECRET = "planted-secret-7f3a"  # in every planted file and schema: no output may show it
LONG_QUERY = "SELECT count(*) FROM range(1000000000000::BIGINT) a"  # hours of counting
SLOW_WHERE = "(SELECT count(*) FROM range(1000000000000::BIGINT) a) > 0"
# DuckDB's table functions that read a file named by their first argument.
READERS = ["read_text", "read_blob", "read_csv", "read_csv_auto", "read_json", "read_json_auto", "read_ndjson",
           "read_json_objects", "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "sniff_csv",
           "glob"]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def surface_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One seeded store per backend (test_analytics' small RATIONALYST world), shared by the tests here."""
    for store in make_store(request.param, tmp_path_factory.mktemp(request.param)):
        yield seed(store)


@pytest.fixture
def store(surface_store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The seeded store, RPLAT_* pointing at it and its home the working directory, as for `rplat` run there."""
    surface_store.set_env(monkeypatch)
    monkeypatch.chdir(surface_store.home)
    return surface_store


@pytest.fixture
def duck(store: Store) -> Iterator[duckdb.DuckDBPyConnection]:
    con = analytics.connect(store.url)
    yield con
    con.close()


@pytest.fixture
def planted(store: Store, tmp_path: Path) -> Iterator[list[str]]:
    """Files holding SECRET (text, CSV, JSON, Parquet) in DuckDB's default temporary directory under the working
    directory (`.tmp`), in RPLAT_HOME and elsewhere; the paths as a query would name them, relative and absolute."""
    places = [store.home / ".tmp", store.home, tmp_path / "elsewhere"]
    made: list[Path] = []
    for directory in places:
        directory.mkdir(exist_ok=True)
        for suffix in ("txt", "csv", "json", "parquet"):
            path = directory / f"planted.{suffix}"
            if suffix == "parquet":
                pq.write_table(pa.table({"secret": [SECRET]}), path)
            else:
                path.write_text({"txt": SECRET, "csv": f"secret\n{SECRET}\n", "json": json.dumps({"s": SECRET})
                                 }[suffix] + "\n")
            made.append(path)
    yield [".tmp/planted.txt", "./.tmp/planted.csv", "planted.json", *map(str, made)]
    for path in made:
        path.unlink()
    (store.home / ".tmp").rmdir()


def jobs_in(store: Store) -> int:
    with store.engine().connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM jobs")) or 0)


def refusal(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one sentence `run_query` refuses `sql` with, checked as the CLI prints it."""
    with pytest.raises(UserError) as caught:
        analytics.run_query(con, sql)
    assert SECRET not in str(caught.value)
    return assert_one_clear_sentence("", f"error: {caught.value}\n", 2, [])


def cli_refusal(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = run_cli(capsys, *args)
    assert SECRET not in out + err
    return assert_one_clear_sentence(out, err, code, [])


# --- no file ---------------------------------------------------------------------------------------


def test_duckdb_itself_can_read_no_file_in_the_working_directory_its_tmp_rplat_home_or_elsewhere(
        duck: duckdb.DuckDBPyConnection, planted: list[str]) -> None:
    """Below the statement check: the locked connection has no temporary directory and no readable directory."""
    assert analytics.readable_directories(duck) == []
    assert duck.execute("SELECT current_setting('temp_directory')").fetchone() == ("",)
    for path in planted:
        for reader in READERS:
            with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
                duck.execute(f"SELECT * FROM {reader}('{path}')").fetchall()
        with pytest.raises((duckdb.PermissionException, duckdb.CatalogException)):  # .txt: no reader by suffix
            duck.execute(f"SELECT * FROM '{path}'").fetchall()


def test_a_query_naming_a_file_is_refused_in_one_sentence(duck: duckdb.DuckDBPyConnection, planted: list[str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    for path in planted:
        for reader in READERS:
            assert f"the function {reader} reaches outside" in refusal(duck, f"SELECT * FROM {reader}('{path}')")
        assert "names a file" in refusal(duck, f"SELECT * FROM '{path}'")
        assert "read_text" in refusal(duck, f"SELECT (SELECT content FROM read_text('{path}')) AS x")
    # the issue's own command, through the CLI
    assert "the function read_text" in cli_refusal(capsys, "sql", "SELECT * FROM read_text('.tmp/planted.txt')")
    assert "names a file" in cli_refusal(capsys, "sql", "SELECT * FROM '.tmp/planted.csv'")


def test_the_only_path_duckdb_still_allows_is_the_sqlite_store_which_no_query_reads_as_a_file(
        store: Store, duck: duckdb.DuckDBPyConnection) -> None:
    """DuckDB keeps an attached database's own file readable when external access is turned off; the statement check
    refuses to read it as a file (its rows are the `store` tables anyway)."""
    (allowed,) = duck.execute("SELECT current_setting('allowed_paths')").fetchone() or ([],)
    existing = [p for p in allowed if Path(p).exists()]
    if store.backend == "sqlite":
        database = str(Path(make_url(store.url).database or "").resolve())
        assert existing == [database]
        assert "read_blob" in refusal(duck, f"SELECT * FROM read_blob('{database}')")
        assert "names a file" in refusal(duck, f"SELECT * FROM '{database}'")
    else:
        assert existing == []


def test_every_table_function_but_the_listed_ones_is_refused(duck: duckdb.DuckDBPyConnection) -> None:
    names = [r[0] for r in duck.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'table'").fetchall()]
    assert set(analytics.TABLE_FUNCTIONS) <= set(names)
    refused = [n for n in names if n not in analytics.TABLE_FUNCTIONS]
    assert {*READERS, "duckdb_settings", "duckdb_secrets", "duckdb_databases", "which_secret", "checkpoint",
            "enable_logging", "query", "query_table"} <= set(refused)
    for name in refused:
        assert f"the function {name} reaches outside" in refusal(duck, f"SELECT * FROM {name}('x')")
    assert rows(duck, "SELECT count(*) AS n FROM range(3) JOIN unnest([1, 2]) ON true") == [{"n": 6}]
    assert {r["view_name"] for r in rows(duck, "SELECT view_name FROM duckdb_views() WHERE NOT internal")} >= set(
        analytics.VIEWS)


# --- no catalog, no other schema or database ------------------------------------------------------

CATALOG_READS = [
    "SELECT rolname, rolpassword FROM store.pg_catalog.pg_authid",
    "SELECT usename, passwd FROM store.pg_catalog.pg_shadow",
    "SELECT * FROM store.pg_catalog.pg_hba_file_rules",
    "SELECT * FROM store.pg_catalog.pg_file_settings",
    "SELECT query FROM store.pg_catalog.pg_stat_activity",
    "SELECT datname FROM store.pg_catalog.pg_database",
    "SELECT * FROM store.information_schema.tables",
    "SELECT * FROM store.rplat_other.planted",
]


@pytest.fixture
def other_schema(store: Store) -> Iterator[None]:
    """On PostgreSQL, a schema beside rplat's in the store's database, holding SECRET."""
    if store.backend == "postgresql":
        with store.engine().begin() as conn:
            conn.execute(text(f"CREATE SCHEMA rplat_other; CREATE TABLE rplat_other.planted AS SELECT '{SECRET}' AS s"))
    yield
    if store.backend == "postgresql":
        with store.engine().begin() as conn:
            conn.execute(text("DROP SCHEMA rplat_other CASCADE"))


def test_catalogs_other_schemas_and_databases_are_refused_and_the_store_is_not(
        store: Store, other_schema: None, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(store)
    con = analytics.connect(store.url)
    try:
        for sql in CATALOG_READS:
            sentence = refusal(con, sql)
            assert "the query failed (Catalog Error" in sentence and "does not exist" in sentence, sentence
        for function in ("duckdb_databases", "duckdb_settings", "duckdb_secrets", "postgres_query"):
            assert f"the function {function}" in refusal(con, f"SELECT * FROM {function}('store', 'SELECT 1')")
        # DuckDB's own catalog of the connection: the store's tables and views in rplat's schema only
        assert {r["s"] for r in rows(con, "SELECT DISTINCT table_catalog || '.' || table_schema AS s "
                                          "FROM information_schema.tables")} == {
            f"store.{'main' if store.backend == 'sqlite' else 'public'}", "memory.main", "memory.cache"}
        assert rows(con, "SHOW DATABASES") == [{"database_name": "memory"}, {"database_name": "store"}]
        assert rows(con, "SELECT count(*) AS n FROM store.jobs") == [{"n": jobs_in(store)}]
        assert rows(con, "SELECT count(*) AS n FROM store.alembic_version") == [{"n": 1}]
    finally:
        con.close()
    for sql in CATALOG_READS[:2]:
        assert "pg_" in cli_refusal(capsys, "sql", sql)
    assert snapshot(store) == before


# --- export --where: one expression ---------------------------------------------------------------

ESCAPES = [
    ("false\n) UNION ALL BY NAME SELECT name AS question, path AS chain FROM store.models WHERE (true",
     "not valid SQL"),
    ("false) OR (true", "not valid SQL"),
    ("true UNION ALL SELECT * FROM predictions", "one condition over the view's columns"),
    ("true ORDER BY 1", "one condition over the view's columns"),
    ("true LIMIT 1", "one condition over the view's columns"),
    ("true GROUP BY ALL", "one condition over the view's columns"),
    ("true QUALIFY true", "one condition over the view's columns"),
    ("true; SELECT 1", "give exactly one query, not 2 statements"),
    ("EXISTS (SELECT * FROM read_text('.tmp/planted.txt'))", "the function read_text"),
    ("EXISTS (SELECT * FROM '.tmp/planted.txt')", "names a file"),
    ("EXISTS (SELECT * FROM store.pg_catalog.pg_authid)", "does not run on the view predictions"),
    ("problem_id IN (SELECT id FROM sqlite_scan('rplat.db', 'problems'))", "the function sqlite_scan"),
]


@pytest.mark.parametrize(("where", "says"), ESCAPES, ids=[f"escape-{k}" for k in range(len(ESCAPES))])
def test_export_where_cannot_close_the_predicate_or_reach_past_the_views(
        store: Store, planted: list[str], capsys: pytest.CaptureFixture[str], where: str, says: str) -> None:
    before = snapshot(store)
    out = store.home / "escape.jsonl"
    code, printed, err = run_cli(capsys, "export", "predictions", "--where", where, "--out", str(out))
    assert SECRET not in printed + err
    assert_one_clear_sentence(printed, err, code, ["the --where predicate", says])
    assert not out.exists()
    assert snapshot(store) == before


def test_export_where_may_hold_subqueries_over_the_views(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """Subqueries read the same locked connection, so they are allowed: the problems greedy solves, as each run
    answered them (greedy solves p0 and p1; two runs answered each problem)."""
    out = store.home / "solved.jsonl"
    where = "problem_id IN (SELECT problem_id FROM solved_sets WHERE method = 'greedy') -- solved by greedy"
    code, printed, _ = run_cli(capsys, "export", "predictions", "--where", where, "--out", str(out))
    assert (code, printed) == (0, f"wrote 4 rows of predictions to {out}\n")
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    out.unlink()
    assert sorted((r["problem"], r["method"]) for r in exported) == [
        ("p0", "greedy"), ("p0", "sc"), ("p1", "greedy"), ("p1", "sc")]


def _tree(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    """The parse tree of `sql` without the positions of its parts."""
    def shape(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: shape(v) for k, v in node.items() if k != "query_location"}
        return [shape(v) for v in node] if isinstance(node, list) else node

    return shape(analytics.parse(con, sql)["statements"])


def test_what_an_export_runs_is_duckdbs_rendering_of_the_checked_predicate(duck: duckdb.DuckDBPyConnection) -> None:
    where = "correct AND method = 'sc' -- a comment, dropped\n"
    runs = export_query(duck, "predictions", where)
    assert "comment" not in runs
    checked = _tree(duck, f"{lineage_query('predictions')} WHERE {where}")
    assert _tree(duck, runs) == checked
    [statement] = checked
    assert statement["node"]["where_clause"]["type"] == "CONJUNCTION_AND"
    assert export_query(duck, "predictions", None) == lineage_query("predictions")


# --- time limit and Ctrl-C ------------------------------------------------------------------------


def test_a_query_past_its_time_limit_is_stopped_in_one_sentence(store: Store,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ([], ["--csv"], ["--json"]):
        code, out, err = run_cli(capsys, "sql", "--timeout", "1", *mode, LONG_QUERY)
        assert_one_clear_sentence(out, err, code, ["the query ran past its time limit of 1 s and was stopped",
                                                   "--timeout"])
    code, out, _ = run_cli(capsys, "sql", "--timeout", "0.5", "SELECT count(*) AS n FROM store.jobs")
    assert (code, out.split()) == (0, ["n", str(jobs_in(store))])


def test_an_export_past_its_time_limit_writes_nothing(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    out = store.home / "slow.parquet"
    code, printed, err = run_cli(capsys, "export", "predictions", "--where", SLOW_WHERE, "--timeout", "1",
                                 "--out", str(out))
    assert_one_clear_sentence(printed, err, code, ["the export ran past its time limit of 1 s", "nothing was written",
                                                   "--timeout"])
    assert not out.exists() and not list(store.home.glob(".slow.parquet.*"))


def test_the_dashboards_sql_page_refuses_files_and_catalogs_and_stops_at_its_own_time_limit(
        store: Store, planted: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    con = queries.open_store(store.url)
    try:
        for sql, says in [("SELECT * FROM read_text('.tmp/planted.txt')", "the function read_text"),
                          ("SELECT * FROM store.pg_catalog.pg_authid", "Catalog Error")]:
            with pytest.raises(UserError, match=re.escape(says)):
                queries.run_sql(con, sql)
        monkeypatch.setattr(queries, "SQL_TIMEOUT", 1.0)
        with pytest.raises(UserError) as caught:
            queries.run_sql(con, LONG_QUERY)
        assert_one_clear_sentence("", f"error: {caught.value}\n", 2, ["time limit of 1 s", "rplat sql --timeout"])
        assert queries.run_sql(con, "SELECT count(*) AS n FROM store.jobs")["n"].tolist() == [jobs_in(store)]
    finally:
        con.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_until_querying(proc: subprocess.Popen[str], start_up: float) -> None:
    """Until the process has used a second of CPU more than the same command with a query that takes no time
    (`start_up` seconds): it runs the query (or 60 s passed; Ctrl-C must end in one sentence wherever it lands
    once the command runs, only the message is less telling then)."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and _cpu_seconds(proc.pid) < start_up + 1 and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.parametrize(("args", "quick"), [
    (("sql", LONG_QUERY), ("sql", "SELECT 1")),
    (("sql", "--csv", LONG_QUERY), ("sql", "--csv", "SELECT 1")),
    (("export", "predictions", "--where", SLOW_WHERE, "--out", "ctrl-c.jsonl"),
     ("export", "predictions", "--where", "false", "--out", "quick.jsonl"))], ids=["sql", "sql-csv", "export"])
def test_ctrl_c_ends_a_query_in_one_sentence(store: Store, args: tuple[str, ...], quick: tuple[str, ...]) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    store.rplat(*quick, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (store.home / "quick.jsonl").unlink(missing_ok=True)
    proc = store.popen(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until_querying(proc, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # DuckDB's worker threads stop too: the process exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Traceback" not in err and proc.returncode == 130, err
    assert_one_clear_sentence(out, err, 2, ["was stopped by Ctrl-C before it finished"])
    assert not list(store.home.glob("*ctrl-c.jsonl*"))


# --- PostgreSQL as a role that is no superuser (docs/security.md) --------------------------------


def _doc_sql(names: dict[str, str]) -> list[str]:
    """The SQL blocks of docs/security.md's worked example, with its names and passwords made unique."""
    page = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```sql\n(.*?)^```", page, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 2, "docs/security.md: the example is two SQL blocks (as the superuser, then as rplat)"
    out = []
    for block in blocks:
        for old, new in names.items():
            block = re.sub(rf"\b{re.escape(old)}\b", new, block)
        out.append(block)
    return out


def _run_sql(url: str, sql: str) -> None:
    engine = _pg_engine(url)
    try:
        with engine.connect() as conn:
            for statement in (s.strip() for s in re.sub(r"--[^\n]*", "", sql).split(";")):
                if statement:
                    conn.execute(text(statement))
    finally:
        engine.dispose()


def test_rplat_runs_as_the_documented_non_superuser_roles_and_they_see_no_catalog(tmp_path: Path) -> None:
    reason = _pg_available()
    if reason is not None:
        pytest.skip(f"PostgreSQL not reachable ({reason})")
    suffix = uuid.uuid4().hex[:10]
    owner, reader = f"rplat_{suffix}", f"rplat_reader_{suffix}"
    owner_pw, reader_pw = f"pw-owner-{suffix}", f"pw-reader-{suffix}"
    as_superuser, as_owner = _doc_sql({"rplat_reader": reader, "rplat": owner, "change-me-too": reader_pw,
                                       "change-me": owner_pw})
    admin = make_url(_pg_admin_url())
    owner_url = admin.set(username=owner, password=owner_pw, database=owner).render_as_string(hide_password=False)
    reader_url = admin.set(username=reader, password=reader_pw, database=owner).render_as_string(hide_password=False)
    home = tmp_path / "home"
    home.mkdir()
    try:
        _run_sql(_pg_admin_url(), as_superuser)
        rplat = Store("postgresql", owner_url, home)
        rplat.rplat("init", check=True)
        _run_sql(owner_url, as_owner)
        probe = json.loads(rplat.rplat("enqueue", "probe", "--json", check=True).stdout)
        assert probe["id"] in [j["id"] for j in json.loads(rplat.rplat("jobs", "ls", "--json", check=True).stdout)]
        for who in (rplat, Store("postgresql", reader_url, home)):
            got = json.loads(who.rplat("sql", "SELECT job_id, kind FROM job_timeline", "--json", check=True).stdout)
            assert got == [{"job_id": probe["id"], "kind": "probe"}]
            for sql in CATALOG_READS[:6]:
                proc = who.rplat("sql", sql)
                assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, ["Catalog Error"])
        # the reader cannot write, and neither role can read the catalog's secrets even directly
        proc = Store("postgresql", reader_url, home).rplat("enqueue", "probe")
        assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, ["permission denied"])
        for url in (owner_url, reader_url):
            engine = _pg_engine(url)
            with engine.connect() as conn:
                assert not conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))
                for table in ("pg_authid", "pg_shadow", "pg_hba_file_rules", "pg_file_settings"):
                    with pytest.raises(Exception, match="permission denied"):
                        conn.execute(text(f"SELECT * FROM pg_catalog.{table}"))
                    conn.rollback()
            engine.dispose()
        # the password reaches DuckDB as a secret: no listing, setting or error of the connection shows it
        con = analytics.connect(owner_url)
        try:
            shown = [con.execute(f"SELECT * FROM {listing}").fetchall() for listing in (
                "duckdb_databases()", "duckdb_settings()", "duckdb_secrets()", "information_schema.schemata")]
            assert owner in repr(shown) and owner_pw not in repr(shown)
        finally:
            con.close()
        with pytest.raises(UserError) as caught:
            analytics.connect(make_url(owner_url).set(database=f"{owner}_missing").render_as_string(
                hide_password=False))
        assert owner_pw not in str(caught.value) and "does not exist" in str(caught.value)
    finally:
        _run_sql(_pg_admin_url(), f'DROP DATABASE IF EXISTS "{owner}" WITH (FORCE); DROP ROLE IF EXISTS "{reader}"; '
                                  f'DROP ROLE IF EXISTS "{owner}"')
