"""The `rplat` command line: set up the store, import data, enqueue and inspect jobs, run runners."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError, OperationalError

from rplat import kinds as kinds_registry
from rplat.config import get_settings
from rplat.errors import UserError
from rplat.models import Experiment, Job, JobEvent, Model, Runner, utcnow
from rplat.queue import Queue
from rplat.store import check_reachable, get_engine, transaction

# --- helpers --------------------------------------------------------------------------------------


def _engine(*, at_head: bool = True) -> Engine:
    engine = get_engine()
    check_reachable(engine)
    if at_head:
        from rplat.migrate import ensure_at_head

        ensure_at_head(engine)
    return engine


def _queue(engine: Engine) -> Queue:
    return Queue(engine, retry_base_seconds=get_settings().retry_base_seconds)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(list(rows), default=str, indent=None))
    else:
        click.echo(_table(rows, columns))


def _parse_param(raw: str) -> tuple[str, Any]:
    key, sep, value = raw.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--param {raw!r} is not of the form key=value; write e.g. --param threshold=0.3.")
    value = value.strip()
    if value[:1] in "[{":
        try:
            return key.strip(), json.loads(value)
        except json.JSONDecodeError as exc:
            raise UserError(f"--param {key.strip()} looks like JSON but is not valid ({exc.msg} at column "
                            f"{exc.colno}); write valid JSON in shell quotes, "
                            "e.g. --param 'reference=[\"gsm8k\"]'.") from None
    return key.strip(), value


def _load_params_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--params-file {path} does not exist or is not a file.")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"--params-file {path} is not UTF-8 text; save it as UTF-8 JSON.") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--params-file {path} is not valid JSON ({exc.msg} at line {exc.lineno} column "
                        f"{exc.colno}); fix the file.") from None
    if not isinstance(data, dict):
        raise UserError(f"--params-file {path} must hold one JSON object of parameters.")
    return data


def _job_row(job: Job) -> dict[str, Any]:
    total = job.progress_total
    progress = f"{job.progress_done}/{total}" if total else (str(job.progress_done) if job.progress_done else "")
    return {"id": job.id, "kind": job.kind, "status": job.status, "attempts": f"{job.attempts}/{job.max_attempts}",
            "priority": job.priority, "progress": progress, "owner": job.lease_owner,
            "created": job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else None,
            "error": (job.error or "").splitlines()[0][:80] if job.error else None}


# --- root -----------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rplat")
def cli() -> None:
    """rplat: run RATIONALYST and Turning-Dust-into-Gold experiments on a database-backed job queue.

    The store is RPLAT_DATABASE_URL (default: a SQLite file under RPLAT_HOME, default ./.rplat).
    """


def _one_sentence(message: str) -> str:
    """Click's message as one lower-case clause: "No such option '--x'. Did you mean '--y'?" -> one line."""
    text = " ".join(message.split()).rstrip(".")
    text = re.sub(r"\.? Did you mean (.+)\?$", r" (did you mean \1?)", text)
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _first_line(exc: DBAPIError) -> str:
    return (str(exc.orig) if exc.orig else str(exc)).strip().splitlines()[0].rstrip(".")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; every mistake a user can make ends as one `error:` sentence on stderr and exit code 2."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="rplat", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(2)
    except click.ClickException as exc:
        command = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "rplat"
        click.echo(f"error: {_one_sentence(exc.format_message())}; see `{command} --help`.", err=True)
        sys.exit(2)
    except OperationalError as exc:
        click.echo(f"error: the database refused the operation ({_first_line(exc)}); check RPLAT_DATABASE_URL.",
                   err=True)
        sys.exit(2)
    except DBAPIError as exc:
        click.echo(f"error: the database rejected the change ({_first_line(exc)}); nothing was written.", err=True)
        sys.exit(2)
    except OSError as exc:
        what = f"cannot use {exc.filename} ({exc.strerror})" if exc.filename else f"operating system error ({exc})"
        click.echo(f"error: {what}; check the path and its permissions.", err=True)
        sys.exit(2)


