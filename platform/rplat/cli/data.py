"""`rplat import` and `rplat generate`: data in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from rplat.boundary import INT32_MAX, MAX_GENERATED, MAX_WORKERS
from rplat.cli._common import NAME, SEED, open_store, option

# --- import ---------------------------------------------------------------------------------------


@click.group("import")
def import_() -> None:
    """Import documents or problems (JSONL, .gz, .zst, Parquet, shards, stdin, Hugging Face; streamed) or
    teacher chains."""


def _run_import(file: str, dataset: str, fmap: Any, append: bool, as_json: bool, where: tuple[str, ...],
                max_chars: int | None = None) -> dict[str, Any]:
    from rplat.imports.datasets import Filters, describe, import_source, parse_where, progress_for
    from rplat.imports.readers import open_source

    filters = Filters(max_chars=max_chars, where=tuple(parse_where(w) for w in where))
    engine = open_store()
    source = open_source(file)
    with progress_for(source, f"import {dataset}") as progress:
        summary = import_source(engine, file, dataset, fmap, append=append, filters=filters, progress=progress,
                                source=source)
    click.echo(json.dumps(summary) if as_json else describe(summary))
    return summary


_common_import = [
    click.argument("file", metavar="FILE"),
    click.option("--dataset", required=True, type=NAME, help="dataset name to create (or extend with --append)"),
    click.option("--id-field", default=None, help="field holding a unique id (default: the content hash is the id)"),
    click.option("--split", default=None, help="split recorded on every row (train, test, ...)"),
    click.option("--where", multiple=True, metavar="FIELD=VALUE[,VALUE]",
                 help="import only records whose FIELD has one of the values (repeatable: all must hold)"),
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
@click.option("--source-field", default=None, help="field naming each document's source (instead of --source)")
@click.option("--subset-field", default=None, help="field naming the document's subset (e.g. meta.pile_set_name)")
@click.option("--max-chars", type=click.IntRange(1, INT32_MAX), default=None,
              help="leave out documents longer than this")
def import_documents(file: str, dataset: str, id_field: str | None, split: str | None, where: tuple[str, ...],
                     append: bool, as_json: bool, text_field: str, source: str | None, source_field: str | None,
                     subset_field: str | None, max_chars: int | None) -> None:
    """Import unlabeled documents (the RATIONALYST corpus); FILE may be a file, a directory of shards or -."""
    from rplat.errors import UserError
    from rplat.imports.datasets import FieldMap

    if source is not None and source_field is not None:
        raise UserError("--source and --source-field both set the source; give one of them.")
    optional = {}
    if subset_field:
        optional["subset"] = subset_field
    if source_field:
        optional["source"] = source_field
    constants = {"split": split} if source_field else {"source": source, "split": split}
    fmap = FieldMap("documents", id_field, {"text": text_field}, optional, constants, strict=tuple(optional))
    _run_import(file, dataset, fmap, append, as_json, where, max_chars)


@import_.command("problems")
@_with(_common_import)
@option("--layout", old="--format", type=click.Choice(["fields", "math"]), default="fields", show_default=True,
              help="fields: each column from the field its --X-field names; math: the released MATH files (question "
              "from problem or question without its 'Problem:' line, solution from solution or answer, gold answer "
              "= the solution's last \\boxed{}, subject from type, level from level)")
@click.option("--question-field", default=None, help="question  [default: question; --layout math: problem, else "
              "question]")
@click.option("--solution-field", default=None, help="worked solution (may be absent)  [default: solution; "
              "--layout math: solution, else answer]")
@click.option("--answer-field", default=None, help="gold final answer (may be absent)  [default: answer; not with "
              "--layout math]")
@click.option("--subject-field", default=None, help="subject  [--layout math: type, else subject]")
@click.option("--level-field", default=None, help="level  [--layout math: level]")
@click.option("--benchmark", default=None, help="benchmark recorded on every row (gsm8k, math, ...)  "
              "[--layout math: math]")
def import_problems(file: str, dataset: str, id_field: str | None, split: str | None, where: tuple[str, ...],
                    append: bool, as_json: bool, layout: str, question_field: str | None, solution_field: str | None,
                    answer_field: str | None, subject_field: str | None, level_field: str | None,
                    benchmark: str | None) -> None:
    """Import benchmark problems (question, worked solution, gold answer); FILE as for documents. Gold answers
    that look like worked solutions (long, or with no final answer in them) are imported with a warning."""
    from rplat.imports.datasets import gold_warning, problem_fields

    fmap = problem_fields(layout=layout, id_field=id_field, question=question_field, solution=solution_field,
                          answer=answer_field, subject=subject_field, level=level_field, benchmark=benchmark,
                          split=split)
    summary = _run_import(file, dataset, fmap, append, as_json, where)
    warning = gold_warning(summary, fmap.optional.get("answer", "answer"))
    if warning is not None:
        click.echo(warning, err=True)


@import_.command("chains")
@click.argument("path", metavar="FILE_OR_DIR", type=click.Path())
@click.option("--teacher", required=True, type=NAME, help="name of the chain set (gpt-3.5, gpt-4, ...)")
@click.option("--dataset", default="math-train", show_default=True, type=NAME,
              help="problem dataset the chains belong to (released layout: created or extended)")
@click.option("--labeler", type=click.Choice(["hendrycks", "math-verify"]), default="hendrycks", show_default=True,
              help="whose verdict is the label (both are stored; chains of the set stored before under the other "
              "labeler are relabelled)")
@option("--layout", old="--format", type=click.Choice(["auto", "released", "flat"]), default="auto", show_default=True,
        help="released: one problem per line with its chains; flat: one chain per line with a problem_id")
@click.option("--benchmark", default="math", show_default=True, help="benchmark recorded on created problems")
@click.option("--split", default="train", show_default=True, help="split recorded on created problems")
@click.option("--workers", type=click.IntRange(1, MAX_WORKERS), default=None,
              help="labelling processes (default: one per core; 1 labels in this process)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
def import_chains(path: str, teacher: str, dataset: str, labeler: str, layout: str, benchmark: str, split: str,
                  workers: int | None, as_json: bool) -> None:
    """Import teacher chains (TDG's released JSONL, or flat), labelled by both labelers; all or nothing."""
    from rplat.imports import chains
    from rplat.progress import Progress

    engine = open_store()
    with Progress(f"label {teacher} chains", unit="chains") as progress:
        summary = chains.import_chains(engine, Path(path), teacher=teacher, dataset=dataset, labeler=labeler,
                                       benchmark=benchmark, split=split, layout=layout, workers=workers,
                                       progress=progress.advance, total=progress.set_total)
    click.echo(json.dumps(summary) if as_json else chains.summary_line(summary))


@click.group()
def generate() -> None:
    """Write benchmark files from offline generators (then `rplat import problems`)."""


@generate.command("reasoning-gym")
@click.argument("name")
@click.option("--size", default=100, show_default=True, type=click.IntRange(1, MAX_GENERATED))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
def generate_reasoning_gym(name: str, size: int, seed: int, out: str) -> None:
    """Generate NAME (e.g. gsm_symbolic) from reasoning-gym with its worked solutions, deterministically by seed."""
    from rplat.imports.generate import write_reasoning_gym

    n = write_reasoning_gym(name, size, seed, Path(out))
    click.echo(f"wrote {n} problems to {out}")


@generate.command("sums")
@click.option("--size", default=100, show_default=True, type=click.IntRange(1, MAX_GENERATED))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--digits", default=1, show_default=True, type=click.IntRange(1, 6), help="digits per operand")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
def generate_sums(size: int, seed: int, digits: int, out: str) -> None:
    """Distinct two-term sums with worked solutions ending in \\boxed{}, subject carry / no-carry (the TDG demo)."""
    from rplat.imports.generate import write_sums

    n = write_sums(size, seed, Path(out), digits)
    click.echo(f"wrote {n} problems to {out}")
