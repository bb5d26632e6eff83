"""The input boundary (issue 17): names, ids and bounded values checked before the store opens, arguments that are
not UTF-8 refused at the entry point, read commands that never create a store, and writes that stay under
RPLAT_HOME. The CLI's bad-input cases themselves are in tests/test_cli_errors.py (`# issue 17: input boundary`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from test_cli_errors import assert_one_clear_sentence, run_main

from rplat.boundary import ID_MAX, NAME_MAX, check_name, name_problem, parse_run
from rplat.cli._common import HOST, ID, NAME, PRIORITY, Finite
from rplat.errors import UserError
from rplat.paths import model_dir, under
from rplat.store import transaction

import factories as make
from stores import TESTS, Store

# --- names -------------------------------------------------------------------------------------------------


def project_names() -> list[str]:
    """Names the project itself uses: bundled models, the demos' datasets and experiments, the tests' models and
    chain sets, and the names jobs give the models they register."""
    from rplat import kinds
    from rplat.bundled import SMOLLM2
    from rplat.references import Makes
    from rplat.registry import BUNDLED_EMBEDDER

    made = [meta.default.format(job_id=12345) for kind in kinds.all_kinds().values()
            for field in kind.params.model_fields.values() for meta in field.metadata if isinstance(meta, Makes)]
    assert made, "no kind registers a model under a Makes name"
    return [SMOLLM2, BUNDLED_EMBEDDER, "demo", "demo-tdg", "sums-train", "sums-test", "gsm-symbolic-test",
            "wiki-boolq", "math-train", "gpt-3.5", "gpt-4", "tiny", "tiny-lora", "tiny-nat", "pipeline-rationalyst",
            "tdg-nce", "math_asc", "A1", "n" * NAME_MAX, *made]


@pytest.mark.parametrize("name", project_names())
def test_the_names_the_project_uses_are_names(name: str) -> None:
    assert name_problem(name) is None
    assert check_name(name, "--dataset") == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "../../evil", "a/b", "/etc/passwd", "a..b", ".hidden", "-x",
                                  "_x", "a b", "a\nb", "tab\there", "café", "a\\b", "x" * (NAME_MAX + 1), "a\x00b"])
def test_what_could_form_a_path_or_overflow_its_column_is_not_a_name(name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(UserError) as caught:
        check_name(name, "--dataset")
    message = str(caught.value)
    assert message.startswith("--dataset ") and message.endswith(".") and "\n" not in message


def test_a_refused_name_comes_with_a_name_that_would_do() -> None:
    with pytest.raises(UserError, match=r"e\.g\. 'my-model-v1'"):
        check_name("my model/v1", "NAME")
    with pytest.raises(UserError, match=r"e\.g\. 'evil'"):
        check_name("../../evil", "NAME")


# --- click parameter types ------------------------------------------------------------------------------


def test_ids_run_from_1_to_2_63_minus_1() -> None:
    assert ID.convert("1", None, None) == 1
    assert ID.convert(str(ID_MAX), None, None) == ID_MAX
    for bad in (str(ID_MAX + 1), "0", "-3", "latest", "1.5"):
        with pytest.raises(click.BadParameter):
            ID.convert(bad, None, None)


def test_priorities_fit_a_32_bit_column() -> None:
    assert PRIORITY.convert("-2147483648", None, None) == -(2**31)
    with pytest.raises(click.BadParameter):
        PRIORITY.convert("2147483648", None, None)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e400"])
def test_finite_floats_refuse_nan_and_infinity(value: str) -> None:
    with pytest.raises(click.BadParameter, match="not a finite number"):
        Finite(0).convert(value, None, None)
    assert Finite(0, 10).convert("2.5", None, None) == 2.5


def test_name_and_host_types_word_the_option_they_check() -> None:
    option = click.Option(["--teacher"])
    with pytest.raises(UserError, match=r"^--teacher '\.\./t' is not a name"):
        NAME.convert("../t", option, None)
    with pytest.raises(UserError, match="^--host is empty"):
        HOST.convert(" ", click.Option(["--host"]), None)
    assert HOST.convert("gpu01.cluster", click.Option(["--host"]), None) == "gpu01.cluster"


def test_run_specs_hold_an_id_in_range() -> None:
    assert parse_run("12") == (12, None)
    assert parse_run(" 12:asc-f3 ") == (12, "asc-f3")
    for bad in (f"{ID_MAX + 1}:sc", "0", "12:", "x", "\uff11\uff12"):  # the last: full-width digits
        with pytest.raises(UserError):
            parse_run(bad)


# --- paths -------------------------------------------------------------------------------------------------


def test_under_keeps_every_path_inside_its_root(tmp_path: Path) -> None:
    root = tmp_path / "home"
    assert under(root, "serve", "tiny.log") == root.resolve() / "serve" / "tiny.log"
    assert under(root, "a", "..", "b") == root.resolve() / "b"
    for parts in (("..", "x"), ("serve", "../../evil.log"), ("/etc/passwd",), ("",), (".",), ("a", "..")):
        with pytest.raises(UserError, match="would lie outside"):
            under(root, *parts)


def test_a_link_the_user_made_inside_home_is_followed(tmp_path: Path) -> None:
    """Checkpoints on another disk through a link in RPLAT_HOME are the user's choice: `under` checks names, not
    where links lead."""
    (tmp_path / "home").mkdir()
    (tmp_path / "scratch").mkdir()
    (tmp_path / "home" / "checkpoints").symlink_to(tmp_path / "scratch")
    path = under(tmp_path / "home", "checkpoints", "job-1")
    path.mkdir()
    assert (tmp_path / "scratch" / "job-1").is_dir()


def test_models_are_written_only_under_home_under_a_name(tmp_path: Path) -> None:
    assert model_dir(tmp_path, "neg-job3") == tmp_path.resolve() / "artifacts" / "models" / "neg-job3"
    for bad in ("../../evil", "a/b", ".."):
        with pytest.raises(UserError):
            model_dir(tmp_path, bad)


def test_serving_a_model_whose_name_reached_the_store_some_other_way_writes_nothing_outside_home(
        db: Store, tmp_path: Path) -> None:
    """`rplat serve` refuses such a name at the command line; the library's plan refuses it as well (a row inserted
    directly), before any log is opened."""
    from rplat import serve as serving

    weights = tmp_path / "weights"
    weights.mkdir()
    with transaction(db.engine()) as s:
        make.model(s, "../../evil", path=str(weights))
    with pytest.raises(UserError, match="would lie outside"):
        serving.plan(db.engine(), "../../evil", home=db.home, vllm="vllm")
    assert not (db.home.parent.parent / "evil.log").exists()
    assert not (db.home / "serve").exists()


def test_compare_report_bounds_resamples_before_reading_anything(db: Store) -> None:
    from rplat.reports import compare_report

    with pytest.raises(UserError, match=r"--resamples 10000000000 is out of range; give 1 to 1,000,000"):
        compare_report(db.engine(), "1", "2", resamples=10_000_000_000)


def test_asc_curve_bounds_repeats(db: Store) -> None:
    from rplat.asc import asc_curve

    with pytest.raises(UserError, match="--repeats 100000 is out of range"):
        asc_curve(db.engine(), "e", repeats=100_000)


# --- the entry point: arguments and environment that are not UTF-8 ------------------------------------------------


def subprocess_env(**extra: str | bytes) -> dict[str | bytes, str | bytes]:
    env: dict[str | bytes, str | bytes] = {k: v for k, v in os.environ.items() if not k.startswith("RPLAT_")}
    env.update(PYTHONPATH=str(TESTS), OMP_NUM_THREADS="1", LC_ALL="C.UTF-8")
    env.update(extra)
    return env


@pytest.mark.parametrize(("argv", "expect"), [
    ([b"sql", b"SELECT \xff\xfe"], "argument 2 (b'SELECT \\xff\\xfe') is not UTF-8 text"),
    ([b"import", b"chains", b"c.jsonl", b"--teacher", b"a\xffb"],
     "argument 5 (after --teacher, b'a\\xffb') is not UTF-8 text"),
    ([b"enqueue", b"probe", b"--param", b"problems=\xff"], "argument 4 (after --param, b'problems=\\xff')"),
    ([b"export", b"chains", b"--where=\xfe", b"--out", b"x.jsonl"],
     "argument 3 (the value of --where, b'--where=\\xfe')"),
], ids=["sql", "import-chains-teacher", "enqueue-param", "export-where"])
def test_argv_bytes_that_are_not_utf8_are_one_sentence_in_a_real_process(tmp_path: Path, argv: list[bytes],
                                                                        expect: str) -> None:
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable.encode(), b"-m", b"rplat.cli", *argv], capture_output=True, cwd=tmp_path,
                          env=subprocess_env(RPLAT_HOME=str(home)), timeout=120)
    assert_one_clear_sentence(proc.stdout.decode(), proc.stderr.decode(), proc.returncode, [expect, "iconv"])
    assert not home.exists()


def test_an_rplat_home_that_is_not_utf8_is_one_sentence_in_a_real_process(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "rplat.cli", "jobs", "ls"], capture_output=True, cwd=tmp_path,
                          env=subprocess_env(RPLAT_HOME=os.fsencode(tmp_path) + b"/h\xff"), timeout=120)
    assert_one_clear_sentence(proc.stdout.decode(), proc.stderr.decode(), proc.returncode,
                              ["the environment variable RPLAT_HOME", "\\xff", "is not UTF-8 text"])
    assert os.listdir(tmp_path) == []


def test_a_database_url_that_is_not_utf8_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("RPLAT_DATABASE_URL", "sqlite:///" + str(tmp_path) + "/\udcffx.db")
    out, err, code = run_main(["jobs", "ls"], monkeypatch, capsys, tmp_path)
    assert_one_clear_sentence(out, err, code, ["the environment variable RPLAT_DATABASE_URL", "is not UTF-8 text"])


@pytest.mark.parametrize("value", ["soon", "nan", "-1", "inf"])
def test_a_retry_base_that_is_not_a_number_of_seconds_is_one_sentence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str) -> None:
    monkeypatch.setenv("RPLAT_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("RPLAT_RETRY_BASE_SECONDS", value)
    out, err, code = run_main(["jobs", "ls"], monkeypatch, capsys, tmp_path)
    assert_one_clear_sentence(out, err, code, [f"RPLAT_RETRY_BASE_SECONDS '{value}' is not a number of seconds"])


# --- read commands never create a store ----------------------------------------------------------------------

READ_COMMANDS = [("jobs", "ls"), ("status",), ("experiments", "ls"), ("models", "ls"), ("serve", "ls"),
                 ("jobs", "show", "1"), ("explain", "jobs", "1"), ("report", "tdg", "--experiment", "e"),
                 ("sql", "SELECT 1"), ("db", "check"), ("db", "upgrade"), ("runner", "--once")]


@pytest.mark.parametrize("args", READ_COMMANDS, ids=["-".join(a) for a in READ_COMMANDS])
def test_a_command_on_a_missing_sqlite_store_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str],
                                                             args: tuple[str, ...]) -> None:
    home = tmp_path / "missing" / "home"
    monkeypatch.delenv("RPLAT_DATABASE_URL", raising=False)
    monkeypatch.setenv("RPLAT_HOME", str(home))
    out, err, code = run_main(list(args), monkeypatch, capsys, tmp_path)
    assert_one_clear_sentence(out, err, code, [f"there is no store at {home / 'rplat.db'}", "run `rplat init`"])
    assert not (tmp_path / "missing").exists()


def test_init_creates_the_store_that_read_commands_then_use(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    env = subprocess_env(RPLAT_HOME=str(home))
    refused = subprocess.run([sys.executable, "-m", "rplat.cli", "jobs", "ls"], capture_output=True, text=True,
                             cwd=tmp_path, env=env, timeout=120)
    assert_one_clear_sentence(refused.stdout, refused.stderr, refused.returncode, ["there is no store at"])
    assert not (tmp_path / "new").exists()
    made = subprocess.run([sys.executable, "-m", "rplat.cli", "init"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    assert (home / "rplat.db").is_file() and (home / "artifacts").is_dir() and (home / "checkpoints").is_dir()
    listed = subprocess.run([sys.executable, "-m", "rplat.cli", "jobs", "ls"], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=120)
    assert (listed.returncode, listed.stdout.strip()) == (0, "(none)"), listed.stderr


def test_read_commands_leave_a_missing_home_missing_on_both_databases(db: Store, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite: a store URL into a missing directory is refused and nothing is made; PostgreSQL: the store is the
    server's, so the command runs, and RPLAT_HOME, missing, stays missing."""
    home = tmp_path / "elsewhere" / "home"
    monkeypatch.setenv("RPLAT_HOME", str(home))
    if db.backend == "sqlite":
        monkeypatch.setenv("RPLAT_DATABASE_URL", f"sqlite:///{home / 'rplat.db'}")
    out, err, code = run_main(["jobs", "ls"], monkeypatch, capsys, tmp_path)
    if db.backend == "sqlite":
        assert_one_clear_sentence(out, err, code, ["there is no store at", "run `rplat init`"])
    else:
        assert (code, out.strip()) == (0, "(none)"), err
    assert not (tmp_path / "elsewhere").exists()


def test_the_queue_itself_refuses_a_made_model_name_that_is_not_a_name_and_a_job_id_out_of_range(db: Store) -> None:
    """Jobs queued by code (a plugin, a script) meet the same checks as the CLI's: in `references.check`."""
    from rplat.queue import Queue

    queue = Queue(db.engine())
    with pytest.raises(UserError, match=r"parameter 'adapter_name' of train-rationalyst: '\.\./evil' is not a name"):
        queue.enqueue("train-rationalyst", {"adapter_name": "../evil", "score_rationales_job": 1})
    with pytest.raises(UserError, match=f"parameter 'solve_job' of evaluate {ID_MAX + 1} is not an id"):
        queue.enqueue("evaluate", {"solve_job": ID_MAX + 1})