@cli.command()
def init() -> None:
    """Create RPLAT_HOME and the database, and migrate it to the current schema."""
    from rplat.migrate import upgrade

    settings = get_settings()
    for d in (settings.home, settings.artifacts, settings.checkpoints):
        d.mkdir(parents=True, exist_ok=True)
    engine = _engine(at_head=False)
    upgrade(engine)
    click.echo(f"rplat home {settings.home}; database {engine.url.render_as_string(hide_password=True)} at head")


# --- db -------------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Schema migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the database up to REVISION (default head)."""
    from rplat.migrate import current_revision, upgrade

    engine = _engine(at_head=False)
    upgrade(engine, revision)
    click.echo(f"database at {current_revision(engine)}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (`base` removes every table)."""
    from rplat.migrate import current_revision, downgrade

    engine = _engine(at_head=False)
    downgrade(engine, revision)
    click.echo(f"database at {current_revision(engine) or 'base'}")


@db.command("check")
def db_check() -> None:
    """Exit 0 if the database is at head and matches the models exactly; else say what differs (exit 1)."""
    from rplat.migrate import current_revision, drift, head_revision

    engine = _engine(at_head=False)
    current, head = current_revision(engine), head_revision()
    if current != head:
        click.echo(f"database at {current or 'base'}, head is {head}; run `rplat db upgrade`.", err=True)
        sys.exit(1)
    diff = drift(engine)
    if diff:
        click.echo(f"database at head but differs from the models: {diff}", err=True)
        sys.exit(1)
    click.echo(f"database at head {head}; no drift")


# --- experiments and models -----------------------------------------------------------------------


@cli.group()
def experiments() -> None:
    """Named experiments that group jobs."""


@experiments.command("add")
@click.argument("name")
@click.option("--description", default=None)
def experiments_add(name: str, description: str | None) -> None:
    """Create the experiment NAME."""
    limit = Experiment.__table__.c.name.type.length
    if not name.strip() or len(name) > limit:
        raise UserError(f"experiment names are 1 to {limit} characters, not {len(name.strip())}; choose another name.")
    engine = _engine()
    with transaction(engine) as session:
        if session.scalar(select(Experiment.id).where(Experiment.name == name)) is not None:
            raise UserError(f"experiment {name!r} already exists; see `rplat experiments ls`.")
        session.add(Experiment(name=name, description=description))
    click.echo(f"experiment {name} created")


@experiments.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def experiments_ls(as_json: bool) -> None:
    engine = _engine()
    with transaction(engine) as session:
        counts = dict(session.execute(select(Job.experiment_id, func.count()).group_by(Job.experiment_id)).all())
        rows = [{"name": e.name, "jobs": counts.get(e.id, 0), "description": e.description,
                 "created": e.created_at.strftime("%Y-%m-%d %H:%M:%S")}
                for e in session.scalars(select(Experiment).order_by(Experiment.id))]
    _emit(rows, ["name", "jobs", "description", "created"], as_json)


@cli.group()
def models() -> None:
    """The model and adapter registry."""


@models.command("ls")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def models_ls(as_json: bool) -> None:
    engine = _engine()
    with transaction(engine) as session:
        rows = [{"name": m.name, "format": m.format, "role": m.role, "fingerprint": m.fingerprint[:12], "job": m.job_id,
                 "path": m.path} for m in session.scalars(select(Model).order_by(Model.id))]
    _emit(rows, ["name", "format", "role", "fingerprint", "job", "path"], as_json)


@models.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["base", "lora", "embedding"]), default="base", show_default=True,
              help="how the files are loaded: a Hugging Face model, a peft LoRA adapter, or a sentence-transformers model")
