"""`rplat pipeline`: enqueue a method's whole DAG of jobs."""

from __future__ import annotations

import json

import click

from rplat.bundled import SMOLLM2
from rplat.cli._common import load_params_file, open_store, queue_of
from rplat.methods.guided import SOLVE_METHODS

# --- pipelines ------------------------------------------------------------------------------------


@click.group()
def pipeline() -> None:
    """Enqueue a method's whole DAG of jobs at once."""


@pipeline.command("rationalyst")
@click.option("--documents", required=True, help="document dataset to mine rationales from")
@click.option("--benchmark", required=True, help="problem dataset with worked solutions (reference, rationales, demos)")
@click.option("--test", default=None, help="problem dataset to solve (default: the benchmark)")
@click.option("--model", default=SMOLLM2, show_default=True, help="extractor, scorer, agent and base")
@click.option("--experiment", default=None)
@click.option("--methods", default=",".join(SOLVE_METHODS), show_default=True)
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

    overrides = load_params_file(params_file) if params_file else {}
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    ids = RationalystPipeline(documents=documents, benchmark=benchmark, test=test, model=model,
                              experiment=experiment, methods=chosen, limit=limit, extract_limit=extract_limit,
                              extract_mode=extract_mode, train_steps=train_steps, overrides=overrides
                              ).enqueue(queue_of(open_store()))
    if as_json:
        click.echo(json.dumps(ids))
        return
    click.echo(f"prefilter {ids['prefilter']} -> extract {ids['extract']} -> score {ids['score']} -> "
               f"train {ids['train']}")
    for method, job in ids["solve"].items():
        click.echo(f"  solve {method}: job {job}, evaluate: job {ids['evaluate'][method]}")


@pipeline.command("tdg")
@click.option("--benchmark", required=True, help="training problem dataset (gold answers; worked solutions for sft)")
@click.option("--test", required=True, help="problem dataset every model solves greedily")
@click.option("--teacher", "teacher_model", default=None, help="model to collect the chains from (collect-chains)")
@click.option("--chains", "chains_teacher", default=None, help="teacher name of chains already imported "
              "(`rplat import chains FILE --teacher NAME`), instead of --teacher")
@click.option("--student", required=True, help="base model every TDG setting trains a LoRA (or NAT) on")
@click.option("--experiment", default=None)
@click.option("--n-chains", default=8, show_default=True, type=click.IntRange(1, 256), help="chains per problem")
@click.option("--limit", default=None, type=click.IntRange(1), help="sample at most this many test problems")
@click.option("--train-steps", default=None, type=click.IntRange(1), help="cap on optimizer steps of every training")
@click.option("--asc-samples", default=16, show_default=True, type=click.IntRange(0, 256),
              help="sampled chains per test problem for ASC (0: no ranker, no ASC)")
@click.option("--asc-temperature", default=0.7, show_default=True, type=float, help="ASC's sampling temperature")
@click.option("--asc-setting", default="nce", show_default=True, help="the model ASC samples (a setting: base, "
              "sft, kd, mix, nt, ul, neg, nat, nce)")
@click.option("--params-file", default=None, help='JSON {"kind": {param: value}} overrides per job kind; the key '
              '"train" applies to every training kind, "asc-sample" to ASC\'s sample job only')
@click.option("--json", "as_json", is_flag=True)
def pipeline_tdg(benchmark: str, test: str, teacher_model: str | None, chains_teacher: str | None, student: str,
                 experiment: str | None, n_chains: int, limit: int | None, train_steps: int | None,
                 asc_samples: int, asc_temperature: float, asc_setting: str, params_file: str | None,
                 as_json: bool) -> None:
    """(collect-chains) -> train-neg -> train-nat -> train-nce, the baselines (sft, kd, mix, nt, ul) beside them,
    then a greedy sample and its evaluation for every model and the untrained student; ASC: train-ranker on
    the chains, n sampled chains of one model, score-samples, aggregate (greedy, sc, asc-f0..f3)."""
    from rplat.pipelines import TdgPipeline

    overrides = load_params_file(params_file) if params_file else {}
    ids = TdgPipeline(benchmark=benchmark, test=test, student=student, teacher_model=teacher_model,
                      chains_teacher=chains_teacher, experiment=experiment, n_chains=n_chains, limit=limit,
                      train_steps=train_steps, asc_samples=asc_samples, asc_temperature=asc_temperature,
                      asc_setting=asc_setting, overrides=overrides).enqueue(queue_of(open_store()))
    if as_json:
        click.echo(json.dumps(ids))
        return
    if ids["collect"] is not None:
        click.echo(f"collect-chains {ids['collect']}")
    train = ids["train"]
    click.echo(f"train-neg {train['neg']} -> train-nat {train['nat']} -> train-nce {train['nce']}; beside them: "
               + ", ".join(f"train-{s} {train[s]}" for s in ("sft", "kd", "mix", "nt", "ul")))
    for setting, job in ids["sample"].items():
        click.echo(f"  {setting}: sample job {job}, evaluate job {ids['evaluate'][setting]}")
    if (asc := ids["asc"]) is not None:
        click.echo(f"ASC on {asc['setting']}: train-ranker {asc['train-ranker']}, sample {asc['sample']} -> "
                   f"score-samples {asc['score-samples']} -> aggregate {asc['aggregate']}")
