"""docs/glossary.md stays true: every option, parameter and view column is on it, every name it lists exists, a job
parameter is named after its job's kind, and every deprecated name it lists still works as the name replacing it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from sqlalchemy import select

import rplat.models
from rplat import analytics, kinds
from rplat.bundled import SMOLLM2
from rplat.cli import cli, main
from rplat.models import (
    Base,
    Extraction,
    Job,
    Model,
    NatWNeg,
    Prediction,
    Problem,
    PromptTemplate,
    RankerScore,
    Rationale,
    RationaleScore,
    Sample,
    TeacherChain,
)
from rplat.queue import Queue
from rplat.references import Ref
from rplat.store import get_engine, transaction

REPO = Path(__file__).resolve().parent.parent
GLOSSARY = (REPO / "docs" / "glossary.md").read_text(encoding="utf-8")
_CODE = re.compile(r"`([^`]+)`")
_SECTION = re.compile(r"^## (.+)$", re.MULTILINE)


# --- the page ---------------------------------------------------------------------------------------


def _tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table of `text`, as its rows keyed by the header's cells."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.fullmatch(r"\|( --- \|)+", lines[i + 1]) and (i == 0 or not lines[i - 1]
                                                                                    .startswith("|")):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")), strict=True)))
            tables.append(rows)
    return tables


def _section(title: str) -> str:
    parts = _SECTION.split(GLOSSARY)
    return dict(zip(parts[1::2], parts[2::2], strict=True))[title]


CONCEPTS = [row for table in _tables(GLOSSARY) for row in table if "concept" in row]
DEPRECATED = [row for table in _tables(_section("Deprecated names")) for row in table]
KNOBS = {name for line in _section("Knobs").splitlines() if line.startswith("- ")
         for name in _CODE.findall(line.split(":")[0])}


def _listed(column: str) -> set[str]:
    return {name for row in CONCEPTS for name in _CODE.findall(row[column])}


def _deprecated(what: str) -> set[tuple[str, str, str]]:
    """(old, new, where) of each row of the Deprecated names table about a `what`."""
    return {(old, new, row["where"]) for row in DEPRECATED if row["what"] == what
            for old, new in [(_CODE.findall(row["old name"])[0], _CODE.findall(row["new name"])[0])]}


def test_the_page_has_its_tables() -> None:
    assert len(CONCEPTS) > 50 and {row["concept"] for row in CONCEPTS} >= {"setting", "teacher", "w_neg", "format"}
    assert {"lr", "--json"} <= KNOBS and len(DEPRECATED) > 10
    concepts = [row["concept"] for row in CONCEPTS]
    assert sorted({c for c in concepts if concepts.count(c) > 1}) == []  # one row per concept


# --- what exists ------------------------------------------------------------------------------------


def _commands(command: click.Command = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[str, click.Command]]:
    """Every command of `rplat` (the lazy table's too) with its path, e.g. ("pipeline tdg", command)."""
    if isinstance(command, click.Group):
        for name in command.list_commands(click.Context(command)):
            sub = command.get_command(click.Context(command), name)
            assert sub is not None, name
            yield from _commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def _options(hidden: bool) -> dict[str, set[str]]:
    """Long option -> the commands that have it, for the visible options or the hidden (deprecated) ones."""
    found: dict[str, set[str]] = {}
    for path, command in _commands():
        for param in command.params:
            if isinstance(param, click.Option) and param.hidden == hidden:
                for option in (*param.opts, *param.secondary_opts):
                    if option.startswith("--"):
                        found.setdefault(option, set()).add(path)
    return found


def _shipped() -> dict[str, kinds.JobKind]:
    # Kinds a plugin adds (the tests' own, through RPLAT_PLUGINS) are not rplat's to name.
    return {name: kind for name, kind in kinds.all_kinds().items() if kind.handler.startswith("rplat.")}


PARAMS = {name for kind in _shipped().values() for name in kind.params.model_fields}
OPTIONS = _options(hidden=False)


@pytest.fixture(scope="module")
def views(store: dict[str, Any]) -> dict[str, list[str]]:
    """Each view's columns, from a migrated SQLite store."""
    con = analytics.connect(store["url"])
    try:
        return {view: [c for c, _ in columns] for view, columns in analytics.view_columns(con).items()}
    finally:
        con.close()


def test_every_long_option_of_every_command_is_on_the_page() -> None:
    assert len(OPTIONS) > 60 and {"--problems", "--teacher-samples", "--layout", "--file-type"} <= set(OPTIONS)
    assert sorted(set(OPTIONS) - _listed("CLI") - KNOBS) == []


def test_every_parameter_of_every_kind_rplat_ships_is_on_the_page() -> None:
    assert {"n_samples", "score_rationales_job", "teacher", "unit_beta"} <= PARAMS
    assert sorted(PARAMS - _listed("param") - KNOBS) == []


def test_every_view_column_is_on_the_page_and_every_deprecated_one_among_the_deprecated_names(
        views: dict[str, list[str]]) -> None:
    current = {c for view, columns in views.items() for c in columns
               if c not in analytics.DEPRECATED_COLUMNS.get(view, {})}
    assert {"text", "mean_w_neg", "score_samples_job_id"} <= current
    assert sorted(current - _listed("view column") - KNOBS) == []
    old = {(view, c) for view, renamed in analytics.DEPRECATED_COLUMNS.items() for c in renamed}
    assert old and all(c in views[view] for view, c in old)
    assert {c for _, c in old} <= {o for o, _, _ in _deprecated("view column")}


def test_every_option_parameter_and_view_column_the_page_names_exists(views: dict[str, list[str]]) -> None:
    columns = {c for view, cs in views.items() for c in cs if c not in analytics.DEPRECATED_COLUMNS.get(view, {})}
    assert sorted(_listed("CLI") - set(OPTIONS)) == []
    assert sorted(_listed("param") - PARAMS) == []
    assert sorted(_listed("view column") - columns) == []
    assert sorted(KNOBS - set(OPTIONS) - PARAMS - columns) == []


def test_every_table_column_and_class_the_page_names_exists() -> None:
    from rplat.runners.tdg import kinds as tdg_kinds

    tables = Base.metadata.tables
    missing = [name for name in _listed("table / column")
               if (name.partition(".")[0] not in tables
                   or ("." in name and name.partition(".")[2] not in tables[name.partition(".")[0]].c))]
    assert missing == []
    homes = [rplat.models, kinds, tdg_kinds]
    assert [c for c in _listed("class") if not any(hasattr(home, c) for home in homes)] == []


def test_a_parameter_naming_a_job_is_named_after_that_jobs_kind() -> None:
    named = {(kind.name, field): ref.kind for kind in _shipped().values()
             for field, info in kind.params.model_fields.items()
             for ref in info.metadata if isinstance(ref, Ref) and ref.target == "job"}
    assert ("aggregate", "score_samples_job") in named
    assert {(k, f): ref for (k, f), ref in named.items()
            if ref is None or not f.endswith(f"{ref.replace('-', '_')}_job")} == {}


# --- the deprecated names: listed, and each one working ----------------------------------------------


def _listed_as(what: str, actual: set[tuple[str, str, str]]) -> None:
    """The Deprecated names rows about `what` are exactly the `actual` (old, new, place) renames, each row's where
    naming every place of its rename."""
    rows = _deprecated(what)
    assert {(old, new) for old, new, _ in actual} == {(old, new) for old, new, _ in rows}
    assert [(old, new, place) for old, new, place in actual
            if not any(place in where for o, n, where in rows if (o, n) == (old, new))] == []


def test_the_deprecated_names_listed_are_exactly_those_that_still_work() -> None:
    _listed_as("CLI option", {(param.opts[0], _replacing(command, param).opts[0], f"`rplat {path}`")
                              for path, command in _commands() for param in command.params
                              if isinstance(param, click.Option) and param.hidden})
    _listed_as("param", {(old, new, f"`{name}`") for name, kind in _shipped().items()
                         for old, new in kinds.old_names(kind.params).items()})
    _listed_as("view column", {(old, new, f"`{view}`") for view, renamed in analytics.DEPRECATED_COLUMNS.items()
                               for old, new in renamed.items()})
    assert {(old, new) for old, new, _ in _deprecated("view")} == set(analytics.DEPRECATED_VIEWS.items())
    for old, new, _ in _deprecated("table"):
        assert old not in Base.metadata.tables and new in Base.metadata.tables


def _replacing(command: click.Command, hidden: click.Option) -> click.Option:
    """The visible option a hidden one hands its value to (named by its own name, `old_<name>`)."""
    return next(p for p in command.params if isinstance(p, click.Option) and not p.hidden
                and hidden.name == f"old_{p.name}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A migrated SQLite store the CLI runs against in this process: problem dataset `p`, document dataset `d`,
    and queued jobs for the old parameter names to name (their ids)."""
    from rplat.migrate import upgrade

    home = tmp_path_factory.mktemp("glossary")
    url = f"sqlite:///{home / 'rplat.db'}"
    upgrade(get_engine(url))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RPLAT_DATABASE_URL", url)
        patch.setenv("RPLAT_HOME", str(home))
        problems, documents = home / "p.jsonl", home / "d.jsonl"
        problems.write_text("".join(json.dumps({"id": f"p{i}", "question": f"What is {i} + 1?",
                                                "solution": f"{i} + 1 = {i + 1}, so \\boxed{{{i + 1}}}.",
                                                "answer": str(i + 1)}) + "\n" for i in range(2)))
        documents.write_text("".join(json.dumps({"text": f"Document {i} adds {i} and 1."}) + "\n" for i in range(2)))
        main(["import", "problems", str(problems), "--dataset", "p", "--id-field", "id"])
        main(["import", "documents", str(documents), "--dataset", "d"])
        queue = Queue(get_engine(url))
        ids: dict[str, Any] = {"home": home, "url": url}
        ids["extract"], _ = queue.enqueue("extract-rationales", {"problems": "p"})
        ids["score"], _ = queue.enqueue("score-rationales", {"extract_rationales_job": ids["extract"]},
                                        after=[ids["extract"]])
        ids["sample"], _ = queue.enqueue("sample", {"problems": "p", "n_samples": 2, "temperature": 0.7})
        ids["greedy"], _ = queue.enqueue("sample", {"problems": "p"})
        ids["collect"], _ = queue.enqueue("collect-chains", {"problems": "p", "teacher": "t"})  # the chain set t
        ids["ranker"], _ = queue.enqueue("train-ranker", {"problems": "p", "teacher": "t", "ranker_name": "r"},
                                         after=[ids["collect"]])
        ids["scores"], _ = queue.enqueue("score-samples", {"sample_job": ids["sample"], "ranker": "r"},
                                         after=[ids["sample"], ids["ranker"]])
        yield ids


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`rplat *args` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _jobs_of(url: str, ids: dict[str, Any]) -> list[Job]:
    """The stored jobs a pipeline's `--json` ids name (nested by stage and setting)."""
    def flat(value: Any) -> list[int]:
        return [i for v in value.values() for i in flat(v)] if isinstance(value, dict) else (
            [value] if isinstance(value, int) else [])

    with transaction(get_engine(url)) as s:
        return list(s.scalars(select(Job).where(Job.id.in_(flat(ids)))).all())


TDG = ["pipeline", "tdg", "--test", "p", "--student", SMOLLM2, "--asc-samples", "0", "--json"]
RATIONALYST = ["pipeline", "rationalyst", "--documents", "d", "--json"]

# Each deprecated option, given instead of the option replacing it: (command, arguments with the old name,
# arguments with the new). The option's value changes the outcome, so a value dropped on the way would show.
OPTION_CASES = {
    ("pipeline rationalyst", "--benchmark"): (RATIONALYST + ["--benchmark", "p"], RATIONALYST + ["--problems", "p"]),
    ("pipeline tdg", "--benchmark"): (TDG + ["--teacher", SMOLLM2, "--benchmark", "p"],
                                      TDG + ["--teacher", SMOLLM2, "--problems", "p"]),
    ("pipeline tdg", "--chains"): (TDG + ["--problems", "p", "--chains", SMOLLM2],
                                   TDG + ["--problems", "p", "--teacher", SMOLLM2]),
    ("pipeline tdg", "--n-chains"): (TDG + ["--problems", "p", "--teacher", SMOLLM2, "--n-chains", "3"],
                                     TDG + ["--problems", "p", "--teacher", SMOLLM2, "--teacher-samples", "3"]),
}


def test_every_deprecated_option_has_its_case_here() -> None:
    hidden = {(path, old) for old, paths in _options(hidden=True).items() for path in paths}
    assert hidden == {*OPTION_CASES, ("import chains", "--format"), ("import problems", "--format"),
                      ("export", "--format"), ("report card", "--format")}


@pytest.mark.parametrize("case", sorted(OPTION_CASES), ids=lambda c: f"{c[0]} {c[1]}")
def test_a_deprecated_pipeline_option_enqueues_the_same_jobs_as_the_new_one(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str], case: tuple[str, str]) -> None:
    old_args, new_args = OPTION_CASES[case]
    new = next(a for a in new_args if a not in old_args)
    code, out_old, err_old = _run(capsys, *old_args)
    assert (code, err_old) == (0, f"rplat: {case[1]} is deprecated; use {new}\n")
    code, out_new, err_new = _run(capsys, *new_args)
    assert (code, out_new, err_new) == (0, out_old, "")
    jobs = _jobs_of(store["url"], json.loads(out_new))
    assert jobs and all(j.params.get("problems", "p") == "p" for j in jobs)
    if case[1] == "--n-chains":
        assert [j.params["n_samples"] for j in jobs if j.kind == "collect-chains"] == [3]


def test_the_old_and_the_new_name_of_an_option_together_are_one_usage_error(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--teacher", SMOLLM2, "--chains", SMOLLM2], ["--chains", SMOLLM2, "--teacher", SMOLLM2]):
        code, out, err = _run(capsys, *TDG, "--problems", "p", *args)
        assert (code, out) == (2, "")
        assert err.splitlines()[-1] == ("error: --teacher and its old name --chains are both given; give --teacher "
                                        "only; see `rplat pipeline tdg --help`.")


def test_import_chains_format_is_layout(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    chains = store["home"] / "flat.jsonl"
    chains.write_text(json.dumps({"problem_id": "p0", "chain": "0 + 1 = 1, so \\boxed{1}."}) + "\n")
    base = ["import", "chains", str(chains), "--dataset", "p", "--json"]
    # A flat file read as released is refused the same way under either name: the value reached --layout.
    code, out, err = _run(capsys, *base, "--teacher", "a", "--format", "released")
    refused = _run(capsys, *base, "--teacher", "a", "--layout", "released")
    assert (code, out, err) == (2, "", "rplat: --format is deprecated; use --layout\n" + refused[2])
    assert refused[0] == 2 and "line 1 has no field 'question'" in refused[2]
    code, out, err = _run(capsys, *base, "--teacher", "a", "--format", "flat")
    summary = json.loads(out)
    assert (code, summary["layout"], summary["imported"]) == (0, "flat", 1)
    code, out, _ = _run(capsys, *base, "--teacher", "b", "--layout", "flat")
    assert {k: v for k, v in json.loads(out).items() if k not in ("teacher", "job_id")} == {
        k: v for k, v in summary.items() if k not in ("teacher", "job_id")}
    with transaction(get_engine(store["url"])) as s:
        params = s.get(Job, summary["job_id"]).params
    assert (params["layout"], "format" in params) == ("flat", False)


def test_export_format_is_file_type(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    old, new = store["home"] / "old.txt", store["home"] / "new.txt"  # no suffix tells the file type
    code, out, err = _run(capsys, "export", "evaluations", "--out", str(old))
    assert code == 2 and "give --file-type jsonl, parquet, csv or hf" in err
    code, out, err = _run(capsys, "export", "evaluations", "--format", "csv", "--out", str(old))
    assert (code, err) == (0, "rplat: --format is deprecated; use --file-type\n")
    assert _run(capsys, "export", "evaluations", "--file-type", "csv", "--out", str(new)) == (
        0, out.replace(str(old), str(new)), "")
    assert old.read_text() == new.read_text() and old.read_text().startswith('"job_id",')  # a CSV header


# Each renamed parameter: (kind, old name, its value or the key of the job it names, the params it goes with,
# the keys of the jobs it runs after).
PARAM_CASES = [
    ("collect-chains", "n", 3, {"problems": "p"}, []),
    ("sample", "n", 3, {"problems": "p", "temperature": 0.5}, []),
    ("score-rationales", "extract_job", "extract", {}, ["extract"]),
    ("train-rationalyst", "score_job", "score", {}, ["score"]),
    ("aggregate", "score_job", "scores", {"sample_job": "sample"}, ["sample", "scores"]),
    ("aggregate", "greedy_job", "greedy", {"sample_job": "sample"}, ["sample", "greedy"]),
    ("solve", "max_steps", 3, {"problems": "p"}, []),
]


def test_every_renamed_parameter_has_its_case_here() -> None:
    assert {(kind, old) for kind, old, *_ in PARAM_CASES} == {
        (name, old) for name, kind in _shipped().items() for old in kinds.old_names(kind.params)}


@pytest.mark.parametrize(("kind", "old", "value", "others", "after"), PARAM_CASES,
                         ids=[f"{kind} {old}" for kind, old, *_ in PARAM_CASES])
def test_a_job_enqueued_with_an_old_parameter_name_is_the_job_of_the_new_name(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str], kind: str, old: str, value: Any,
        others: dict[str, Any], after: list[str]) -> None:
    new = kinds.old_names(kinds.get(kind).params)[old]
    resolved = {k: store.get(v, v) if isinstance(v, str) else v for k, v in {old: value, **others}.items()}
    options = [a for key in after for a in ("--after", str(store[key]))]

    def enqueue(name: str) -> tuple[int, str, str]:
        params = [a for k, v in resolved.items() for a in ("--param", f"{name if k == old else k}={v}")]
        return _run(capsys, "enqueue", kind, *params, *options, "--json")

    code, out, err = enqueue(old)
    assert (code, err) == (0, f"rplat: parameter {old} of {kind} is deprecated; use {new}\n")
    first = json.loads(out)
    code, out, err = enqueue(new)
    assert (code, json.loads(out), err) == (0, {"id": first["id"], "created": False}, "")
    with transaction(get_engine(store["url"])) as s:
        stored = s.get(Job, first["id"]).params
    assert (stored[new], old in stored) == (resolved[old], False)
    assert kinds.parse(kind, {**{k: v for k, v in stored.items() if k != new}, old: stored[new]}) == \
        kinds.parse(kind, stored)  # a job stored with the old name loads as the new one


def test_an_old_parameter_name_says_so_once_from_every_way_of_enqueueing(
        store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    line = "rplat: parameter n of sample is deprecated; use n_samples\n"
    params_file = store["home"] / "sample.json"
    params_file.write_text(json.dumps({"problems": "p", "n": 4, "temperature": 0.9}))
    code, out, err = _run(capsys, "enqueue", "sample", "--params-file", str(params_file), "--json")
    assert (code, err) == (0, line)
    jsonl = store["home"] / "samples.jsonl"
    jsonl.write_text("".join(json.dumps({"n": n}) + "\n" for n in (5, 6)))
    code, out, err = _run(capsys, "enqueue", "sample", "--params-file", str(params_file), "--params-jsonl",
                          str(jsonl), "--json")
    assert (code, err) == (0, line)
    overrides = store["home"] / "overrides.json"
    overrides.write_text(json.dumps({"collect-chains": {"n": 5}}))
    args = [*TDG, "--problems", "p", "--teacher", SMOLLM2, "--params-file", str(overrides)]
    code, out, err = _run(capsys, *args)
    assert (code, err) == (0, "rplat: parameter n of collect-chains is deprecated; use n_samples\n")
    overrides.write_text(json.dumps({"collect-chains": {"n_samples": 5}}))
    assert _run(capsys, *args) == (0, out, "")
    both = _run(capsys, "enqueue", "sample", "--param", "problems=p", "--param", "n=2", "--param", "n_samples=2",
                "--param", "temperature=0.5")
    assert both[0] == 2 and "n_samples and its old name n are both given; give n_samples only" in both[2]


@pytest.fixture(scope="module")
def duck(store: dict[str, Any]) -> Iterator[Any]:
    """The views over the store with one row behind every deprecated column: a rationale with its score, a teacher
    chain, a sample with a ranker score, an aggregate job stored with the old name score_job and two predictions
    of it (one intersection), a w_neg row."""
    with transaction(get_engine(store["url"])) as s:
        def job(kind: str, **params: Any) -> int:
            row = Job(kind=kind, status="succeeded", params=params)
            s.add(row)
            s.flush()
            return row.id

        problem = s.scalar(select(Problem.id).order_by(Problem.id).limit(1))
        model = Model(name="m", format="base", fingerprint="f" * 64)
        template = PromptTemplate(name="t", version="1", body={}, content_hash="0" * 64)
        s.add_all([model, template])
        s.flush()
        extraction = Extraction(job_id=job("extract-rationales"), problem_id=problem, model_id=model.id,
                                prompt_template_id=template.id, temperature=0.0, input_text="x", raw_output="x",
                                passed=True)
        s.add(extraction)
        s.flush()
        rationale = Rationale(job_id=extraction.job_id, extraction_id=extraction.id, position=0, preceding="a",
                              rationale="r", following="b", left_step=0)
        s.add(rationale)
        s.flush()
        s.add(RationaleScore(job_id=job("score-rationales"), rationale_id=rationale.id, scorer_model_id=model.id,
                             lp_without=[], lp_with=[], gamma=0.9, s_without=-2.0, s_with=-1.0, loss_delta=1.0,
                             tau=0.0, kept=True))
        s.add(TeacherChain(job_id=job("collect-chains"), problem_id=problem, teacher="old", sample_idx=0,
                           text="so \\boxed{1}.", label="pos", n_chars=13))
        sample = Sample(job_id=job("sample"), problem_id=problem, model_id=model.id, sample_idx=0, decoding="sampled",
                        text="so \\boxed{1}.")
        s.add(sample)
        s.flush()
        scores = job("score-samples")
        s.add(RankerScore(job_id=scores, sample_id=sample.id, ranker_model_id=model.id, score=0.5))
        aggregate = job("aggregate", sample_job=sample.job_id, score_job=scores)
        s.add_all([Prediction(job_id=aggregate, problem_id=problem, model_id=model.id, method=method, answer="1",
                              correct=True) for method in ("sc", "asc-f3")])
        s.add(NatWNeg(job_id=job("train-nat"), step=1, layer=0, proj="q_proj", mean_w_neg=0.25))
    con = analytics.connect(store["url"])
    yield con
    con.close()


@pytest.mark.parametrize(("view", "old"), [(v, o) for v, renamed in analytics.DEPRECATED_COLUMNS.items()
                                           for o in renamed])
def test_a_deprecated_view_column_shows_what_the_column_replacing_it_shows(duck: Any, view: str, old: str) -> None:
    new = analytics.DEPRECATED_COLUMNS[view][old]
    rows = duck.execute(f"SELECT {old}, {new} FROM {view}").fetchall()
    assert rows and all(a == b and b is not None for a, b in rows)


def test_the_predictions_of_a_job_stored_with_score_job_name_it_as_their_score_samples_job(duck: Any) -> None:
    assert duck.execute("SELECT DISTINCT score_samples_job_id FROM predictions").fetchall() == duck.execute(
        "SELECT DISTINCT score_samples_job_id FROM sample_scores").fetchall()


def test_the_deprecated_view_nat_alpha_is_nat_w_neg(duck: Any) -> None:
    for old, new in analytics.DEPRECATED_VIEWS.items():
        assert duck.execute(f"SELECT * FROM {old}").fetchall() == duck.execute(f"SELECT * FROM {new}").fetchall()
    assert duck.execute("SELECT layer, proj, mean_w_neg FROM nat_alpha").fetchall() == [(0, "q_proj", 0.25)]


def test_import_problems_format_is_layout(store: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """`--format math` (the name people reach for) is `--layout math`, with the line saying so."""
    math = store["home"] / "math.jsonl"
    math.write_text(json.dumps({"problem": "Problem:\nWhat is 1 + 1?", "solution": "1 + 1 = \\boxed{2}.",
                                "type": "Algebra", "level": "Level 1"}) + "\n")
    code, out, err = _run(capsys, "import", "problems", str(math), "--dataset", "m-format", "--format", "math",
                          "--json")
    assert (code, err) == (0, "rplat: --format is deprecated; use --layout\n")
    assert json.loads(out)["imported"] == 1
    con = analytics.connect(store["url"])
    try:
        rows = analytics.run_query(con, "SELECT question, gold, subject, level FROM problems WHERE dataset = "
                                        "'m-format'")[1]
    finally:
        con.close()
    assert rows == [("What is 1 + 1?", "2", "Algebra", "Level 1")]