@click.option("--role", default=None, help="agent, scorer, rationalyst, ...")
@click.option("--base", "base_name", default=None, help="for an adapter: the registered model it was trained on")
@click.option("--endpoint", default=None, help="OpenAI-compatible URL that serves this model (backend=openai)")
def models_add(name: str, path: str, fmt: str, role: str | None, base_name: str | None, endpoint: str | None) -> None:
    """Register the model (or adapter) in directory PATH under NAME; its fingerprint is a hash of its files."""
    from rplat.registry import get_model, register_model

    if fmt == "lora" and base_name is None:
        raise UserError("an adapter needs its base model: pass --base NAME (see `rplat models ls`).")
    engine = _engine()
    with transaction(engine) as session:
        parents = {"base": get_model(session, base_name).id} if base_name else None
        config = {"endpoint": endpoint} if endpoint else {}
        model = register_model(session, name, fmt, Path(path).resolve(), role=role, parents=parents, config=config)
        fingerprint = model.fingerprint
    click.echo(f"model {name} registered ({fmt}, fingerprint {fingerprint[:12]})")


@models.command("bundled")
def models_bundled() -> None:
    """Convert the bundled SmolLM2-135M-Instruct (GGUF) to safetensors once and register it."""
    from rplat.bundled import SMOLLM2, ensure_smollm2

    engine = _engine()
    with transaction(engine) as session:
        model = ensure_smollm2(session, get_settings().home)
        path = model.path
    click.echo(f"model {SMOLLM2} registered at {path}")


# --- serving --------------------------------------------------------------------------------------


@cli.command()
@click.argument("model_name", metavar="MODEL")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- VLLM_ARGS...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (0.0.0.0 serves other machines)")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="port to bind (default: a free one)")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME",
              help="also serve this LoRA adapter of the same base, per request (repeatable)")
@click.option("--vllm", "vllm_path", envvar="RPLAT_VLLM", default=None, metavar="PATH",
              help="the `vllm` executable or its venv [env RPLAT_VLLM; default .venv-vllm from `make vllm`, then PATH]")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="float32 matches the hf backend's CPU scores exactly; auto is bf16 for fp32 weights")
@click.option("--max-model-len", type=click.IntRange(16), default=None, help="context length (default: the model's)")
@click.option("--eager", is_flag=True, help="no torch.compile: starts minutes faster on CPU, generates slower")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(1), help="seconds to wait for health")
@click.option("--detach/--foreground", default=False, show_default=True,
              help="return once healthy (stop later with --stop), or run until Ctrl-C/SIGTERM")
@click.option("--stop", "stop_it", is_flag=True, help="stop the server recorded for MODEL and forget its endpoint")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def serve(model_name: str, vllm_args: tuple[str, ...], host: str, port: int | None, adapters: tuple[str, ...],
          vllm_path: str | None, dtype: str, max_model_len: int | None, eager: bool, timeout: float, detach: bool,
          stop_it: bool, as_json: bool) -> None:
    """Start `vllm serve` for registered MODEL, wait until healthy and record its URL in the registry.

    Jobs then reach it with `--param backend=openai`; arguments after `--` go to `vllm serve` unchanged.
    """
    from rplat import serve as serving

    engine = _engine()
    if stop_it:
        pid, forgotten = serving.stop(engine, model_name)
        info = {"stopped_pid": pid, "forgotten": forgotten}
        click.echo(json.dumps(info) if as_json else
                   f"{'stopped server pid ' + str(pid) if pid else 'no server process was running'}; "
                   f"endpoint removed from {', '.join(forgotten) or 'no model'}")
        return
    vllm = serving.find_vllm(vllm_path)
    plan = serving.plan(engine, model_name, home=get_settings().home, vllm=vllm, host=host, port=port,
                        adapters=adapters, dtype=dtype, max_model_len=max_model_len, eager=eager,
                        extra_args=vllm_args)
    if not as_json:
        click.echo(f"starting vllm serve for {', '.join(plan.served)} at {plan.url} (log {plan.log})", err=True)
    server = serving.start(engine, plan, timeout=timeout)
    info = {"url": server.url, "pid": server.pid, "log": str(server.log), "served": server.served,
            "seconds_to_ready": round(server.seconds_to_ready, 1)}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"serving {', '.join(server.served)} at {server.url} (pid {server.pid}, ready after "
                   f"{server.seconds_to_ready:.0f} s); jobs use it with --param backend=openai")
    if detach:
        return
    serving.run_foreground(engine, server, echo=lambda m: click.echo(m, err=True))


