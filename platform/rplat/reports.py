"""Summaries of finished jobs for people (the CLI's `rplat report ...`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from rplat.errors import UserError
from rplat.lookup import experiment_id, job_of_kind
from rplat.models import Document, Job, PrefilterScore
from rplat.stats import wilson
from rplat.store import transaction


def _latest_job(session: Any, kind: str, job_id: int | None, experiment: str | None) -> Job:
    if job_id is not None:
        return job_of_kind(session, job_id, kind)
    q = select(Job).where(Job.kind == kind).order_by(Job.id.desc()).limit(1)
    if experiment is not None:
        q = q.where(Job.experiment_id == experiment_id(session, experiment))
    job = session.scalar(q)
    if job is None:
        raise UserError(f"there is no {kind} job yet; enqueue one with `rplat enqueue {kind} ...`.")
    return job


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def prefilter_report(engine: Engine, *, job_id: int | None = None, experiment: str | None = None,
                     examples: int = 3) -> dict[str, Any]:
    """Counts and cosine quantiles over all of a job's scores; document texts only for the `examples` shown."""
    with transaction(engine) as session:
        job = _latest_job(session, "prefilter", job_id, experiment)
        of_job = PrefilterScore.job_id == job.id
        scores = session.execute(
            select(PrefilterScore.cosine, PrefilterScore.passed).where(of_job).order_by(PrefilterScore.cosine)
        ).all()

        def ends(order: Any) -> list[dict[str, Any]]:
            if not examples:
                return []
            rows = session.execute(
                select(PrefilterScore.cosine, PrefilterScore.passed, Document.external_id, Document.text)
                .join(Document, Document.id == PrefilterScore.document_id)
                .where(of_job).order_by(order, PrefilterScore.document_id).limit(examples)
            ).all()
            return [_document_example(r) for r in rows]

        closest, farthest = ends(PrefilterScore.cosine.desc()), ends(PrefilterScore.cosine.asc())
    cosines = [r.cosine for r in scores]
    passed = sum(1 for r in scores if r.passed)
    return {
        "job_id": job.id,
        "status": job.status,
        "threshold": job.params.get("threshold"),
        "max_chars": job.params.get("max_chars"),
        "scored": len(scores),
        "passed": passed,
        **_interval(passed, len(scores), "pass_rate"),
        "cosine_quantiles": {name: _quantile(cosines, q) for name, q in
                             (("min", 0.0), ("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("max", 1.0))},
        "closest": closest,
        "farthest": farthest,
    }


def _interval(successes: float, n: int, name: str, scale: float = 1.0, digits: int = 4) -> dict[str, float | None]:
    """`name` = successes / n with its 95% Wilson interval as `ci_low` and `ci_high` (None, None, None at n = 0),
    times `scale` (100 for percentages) and rounded to `digits`."""
    if n <= 0:
        return {name: None, "ci_low": None, "ci_high": None}
    low, high = wilson(successes, n)
    return {name: round(scale * successes / n, digits), "ci_low": round(scale * low, digits),
            "ci_high": round(scale * high, digits)}


def _document_example(r: Any) -> dict[str, Any]:
    snippet = " ".join(r.text.split())
    return {"external_id": r.external_id, "cosine": r.cosine, "passed": r.passed,
            "snippet": snippet[:100] + ("..." if len(snippet) > 100 else "")}


def rationalyst_report(engine: Engine, *, experiment: str | None = None) -> dict[str, Any]:
    """Accuracy of every evaluated solve method (latest evaluation per method) and the mining funnel's counts."""
    from sqlalchemy import func

    from rplat.models import Evaluation, Extraction, PrefilterScore, Rationale, RationaleScore, TrainingMetric

    with transaction(engine) as session:
        job_filter = []
        if experiment is not None:
            job_filter = [Job.experiment_id == experiment_id(session, experiment)]

        def count(model: Any, *where: Any) -> int:
            return session.scalar(select(func.count()).select_from(model).join(Job, Job.id == model.job_id)
                                  .where(*job_filter, *where)) or 0

        funnel = {
            "prefilter_passed": count(PrefilterScore, PrefilterScore.passed.is_(True)),
            "extractions": count(Extraction),
            "passed_fidelity": count(Extraction, Extraction.passed.is_(True)),
            "rationales": count(Rationale),
            "scored": count(RationaleScore),
            # restate the text they precede (overlap above the score job's threshold): never kept, however large
            # their loss delta
            "leaks": count(RationaleScore, RationaleScore.leak.is_(True)),
            "kept": count(RationaleScore, RationaleScore.kept.is_(True)),
            "train_steps": count(TrainingMetric),
        }
        rows = session.execute(select(Evaluation, Job.params).join(Job, Job.id == Evaluation.job_id)
                               .where(*job_filter, Job.kind == "evaluate").order_by(Evaluation.job_id)).all()
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for ev, params in rows:
        if params.get("solve_job") is None:
            continue  # an evaluation of a TDG sample job (`rplat report tdg`)
        latest[(ev.method, ev.subject)] = {"method": ev.method, "subject": ev.subject, "n": ev.n,
                                           "correct": round(ev.n_correct, 2),
                                           **_interval(ev.n_correct, ev.n, "accuracy"),
                                           "evaluate_job": ev.job_id, "solve_job": params.get("solve_job")}
    results = sorted(latest.values(), key=lambda r: (r["subject"] != "all", r["subject"], r["method"]))
    return {"experiment": experiment, "funnel": funnel, "results": results}


def _percent_interval(ev: Any) -> tuple[float, float]:
    """An evaluation row's 95% Wilson interval in percent."""
    low, high = wilson(ev.n_correct, ev.n)
    return 100.0 * low, 100.0 * high


# Table 1's pairs (ALGORITHMS B5/B2): positive-only vs negative-only, then negative vs NAT.
TDG_PAIRS = (("kd", "neg"), ("neg", "nat"))


def _tdg_setting(kind: str | None) -> str:
    """A model's TDG setting: the row of the training kind that made it (train-kd -> kd), else base (not trained
    here)."""
    from rplat.runners.tdg.kinds import TRAINING

    return next((row.setting for row in TRAINING if row.name == kind), "base")


def tdg_report(engine: Engine, experiment: str) -> dict[str, Any]:
    """The paper's Table 2 (greedy accuracy % per subject, micro Avg, gain vs sft) and Table 1 (solved-set overlaps
    kd/neg and neg/nat), from the latest evaluation of each model's greedy sample job in the experiment."""
    from sqlalchemy.orm import aliased

    from rplat.methods.votes import OVERALL
    from rplat.models import Evaluation, Model, Prediction, Problem
    from rplat.pipelines import TDG_SETTINGS

    maker = aliased(Job)
    with transaction(engine) as session:
        exp = experiment_id(session, experiment)
        evaluates = {job_id: params.get("sample_job") for job_id, params in session.execute(
            select(Job.id, Job.params).where(Job.experiment_id == exp, Job.kind == "evaluate",
                                             Job.status == "succeeded")).all()}
        wanted_samples = sorted({v for v in evaluates.values() if v is not None})
        samples = dict(session.execute(select(Job.id, Job.params).where(
            Job.id.in_(wanted_samples), Job.kind == "sample")).all()) if wanted_samples else {}
        # Table 2 is the greedy main table: one chain per problem at temperature 0.
        greedy = {e: sj for e, sj in evaluates.items() if sj in samples
                  and float(samples[sj].get("temperature", 0.0)) == 0.0 and int(samples[sj].get("n", 1)) == 1}
        rows = session.execute(
            select(Evaluation, Model.name, maker.kind)
            .join(Model, Model.id == Evaluation.model_id)
            .outerjoin(maker, maker.id == Model.job_id)
            .where(Evaluation.job_id.in_(list(greedy)), Evaluation.method == "greedy")
            .order_by(Evaluation.job_id)).all() if greedy else []
        latest: dict[str, dict[str, Any]] = {}  # model name -> its latest evaluation (job ids grow)
        for ev, name, kind in rows:
            entry = latest.get(name)
            if entry is None or entry["evaluate_job"] < ev.job_id:
                entry = latest[name] = {"setting": _tdg_setting(kind), "model": name, "model_id": ev.model_id,
                                        "evaluate_job": ev.job_id, "sample_job": greedy[ev.job_id], "rows": {}}
            if entry["evaluate_job"] == ev.job_id:
                entry["rows"][ev.subject] = ev
        by_setting: dict[str, dict[str, Any]] = {}  # setting -> its latest evaluated model (Table 1, the sft base)
        for entry in sorted(latest.values(), key=lambda e: e["evaluate_job"]):
            by_setting[entry["setting"]] = entry
        solved: dict[int, dict[int, bool]] = {}
        subject_of: dict[int, str | None] = {}
        wanted = {e["evaluate_job"] for s in {x for pair in TDG_PAIRS for x in pair} if (e := by_setting.get(s))}
        if wanted:
            for job_id, problem_id, correct, subject in session.execute(
                    select(Prediction.job_id, Prediction.problem_id, Prediction.correct, Problem.subject)
                    .join(Problem, Problem.id == Prediction.problem_id)
                    .where(Prediction.job_id.in_(wanted), Prediction.method == "greedy")).all():
                solved.setdefault(job_id, {})[problem_id] = bool(correct)
                subject_of[problem_id] = subject
    if not latest:
        raise UserError(f"experiment {experiment!r} has no evaluated greedy sample jobs yet; run `rplat pipeline "
                        "tdg ...` in it and `rplat runner --until-done`.")
    subjects = sorted({s for e in latest.values() for s in e["rows"] if s != OVERALL})
    sft = by_setting.get("sft")
    sft_avg = sft["rows"][OVERALL].accuracy if sft and OVERALL in sft["rows"] else None
    order = {s: i for i, s in enumerate(TDG_SETTINGS)}
    table2 = []
    for e in sorted(latest.values(), key=lambda e: (order[e["setting"]], e["model"])):
        overall = e["rows"].get(OVERALL)
        avg = overall.accuracy if overall is not None else None
        present = [s for s in subjects if s in e["rows"]]
        intervals = {s: _percent_interval(e["rows"][s]) for s in present}
        avg_interval = _percent_interval(overall) if overall is not None else (None, None)
        table2.append({
            "setting": e["setting"], "model": e["model"], "evaluate_job": e["evaluate_job"],
            "sample_job": e["sample_job"], "n": overall.n if overall is not None else 0,
            "accuracy": {s: 100.0 * e["rows"][s].accuracy for s in present},
            "ci_low": {s: low for s, (low, _) in intervals.items()},
            "ci_high": {s: high for s, (_, high) in intervals.items()},
            "avg": None if avg is None else 100.0 * avg,
            "avg_ci_low": avg_interval[0], "avg_ci_high": avg_interval[1],
            "gain": None if avg is None or not sft_avg else (avg - sft_avg) / sft_avg,
        })
    table1, missing = [], []
    for a, b in TDG_PAIRS:
        if a not in by_setting or b not in by_setting:
            missing.append(f"{a}/{b}")
            continue
        ea, eb = by_setting[a], by_setting[b]
        sa, sb = solved.get(ea["evaluate_job"], {}), solved.get(eb["evaluate_job"], {})
        cells = []
        for subject in (*subjects, OVERALL):
            def of(s: dict[int, bool], subject: str = subject) -> set[int]:
                return {p for p, ok in s.items() if ok and (subject == OVERALL or subject_of.get(p) == subject)}
            pa, pb = of(sa), of(sb)
            union = pa | pb
            cells.append({"subject": subject, "intersection": len(pa & pb), "solved_a": len(pa), "solved_b": len(pb),
                          "union": len(union), "iou": len(pa & pb) / len(union) if union else 0.0})
        table1.append({"a": a, "b": b, "model_a": ea["model"], "model_b": eb["model"],
                       "evaluate_job_a": ea["evaluate_job"], "evaluate_job_b": eb["evaluate_job"], "cells": cells})
    return {"experiment": experiment, "subjects": subjects, "sft_model": sft["model"] if sft else None,
            "table2": table2, "table1": table1, "missing_pairs": missing}


# Jobs whose predictions rows a comparison reads: `evaluate` (greedy, sc of a solve or sample job) and
# `aggregate` (greedy, sc and the ASC votes of a sample job).
COMPARABLE_KINDS = ("evaluate", "aggregate")


def _parse_run(text: str) -> tuple[int, str | None]:
    job, sep, method = text.strip().partition(":")
    if not job.isdigit() or (sep and not method):
        raise UserError(f"run {text!r} is not JOB or JOB:METHOD; give an evaluate or aggregate job id, optionally "
                        "with the method to compare, e.g. 12 or 12:asc-f3.")
    return int(job), method or None


def _run_credits(session: Any, text: str) -> dict[str, Any]:
    """A run's label (job, kind, method, model) and its credit per problem, from the job's predictions rows."""
    from rplat.models import Model, Prediction

    job_id, method = _parse_run(text)
    job = session.get(Job, job_id)
    if job is None or job.kind not in COMPARABLE_KINDS:
        what = "does not exist" if job is None else f"is of kind {job.kind}"
        raise UserError(f"job {job_id} {what}, not an evaluate or aggregate job; see `rplat jobs ls --kind evaluate` "
                        "or `rplat jobs ls --kind aggregate`.")
    methods = list(session.scalars(select(Prediction.method).where(Prediction.job_id == job_id).distinct()
                                   .order_by(Prediction.method)))
    if not methods:
        raise UserError(f"{job.kind} job {job_id} ({job.status}) has no predictions yet; compare it once it has "
                        f"succeeded (`rplat jobs show {job_id}`).")
    if method is None and len(methods) > 1:
        raise UserError(f"{job.kind} job {job_id} stored several methods ({', '.join(methods)}); name one as "
                        f"{job_id}:METHOD, e.g. {job_id}:{methods[-1]}.")
    method = method or methods[0]
    if method not in methods:
        raise UserError(f"{job.kind} job {job_id} has no predictions of method {method!r}; its methods are "
                        f"{', '.join(methods)}.")
    rows = session.execute(select(Prediction.problem_id, Prediction.credit, Prediction.correct, Model.name)
                           .outerjoin(Model, Model.id == Prediction.model_id)
                           .where(Prediction.job_id == job_id, Prediction.method == method)).all()
    # credit is nullable in the schema; a row without one earns what its correctness says
    credits = {r.problem_id: float(r.credit) if r.credit is not None else float(bool(r.correct)) for r in rows}
    models = sorted({r.name for r in rows if r.name is not None})
    return {"job_id": job_id, "kind": job.kind, "method": method, "model": ", ".join(models) or None,
            "credits": credits}


def compare_report(engine: Engine, run_a: str, run_b: str, *, resamples: int = 10_000,
                   seed: int = 0) -> dict[str, Any]:
    """Run A against run B (`JOB[:METHOD]` each) on the problems both predicted: each accuracy with its Wilson
    interval, the difference with a seeded paired bootstrap interval, the exact McNemar p-value and who solves
    what; problems only one run predicted are left out and counted."""
    from rplat.stats import compare_paired

    with transaction(engine) as session:
        a, b = _run_credits(session, run_a), _run_credits(session, run_b)
    common = sorted(a["credits"].keys() & b["credits"].keys())
    if not common:
        raise UserError(f"runs {run_a} and {run_b} predicted no problem in common ({len(a['credits'])} and "
                        f"{len(b['credits'])} problems); compare runs over the same problems.")
    credits_a = [a["credits"][p] for p in common]
    credits_b = [b["credits"][p] for p in common]
    c = compare_paired(credits_a, credits_b, resamples=resamples, seed=seed)

    def side(run: dict[str, Any], credits: list[float]) -> dict[str, Any]:
        low, high = wilson(sum(credits), len(credits))
        return {"job_id": run["job_id"], "kind": run["kind"], "method": run["method"], "model": run["model"],
                "accuracy": sum(credits) / len(credits), "ci_low": low, "ci_high": high,
                "left_out": len(run["credits"]) - len(common)}

    return {"a": side(a, credits_a), "b": side(b, credits_b), "n": c.n, "difference": c.difference,
            "ci_low": c.ci_low, "ci_high": c.ci_high, "p_mcnemar": c.p_mcnemar, "both": c.both, "only_a": c.only_a,
            "only_b": c.only_b, "neither": c.neither, "resamples": c.resamples, "seed": c.seed}
