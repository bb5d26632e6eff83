"""`rplat pipeline`: enqueue a method's whole DAG of jobs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import click

from rplat.bundled import SMOLLM2
from rplat.cli._common import COUNT, GPUS, NAME, Finite, load_params_file, open_store, option, queue_of, warn_old_params
from rplat.methods.guided import SOLVE_METHODS

# --- pipelines ------------------------------------------------------------------------------------


@click.group()
def pipeline() -> None:
    """Enqueue a method's whole DAG of jobs at once."""


def _overrides(params_file: str | None, kinds_of: Callable[[str], Iterable[str]]) -> dict[str, Any]:
    """The params file's overrides per key, after a deprecation line for each old parameter name they use;
    `kinds_of(key)` names the kinds a key applies to."""
    overrides = load_params_file(params_file) if params_file else {}
    for key, values in overrides.items():
        if isinstance(values, dict):
            for kind in kinds_of(key):
                warn_old_params(kind, [values])
    return overrides


def _check_made_names(names: Iterable[str]) -> None:
    """The names the pipeline's training jobs will register their models under (made from --experiment) are names:
    checked now, not when a training job ends."""
    from rplat.boundary import check_name

    for name in names:
        check_name(name, "the model name that --experiment makes")


@pipeline.command("rationalyst")
@click.option("--documents", required=True, type=NAME, help="document dataset to mine rationales from")
@option("--problems", old="--benchmark", required=True, type=NAME,
        help="problem dataset with worked solutions (reference, rationales, demos)")
@click.option("--test", default=None, type=NAME, help="problem dataset to solve (default: the --problems dataset)")
@click.option("--model", default=SMOLLM2, show_default=True, type=NAME, help="extractor, scorer, agent and base")
@click.option("--experiment", default=None, type=NAME)
@click.option("--methods", default=",".join(SOLVE_METHODS), show_default=True)
@click.option("--limit", default=None, type=COUNT, help="solve at most this many problems")
@click.option("--extract-limit", default=None, type=COUNT, help="annotate at most this many texts")
@click.option("--extract-mode", type=click.Choice(["rewrite", "insert"]), default="rewrite", show_default=True)
@click.option("--train-steps", default=None, type=COUNT, help="cap on optimizer steps")
@click.option("--gpus", default=0, show_default=True, type=GPUS,
              help="GPUs for each job that runs a model (0: any runner takes it, CPU included; on a GPU cluster 1)")
@click.option("--params-file", default=None, help='JSON {"kind": {param: value}} overrides per job kind')
@click.option("--json", "as_json", is_flag=True)
def pipeline_rationalyst(documents: str, problems: str, test: str | None, model: str, experiment: str | None,
                         methods: str, limit: int | None, extract_limit: int | None, extract_mode: str,
                         train_steps: int | None, gpus: int, params_file: str | None, as_json: bool) -> None:
    """prefilter -> extract -> score -> train -> solve x methods -> evaluate, with dependencies."""
    from rplat.pipelines import RationalystPipeline

    overrides = _overrides(params_file, lambda key: [key])
    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    planned = RationalystPipeline(documents=documents, problems=problems, test=test, model=model,
                                  experiment=experiment, methods=chosen, limit=limit, extract_limit=extract_limit,
                                  extract_mode=extract_mode, train_steps=train_steps, gpus=gpus, overrides=overrides)
    _check_made_names([planned.adapter_name()])
    ids = planned.enqueue(queue_of(open_store()))
    if as_json:
        click.echo(json.dumps(ids))
        return
    click.echo(f"prefilter {ids['prefilter']} -> extract {ids['extract']} -> score {ids['score']} -> "
               f"train {ids['train']}")
    for method, job in ids["solve"].items():
        click.echo(f"  solve {method}: job {job}, evaluate: job {ids['evaluate'][method]}")


@pipeline.command("tdg")
@option("--problems", old="--benchmark", required=True, type=NAME,
        help="training problem dataset (gold answers; worked solutions for sft)")