# --- sql -----------------------------------------------------------------------------------------


@cli.command()
@click.argument("query", required=False)
@click.option("--views", "list_views", is_flag=True, help="list the views and their columns")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts (one object per row)")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV for scripts")
def sql(query: str | None, list_views: bool, as_json: bool, as_csv: bool) -> None:
    """Run one read-only QUERY over the analytics views (DuckDB) and print the rows.

    The views name the useful joins (`rplat sql --views` lists them); the raw tables are `store.<table>`.
    Nothing can be written: the store is attached READ_ONLY and DuckDB is locked down.

    \b
    rplat sql "SELECT method, subject, accuracy FROM evaluations ORDER BY accuracy DESC"
    rplat sql "SELECT run_a, run_b, only_a, only_a_problem_ids FROM intersections" --json
    """
    import csv

    from rplat import analytics

    if as_json and as_csv:
        raise UserError("choose one of --json and --csv, not both.")
    if list_views == bool(query):
        raise UserError('give either a QUERY or --views, e.g. `rplat sql "SELECT * FROM job_timeline"`.')
    engine = _engine()
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    con = analytics.connect(url)
    try:
        if list_views:
            columns = ["view", "columns"]
            rows = [(name, [{"name": c, "type": t} for c, t in cols] if as_json else ", ".join(c for c, _ in cols))
                    for name, cols in analytics.view_columns(con).items()]
        else:
            columns, rows = analytics.run_query(con, query or "")
    finally:
        con.close()
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return
    _emit([dict(zip(columns, row, strict=True)) for row in rows], columns, as_json)


# --- pipelines ------------------------------------------------------------------------------------


@cli.group()
def pipeline() -> None:
    """Enqueue a method's whole DAG of jobs at once."""


@pipeline.command("rationalyst")
@click.option("--documents", required=True, help="document dataset to mine rationales from")
@click.option("--benchmark", required=True, help="problem dataset with worked solutions (reference, rationales, demos)")
@click.option("--test", default=None, help="problem dataset to solve (default: the benchmark)")
@click.option("--model", default="smollm2-135m-instruct", show_default=True, help="extractor, scorer, agent and base")
@click.option("--experiment", default=None)
@click.option("--methods", default=",".join(("greedy", "sample", "random-candidate", "rationalyst-implicit",
                                             "rationalyst-explicit")), show_default=True)
@click.option("--limit", default=None, type=click.IntRange(1), help="solve at most this many problems")
@click.option("--extract-limit", default=None, type=click.IntRange(1), help="annotate at most this many texts")
@click.option("--extract-mode", type=click.Choice(["rewrite", "insert"]), default="rewrite", show_default=True)
@click.option("--train-steps", default=None, type=click.IntRange(1), help="cap on optimizer steps")
@click.option("--params-file", default=None, help='JSON {"kind": {param: value}} overrides per job kind')
@click.option("--json", "as_json", is_flag=True)
def pipeline_rationalyst(documents: str, benchmark: str, test: str | None, model: str, experiment: str | None,
                         methods: str, limit: int | None, extract_limit: int | None, extract_mode: str,
                         train_steps: int | None, params_file: str | None, as_json: bool) -> None:
    """prefilter -> extract -> score -> train -> solve x methods -> evaluate, with dependencies."""
    from rplat.pipelines import RationalystPipeline

    overrides = _load_params_file(params_file) if params_file else {}
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    ids = RationalystPipeline(documents=documents, benchmark=benchmark, test=test, model=model,
                              experiment=experiment, methods=chosen, limit=limit, extract_limit=extract_limit,
                              extract_mode=extract_mode, train_steps=train_steps, overrides=overrides
                              ).enqueue(_queue(_engine()))
    if as_json:
        click.echo(json.dumps(ids))
        return
    click.echo(f"prefilter {ids['prefilter']} -> extract {ids['extract']} -> score {ids['score']} -> "
               f"train {ids['train']}")
    for method, job in ids["solve"].items():
        click.echo(f"  solve {method}: job {job}, evaluate: job {ids['evaluate'][method]}")


