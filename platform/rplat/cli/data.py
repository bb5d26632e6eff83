"""`rplat import` and `rplat generate`: data in."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rplat.cli._common import open_store, option

# --- import ---------------------------------------------------------------------------------------


@click.group("import")
def import_() -> None:
    """Import documents, problems or teacher chains from JSONL (documents, problems: also Parquet); all or nothing."""


def _progress_bar(total: int, label: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="rows", disable=None, file=sys.stderr)


def _run_import(file: str, dataset: str, fmap: Any, append: bool, as_json: bool) -> None:
    from rplat.imports.datasets import import_file

    engine = open_store()
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
    from rplat.imports.datasets import FieldMap

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
    from rplat.imports.datasets import FieldMap

    optional = {"solution": solution_field, "answer": answer_field}
    if subject_field:
        optional["subject"] = subject_field
    if level_field:
        optional["level"] = level_field
    fmap = FieldMap("problems", id_field, {"question": question_field}, optional,
                    {"benchmark": benchmark, "split": split})
    _run_import(file, dataset, fmap, append, as_json)


@import_.command("chains")
@click.argument("path", metavar="FILE_OR_DIR", type=click.Path())
@click.option("--teacher", required=True, help="name of the chain set (gpt-3.5, gpt-4, ...)")
@click.option("--dataset", default="math-train", show_default=True,
              help="problem dataset the chains belong to (released layout: created or extended)")
@click.option("--labeler", type=click.Choice(["hendrycks", "math-verify"]), default="hendrycks", show_default=True,
              help="whose verdict is the label (both are stored; chains of the set stored before under the other "
              "labeler are relabelled)")
@option("--layout", old="--format", type=click.Choice(["auto", "released", "flat"]), default="auto", show_default=True,
        help="released: one problem per line with its chains; flat: one chain per line with a problem_id")
@click.option("--benchmark", default="math", show_default=True, help="benchmark recorded on created problems")
@click.option("--split", default="train", show_default=True, help="split recorded on created problems")
@click.option("--workers", type=click.IntRange(min=1), default=None,
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
@click.option("--size", default=100, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
def generate_reasoning_gym(name: str, size: int, seed: int, out: str) -> None:
    """Generate NAME (e.g. gsm_symbolic) from reasoning-gym with its worked solutions, deterministically by seed."""
    from rplat.imports.generate import write_reasoning_gym

    n = write_reasoning_gym(name, size, seed, Path(out))
    click.echo(f"wrote {n} problems to {out}")


@generate.command("sums")
@click.option("--size", default=100, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--digits", default=1, show_default=True, type=click.IntRange(1, 6), help="digits per operand")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSONL file to write")
def generate_sums(size: int, seed: int, digits: int, out: str) -> None:
    """Distinct two-term sums with worked solutions ending in \\boxed{}, subject carry / no-carry (the TDG demo)."""
    from rplat.imports.generate import write_sums

    n = write_sums(size, seed, Path(out), digits)
    click.echo(f"wrote {n} problems to {out}")