@click.option("--test", required=True, type=NAME, help="problem dataset every model solves greedily")
@option("--teacher", old="--chains", required=True, type=NAME,
        help="a model to collect the chains from (collect-chains), or the teacher name of chains already stored "
        "(`rplat import chains FILE --teacher NAME`)")
@click.option("--student", required=True, type=NAME, help="base model every TDG setting trains a LoRA (or NAT) on")
@click.option("--experiment", default=None, type=NAME)
@option("--teacher-samples", old="--n-chains", default=8, show_default=True, type=click.IntRange(1, 256),
        help="chains per training problem collected from a teacher model")
@click.option("--limit", default=None, type=COUNT, help="sample at most this many test problems")
@click.option("--train-steps", default=None, type=COUNT, help="cap on optimizer steps of every training")
@click.option("--gpus", default=0, show_default=True, type=GPUS,
              help="GPUs for each job that runs a model (0: any runner takes it, CPU included; on a GPU cluster 1)")
@click.option("--asc-samples", default=16, show_default=True, type=click.IntRange(0, 256),
              help="sampled chains per test problem for ASC (0: no ranker, no ASC)")
@click.option("--asc-temperature", default=0.7, show_default=True, type=Finite(0), help="ASC's sampling temperature")
@click.option("--asc-setting", default="nce", show_default=True, help="the model ASC samples (a setting: base, "
              "sft, kd, mix, nt, ul, neg, nat, nce)")
@click.option("--params-file", default=None, help='JSON {"kind": {param: value}} overrides per job kind; the key '
              '"train" applies to every training kind, "asc-sample" to ASC\'s sample job only')
@click.option("--json", "as_json", is_flag=True)
def pipeline_tdg(problems: str, test: str, teacher: str, student: str, experiment: str | None, teacher_samples: int,
                 limit: int | None, train_steps: int | None, asc_samples: int, asc_temperature: float,
                 asc_setting: str, gpus: int, params_file: str | None, as_json: bool) -> None:
    """(collect-chains) -> train-neg -> train-nat -> train-nce, the baselines (sft, kd, mix, nt, ul) beside them,
    then a greedy sample and its evaluation for every model and the untrained student; ASC: train-ranker on
    the chains, sampled chains of one model, score-samples, aggregate (greedy, sc, asc-f0..f3)."""
    from rplat.pipelines import TdgPipeline, tdg_override_kinds
    from rplat.runners.tdg.kinds import TRAINING

    overrides = _overrides(params_file, tdg_override_kinds)
    planned = TdgPipeline(problems=problems, test=test, student=student, teacher=teacher, experiment=experiment,
                          teacher_samples=teacher_samples, limit=limit, train_steps=train_steps,
                          asc_samples=asc_samples, asc_temperature=asc_temperature, asc_setting=asc_setting,
                          gpus=gpus, overrides=overrides)
    _check_made_names([planned.adapter_name(row.setting) for row in TRAINING] + [f"{experiment or 'tdg'}-ranker"])
    ids = planned.enqueue(queue_of(open_store()))
    if as_json:
        click.echo(json.dumps(ids))
        return
    if ids["collect"] is not None:
        click.echo(f"collect-chains {ids['collect']}")
    train = ids["train"]
    kind = {row.setting: row.name for row in TRAINING}
    click.echo(f"train-neg {train['neg']} -> train-nat {train['nat']} -> train-nce {train['nce']}; beside them: "
               + ", ".join(f"{kind[s]} {train[s]}" for s in ("sft", "kd", "mix", "nt", "ul")))
    for setting, job in ids["sample"].items():
        click.echo(f"  {setting}: sample job {job}, evaluate job {ids['evaluate'][setting]}")
    if (asc := ids["asc"]) is not None:
        click.echo(f"ASC on {asc['setting']}: train-ranker {asc['train-ranker']}, sample {asc['sample']} -> "
                   f"score-samples {asc['score-samples']} -> aggregate {asc['aggregate']}")