# --- import ---------------------------------------------------------------------------------------


@cli.group("import")
def import_() -> None:
    """Import documents or problems from JSONL or Parquet (all or nothing)."""


def _progress_bar(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="rows", disable=None, file=sys.stderr)


def _run_import(file: str, dataset: str, fmap: Any, append: bool, as_json: bool) -> None:
    from rplat.importer import import_file

    engine = _engine()
    bar = _progress_bar(0, f"import {dataset}")
    try:
        summary = import_file(engine, Path(file), dataset, fmap, append=append, progress=bar.update)
    finally:
        bar.close()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"imported {summary['imported']} {summary['kind']} into dataset {dataset} "
                   f"({summary['already_present']} already present; import job {summary['job_id']})")


_common_import = [
    click.argument("file", type=click.Path(dir_okay=False)),
    click.option("--dataset", required=True, help="dataset name to create (or extend with --append)"),
    click.option("--id-field", default=None, help="field holding a unique id (default: the line number)"),
    click.option("--split", default=None, help="split recorded on every row (train, test, ...)"),
    click.option("--append", is_flag=True, help="add to an existing dataset; records already there are skipped"),
    click.option("--json", "as_json", is_flag=True, help="print the summary as JSON"),
]


def _with(options: list[Any]) -> Any:
    def wrap(f: Any) -> Any:
        for opt in reversed(options):
            f = opt(f)
        return f

    return wrap


@import_.command("documents")
@_with(_common_import)
@click.option("--text-field", default="text", show_default=True)
@click.option("--source", default=None, help="source recorded on every row (pile, wikipedia, ...)")
@click.option("--subset-field", default=None, help="field naming the document's subset")
def import_documents(file: str, dataset: str, id_field: str | None, split: str | None, append: bool, as_json: bool,
                     text_field: str, source: str | None, subset_field: str | None) -> None:
    """Import unlabeled documents (the RATIONALYST corpus)."""
    from rplat.importer import FieldMap

    optional = {"subset": subset_field} if subset_field else {}
    fmap = FieldMap("documents", id_field, {"text": text_field}, optional, {"source": source, "split": split})
    _run_import(file, dataset, fmap, append, as_json)


@import_.command("problems")
@_with(_common_import)
@click.option("--question-field", default="question", show_default=True)
@click.option("--solution-field", default="solution", show_default=True, help="worked solution (may be absent)")
@click.option("--answer-field", default="answer", show_default=True, help="gold final answer (may be absent)")
@click.option("--subject-field", default=None)
@click.option("--level-field", default=None)
@click.option("--benchmark", default=None, help="benchmark recorded on every row (gsm8k, math, ...)")
def import_problems(file: str, dataset: str, id_field: str | None, split: str | None, append: bool, as_json: bool,
                    question_field: str, solution_field: str, answer_field: str, subject_field: str | None,
                    level_field: str | None, benchmark: str | None) -> None:
    """Import benchmark problems (question, worked solution, gold answer)."""
    from rplat.importer import FieldMap

    optional = {"solution": solution_field, "answer": answer_field}
    if subject_field:
        optional["subject"] = subject_field
    if level_field:
        optional["level"] = level_field
    fmap = FieldMap("problems", id_field, {"question": question_field}, optional,
                    {"benchmark": benchmark, "split": split})
    _run_import(file, dataset, fmap, append, as_json)


@cli.group()
def generate() -> None:
    """Write benchmark files from offline generators (then `rplat import problems`)."""


@generate.command("reasoning-gym")
@click.argument("name")
@click.option("--size", default=100, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
def generate_reasoning_gym(name: str, size: int, seed: int, out: str) -> None:
    """Generate NAME (e.g. gsm_symbolic) from reasoning-gym with its worked solutions, deterministically by seed."""
    from rplat.benchmarks import write_reasoning_gym

    n = write_reasoning_gym(name, size, seed, Path(out))
    click.echo(f"wrote {n} problems to {out}")


# --- enqueue and jobs -----------------------------------------------------------------------------


@cli.command()
@click.argument("kind")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="a job parameter (repeatable)")
@click.option("--params-file", default=None, help="JSON object of parameters (--param overrides it)")
@click.option("--experiment", default=None, help="experiment the job belongs to")
@click.option("--after", multiple=True, type=int, metavar="JOB", help="run only after this job succeeded")
@click.option("--priority", default=0, show_default=True, type=int, help="higher runs first")
@click.option("--max-attempts", default=3, show_default=True, type=int)
@click.option("--dedupe-key", default=None, help="jobs with the same key are one job (default: kind+params)")
@click.option("--no-dedupe", is_flag=True, help="always create a new job, even if an identical one exists")
@click.option("--host", default=None, help="only a runner on this machine (host name, or runner --host) takes it")
@click.option("--json", "as_json", is_flag=True)
def enqueue(kind: str, params: tuple[str, ...], params_file: str | None, experiment: str | None,
            after: tuple[int, ...], priority: int, max_attempts: int, dedupe_key: str | None, no_dedupe: bool,
            host: str | None, as_json: bool) -> None:
    """Queue a job of KIND (see `rplat kinds`)."""
    raw: dict[str, Any] = _load_params_file(params_file) if params_file else {}
    raw.update(dict(_parse_param(p) for p in params))
    kinds_registry.validate_params(kind, raw)
    engine = _engine()
    job_id, created = _queue(engine).enqueue(
        kind, raw, experiment=experiment, priority=priority, max_attempts=max_attempts, after=after,
        dedupe_key=dedupe_key, dedupe=not no_dedupe, host=host)
    if as_json:
        click.echo(json.dumps({"id": job_id, "created": created}))
    else:
        click.echo(f"job {job_id} {'queued' if created else 'already exists (identical job)'}")


@cli.command("kinds")
@click.option("--json", "as_json", is_flag=True)
def kinds_cmd(as_json: bool) -> None:
    """List job kinds and their parameters."""
    rows = []
    for kind in kinds_registry.all_kinds().values():
        params = ", ".join(
            n if f.is_required() else f"{n}={json.dumps(f.get_default(call_default_factory=True), default=str)}"
            for n, f in kind.params.model_fields.items()
        )
        rows.append({"kind": kind.name, "description": kind.description, "params": params})
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        click.echo(f"{r['kind']}: {r['description']}\n    params: {r['params']}")


@cli.group()
def jobs() -> None:
    """List, inspect, cancel and retry jobs."""


def _get_job(session: Any, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise UserError(f"job {job_id} does not exist; see `rplat jobs ls`.")
    return job


@jobs.command("ls")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]), default=None)
@click.option("--kind", default=None)
@click.option("--experiment", default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
def jobs_ls(status: str | None, kind: str | None, experiment: str | None, limit: int, as_json: bool) -> None:
    engine = _engine()
    with transaction(engine) as session:
        q = select(Job).order_by(Job.id.desc()).limit(limit)
        if status:
            q = q.where(Job.status == status)
        if kind:
            q = q.where(Job.kind == kind)
        if experiment:
            exp_id = session.scalar(select(Experiment.id).where(Experiment.name == experiment))
            if exp_id is None:
                raise UserError(f"experiment {experiment!r} does not exist; see `rplat experiments ls`.")
            q = q.where(Job.experiment_id == exp_id)
        rows = [_job_row(j) for j in session.scalars(q)]
    _emit(rows, ["id", "kind", "status", "attempts", "priority", "progress", "owner", "created", "error"], as_json)


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_show(job_id: int, as_json: bool) -> None:
    from rplat.models import JobDependency

    engine = _engine()
    with transaction(engine) as session:
        job = _get_job(session, job_id)
        parents = session.scalars(select(JobDependency.depends_on_id).where(JobDependency.job_id == job_id)).all()
        experiment = session.get(Experiment, job.experiment_id).name if job.experiment_id else None
        info = {c.name: getattr(job, c.name) for c in Job.__table__.columns}
        info.update(after=list(parents), experiment=experiment)
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    for key, value in info.items():
        if value is None or value == []:
            continue
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        click.echo(f"{key:>17}: {value}")


@jobs.command("logs")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
def jobs_logs(job_id: int, as_json: bool) -> None:
    engine = _engine()
    with transaction(engine) as session:
        _get_job(session, job_id)
        rows = [{"at": e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], "event": e.event, "attempt": e.attempt,
                 "runner": e.runner, "message": e.message}
                for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]
    _emit(rows, ["at", "event", "attempt", "runner", "message"], as_json)


@jobs.command("cancel")
@click.argument("job_id", type=int)
def jobs_cancel(job_id: int) -> None:
    """Cancel a queued job, or ask a running one to stop at its next check."""
    outcome = _queue(_engine()).cancel(job_id)
    click.echo(f"job {job_id}: {outcome}")


@jobs.command("retry")
@click.argument("job_id", type=int)
def jobs_retry(job_id: int) -> None:
    """Queue a failed or cancelled job again (with the descendants its end cancelled)."""
    ids = _queue(_engine()).retry(job_id)
    click.echo(f"queued again: {', '.join(map(str, ids))}")


# --- reports --------------------------------------------------------------------------------------


@cli.group()
def report() -> None:
    """Human-readable summaries of finished jobs."""


@report.command("rationalyst")
@click.option("--experiment", default=None, help="the experiment whose evaluations to show (default: all)")
@click.option("--json", "as_json", is_flag=True)
def report_rationalyst(experiment: str | None, as_json: bool) -> None:
    """Accuracy per solving method (micro over problems) and the mining funnel behind the rationale model."""
    from rplat.reports import rationalyst_report

    summary = rationalyst_report(_engine(), experiment=experiment)
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    f = summary["funnel"]
    click.echo(f"documents kept by the prefilter: {f['prefilter_passed']}; texts annotated: {f['extractions']} "
               f"({f['passed_fidelity']} faithful); rationales: {f['rationales']}, kept by loss delta: {f['kept']}; "
               f"training steps: {f['train_steps']}")
    click.echo(_table(summary["results"], ["method", "subject", "n", "correct", "accuracy", "evaluate_job"]))


@report.command("prefilter")
@click.option("--job", "job_id", type=int, default=None, help="the prefilter job (default: the latest one)")
@click.option("--experiment", default=None, help="the latest prefilter job of this experiment")
@click.option("--examples", default=3, show_default=True, type=click.IntRange(0), help="documents shown per side")
@click.option("--json", "as_json", is_flag=True)
def report_prefilter(job_id: int | None, experiment: str | None, examples: int, as_json: bool) -> None:
    """How many documents a prefilter job kept, the cosine distribution, and the closest and farthest documents."""
    from rplat.reports import prefilter_report

    summary = prefilter_report(_engine(), job_id=job_id, experiment=experiment, examples=examples)
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    click.echo(f"prefilter job {summary['job_id']} ({summary['status']}): {summary['passed']} of {summary['scored']} "
               f"documents kept at cosine >= {summary['threshold']} (max {summary['max_chars']} chars)")
    q = summary["cosine_quantiles"]
    click.echo("cosine to the reference centroid: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))
    for title, key in (("closest", "closest"), ("farthest", "farthest")):
        click.echo(f"{title}:")
        for doc in summary[key]:
            click.echo(f"  {doc['cosine']:.3f}  [{doc['external_id']}] {doc['snippet']}")


# --- runner and status ----------------------------------------------------------------------------


@cli.command()
@click.option("--kinds", default=None, help="comma-separated job kinds to take (default: all)")
@click.option("--once", is_flag=True, help="exit as soon as no job is claimable (drain the queue)")
@click.option("--until-done", is_flag=True,
              help="exit when no job it could run is left: waits out retry backoffs and jobs running elsewhere")
@click.option("--max-jobs", default=None, type=click.IntRange(1), help="exit after this many jobs")
@click.option("--lease-seconds", default=60.0, show_default=True, type=click.FloatRange(0.2))
@click.option("--poll-seconds", default=1.0, show_default=True, type=click.FloatRange(0.01))
@click.option("--name", default=None, help="runner name (default host:pid:random)")
@click.option("--host", default=None, help="machine name for jobs enqueued with --host (default: the host name)")
@click.option("--quiet", is_flag=True, help="print nothing per job")
def runner(kinds: str | None, once: bool, until_done: bool, max_jobs: int | None, lease_seconds: float,
           poll_seconds: float, name: str | None, host: str | None, quiet: bool) -> None:
    """Claim and run jobs until stopped (SIGTERM releases the current job for another runner)."""
    from rplat.runners.loop import Runner, RunnerOptions

    settings = get_settings()
    engine = _engine()
    kind_list = [k.strip() for k in kinds.split(",") if k.strip()] if kinds else None
    options = RunnerOptions(kinds=kind_list, once=once, until_done=until_done, max_jobs=max_jobs, lease_seconds=lease_seconds,
                            poll_seconds=poll_seconds, name=name, host=host)
    echo = (lambda _m: None) if quiet else (lambda m: click.echo(f"[runner] {m}", err=True))
    done = Runner(_queue(engine), settings.home, options, echo=echo).run()
    echo(f"stopped after {done} job(s)")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json: bool) -> None:
    """Queue depth per kind and status, live runners, running jobs' progress."""
    engine = _engine()
    now = utcnow()
    with transaction(engine) as session:
        depth = [{"kind": k, "status": s, "jobs": n} for k, s, n in session.execute(
            select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status).order_by(Job.kind, Job.status))]
        runners = [{"runner": r.name, "host": r.host, "pid": r.pid, "job": r.current_job_id, "done": r.jobs_done,
                    "seen_s_ago": round((now - r.heartbeat_at).total_seconds(), 1)}
                   for r in session.scalars(select(Runner).where(Runner.stopped_at.is_(None))
                                            .order_by(Runner.heartbeat_at.desc()).limit(50))
                   if (now - r.heartbeat_at).total_seconds() < 300]
        running = [_job_row(j) for j in session.scalars(select(Job).where(Job.status == "running").order_by(Job.id))]
    if as_json:
        click.echo(json.dumps({"queue": depth, "runners": runners, "running": running}, default=str))
        return
    click.echo("queue:")
    click.echo(_table(depth, ["kind", "status", "jobs"]))
    click.echo("\nrunners (heartbeat in the last 5 minutes):")
    click.echo(_table(runners, ["runner", "host", "pid", "job", "done", "seen_s_ago"]))
    click.echo("\nrunning jobs:")
    click.echo(_table(running, ["id", "kind", "attempts", "progress", "owner"]))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to bind (0.0.0.0 shows the store to every machine that can reach this one)")
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535))
def dashboard(host: str, port: int) -> None:
    """Browse rationales, failures, solved sets and jobs in a read-only Streamlit app (runs until Ctrl-C)."""
    import os
    import socket

    from rplat import dashboard as dashboard_package

    _engine()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # Servers set SO_REUSEADDR too, so only a live listener (not a TIME_WAIT leftover) makes this fail.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                            "pick another address with --host or port with --port.") from None
    app = Path(dashboard_package.__file__).with_name("app.py")
    env = dict(os.environ, RPLAT_DATABASE_URL=get_settings().database_url)
    click.echo(f"dashboard at http://{host}:{port} (read-only); Ctrl-C stops it", err=True)
    os.execve(sys.executable, [sys.executable, "-m", "streamlit", "run", str(app),
                               "--server.address", host, "--server.port", str(port),
                               "--server.headless", "true", "--browser.gatherUsageStats", "false",
                               "--server.fileWatcherType", "none", "--global.developmentMode", "false",
                               "--client.toolbarMode", "minimal"], env)


if __name__ == "__main__":
    main()
