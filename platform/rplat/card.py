"""The results card of an experiment (`rplat report card`): its paper-shaped tables, figures and the jobs behind
every number, as one Markdown or HTML document.

Every number on a card is one a report gives (`rplat.reports`, `rplat.asc`): the card calls the reports and lays
out what they return, computing none itself; training curves are the `training_metrics` view's rows. Figures are
drawn with matplotlib's object API (no pyplot, no display) as PNG files beside a Markdown card, or inside an HTML
card as data URIs. The provenance lists every job a number came from and the jobs upstream of it (parents, and
jobs its params name), each with its kind, models, data, prompt template and params.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine

from rplat.errors import UserError
from rplat.methods.votes import OVERALL
from rplat.reports import known_experiment, open_views, rationalyst_report, records, tdg_report

FILE_TYPES = ("md", "html")
# The reports' own defaults, stated on the card so that `rplat report asc` and `rplat report compare` give its numbers.
ASC_REPEATS = 20
SEED = 0
RESAMPLES = 10_000
FUNNEL = (("prefilter_passed", "documents kept by the prefilter"), ("extractions", "texts annotated"),
          ("passed_fidelity", "faithful annotations"), ("rationales", "rationales"), ("scored", "rationales scored"),
          ("leaks", "leaks (restating the following text, never kept)"), ("kept", "kept by loss delta"),
          ("train_steps", "rationale model training steps"))
FUNNEL_KINDS = ("prefilter", "extract-rationales", "score-rationales", "train-rationalyst")
MAX_K_COLUMNS = 10  # an ASC table with more samples per problem shows k = 1, 2, 4, ... and n (the figure shows all)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    title: str
    slug: str  # the image file's name on a Markdown card: figure-<number>-<slug>.png
    png: bytes


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)  # a str is a paragraph


@dataclass
class Card:
    experiment: str
    intro: str
    sections: list[Section]

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]


class _Cites:
    """Which jobs each table and figure of the card read: job id -> the titles that cite it."""

    def __init__(self) -> None:
        self.by_job: dict[int, list[str]] = {}

    def __call__(self, job_id: int | None, title: str) -> None:
        if job_id is not None and title not in self.by_job.setdefault(int(job_id), []):
            self.by_job[int(job_id)].append(title)


# --- numbers as the CLI's reports print them -----------------------------------------------------------------------


def interval(value: float | None, low: float | None, high: float | None, scale: float = 100.0) -> str:
    """`33.33 [9.7, 70.0]`: a value and its 95% interval, times `scale` (fractions to percent); empty without one."""
    if value is None or low is None or high is None:
        return ""
    return f"{scale * value:.2f} [{scale * low:.1f}, {scale * high:.1f}]"


def _number(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


# --- figures ---------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A figure on matplotlib's Agg canvas (raster, no display), made without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    """The figure as PNG bytes; without the writer's version in them, the same figure gives the same bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _accuracy_figure(labels: Sequence[str], values: Sequence[float], lows: Sequence[float],
                     highs: Sequence[float]) -> bytes:
    """One accuracy (%) per label with its 95% interval as error bars, top to bottom."""
    fig = _figure(6.4, 1.2 + 0.4 * len(labels))
    ax = fig.subplots()
    ys = list(range(len(labels)))
    ax.errorbar(values, ys, xerr=[[v - lo for v, lo in zip(values, lows, strict=True)],
                                  [hi - v for v, hi in zip(values, highs, strict=True)]], fmt="o", capsize=3)
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy (%) with its 95% Wilson interval")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def _asc_figure(curves: dict[tuple[int, str], list[dict[str, Any]]]) -> bytes:
    """SC's and each ASC vote's accuracy (%) against k, with its interval as a band; one panel per aggregate job."""
    from matplotlib.ticker import MaxNLocator

    jobs = sorted({job for job, _ in curves})
    fig = _figure(4.8 * len(jobs), 3.6)
    axes = fig.subplots(1, len(jobs), squeeze=False)[0]
    for ax, job in zip(axes, jobs, strict=True):
        for (of, method), rows in curves.items():
            if of != job:
                continue
            ks = [r["k"] for r in rows]
            ax.plot(ks, [100 * r["accuracy"] for r in rows], marker="o", label=method)
            ax.fill_between(ks, [100 * r["ci_low"] for r in rows], [100 * r["ci_high"] for r in rows], alpha=0.15)
        model = next(rows[0]["model"] for (of, _), rows in curves.items() if of == job)
        ax.set_title(f"{model} (aggregate job {job})", fontsize=10)
        ax.set_xlabel("samples per problem k")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(fig)


def _training_figure(curves: dict[int, list[Any]]) -> bytes:
    """Each training job's loss (solid) and eval loss (dashed, where logged) against the optimizer step."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    for job_id, rows in curves.items():
        label = f"{rows[0].kind} job {job_id}"
        (line,) = ax.plot([r.step for r in rows], [r.loss for r in rows], label=label)
        evals = [r for r in rows if r.eval_loss is not None]
        if evals:
            ax.plot([r.step for r in evals], [r.eval_loss for r in evals], linestyle="--", marker=".",
                    color=line.get_color(), label=f"{label} (eval)")
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


# --- sections --------------------------------------------------------------------------------------------------------

Comparison = tuple[str, str, str]  # (what is compared, run A, run B), runs as `rplat report compare` takes them


def _rationalyst(engine: Engine, experiment: str, jobs: Sequence[Any], cite: _Cites,
                 comparisons: list[Comparison]) -> Section:
    report = rationalyst_report(engine, experiment=experiment)
    section = Section("RATIONALYST")
    funnel = "The mining funnel"
    miners = [job.job_id for job in jobs if job.kind in FUNNEL_KINDS]
    if miners:  # an experiment that only solves (with a rationale model mined elsewhere) has no funnel of its own
        section.blocks.append(Table(funnel, ["stage", "count"],
                                    [[label, str(report["funnel"][key])] for key, label in FUNNEL]))
    for job_id in miners:
        cite(job_id, funnel)
    results = report["results"]
    if not results:
        section.blocks.append("No solve job of this experiment has been evaluated yet.")
        return section
    accuracy = "Accuracy per solving method"
    section.blocks.append(Table(
        accuracy + " (%, micro over problems; the latest evaluation per method and subject)",
        ["method", "subject", "n", "correct", "accuracy % [95% CI]", "evaluate job", "solve job"],
        [[r["method"], r["subject"], str(r["n"]), f"{r['correct']:g}", interval(r["accuracy"], r["ci_low"],
                                                                                   r["ci_high"]),
          str(r["evaluate_job"]), str(r["solve_job"])] for r in results]))
    overall = [r for r in results if r["subject"] == OVERALL and r["accuracy"] is not None]
    for r in results:
        cite(r["evaluate_job"], accuracy)
        cite(r["solve_job"], accuracy)
    if overall:
        figure = "Accuracy per solving method, all problems"
        section.blocks.append(Figure(figure, "rationalyst-accuracy", _accuracy_figure(
            [r["method"] for r in overall], [100 * r["accuracy"] for r in overall],
            [100 * r["ci_low"] for r in overall], [100 * r["ci_high"] for r in overall])))
        for r in overall:
            cite(r["evaluate_job"], figure)
    greedy = next((r for r in overall if r["method"] == "greedy"), None)
    if greedy is not None:
        comparisons.extend([(f"{r['method']} against greedy", f"{r['evaluate_job']}:{r['method']}",
                         f"{greedy['evaluate_job']}:greedy") for r in overall if r is not greedy])
    return section


def _tdg(report: dict[str, Any], cite: _Cites, comparisons: list[Comparison]) -> Section:
    section = Section("Turning Dust into Gold")
    subjects = report["subjects"]
    table2 = "Table 2"
    section.blocks.append(Table(
        f"{table2}: greedy accuracy (%) [95% Wilson interval] on the test problems (avg: micro over all problems; "
        "gain: relative to sft)",
        ["setting", "model", *subjects, "avg", "gain", "evaluate job", "sample job"],
        [[r["setting"], r["model"],
          *(interval(r["accuracy"].get(s), r["ci_low"].get(s), r["ci_high"].get(s), 1.0) for s in subjects),
          interval(r["avg"], r["avg_ci_low"], r["avg_ci_high"], 1.0),
          "n/a" if r["gain"] is None else f"{100 * r['gain']:+.1f}%", str(r["evaluate_job"]), str(r["sample_job"])]
         for r in report["table2"]]))
    for r in report["table2"]:
        cite(r["evaluate_job"], table2)
        cite(r["sample_job"], table2)
    for t in report["table1"]:
        title = f"Table 1 {t['a']}/{t['b']}"
        cells = t["cells"]
        section.blocks.append(Table(
            f"{title}: problems solved by {t['a']} ({t['model_a']}, evaluate job {t['evaluate_job_a']}) and "
            f"{t['b']} ({t['model_b']}, evaluate job {t['evaluate_job_b']})", ["", *(c["subject"] for c in cells)],
            [[f"{t['a']} & {t['b']}", *(str(c["intersection"]) for c in cells)],
             [t["a"], *(str(c["solved_a"]) for c in cells)], [t["b"], *(str(c["solved_b"]) for c in cells)],
             ["IoU", *(f"{c['iou']:.2f}" for c in cells)]]))
        cite(t["evaluate_job_a"], title)
        cite(t["evaluate_job_b"], title)
    section.blocks += [f"Table 1 {pair}: not both models are evaluated in this experiment."
                       for pair in report["missing_pairs"]]
    rows = [r for r in report["table2"] if r["avg"] is not None]
    if rows:
        figure = "Greedy accuracy per setting, all problems"
        section.blocks.append(Figure(figure, "tdg-accuracy", _accuracy_figure(
            [f"{r['setting']} ({r['model']})" for r in rows], [r["avg"] for r in rows],
            [r["avg_ci_low"] for r in rows], [r["avg_ci_high"] for r in rows])))
        for r in rows:
            cite(r["evaluate_job"], figure)
    by_setting = {r["setting"]: r for r in report["table2"]}
    pairs = [(setting, "sft") for setting in by_setting if setting != "sft"] if "sft" in by_setting else []
    pairs += [(t["a"], t["b"]) for t in report["table1"] if (t["a"], t["b"]) not in pairs]
    comparisons.extend((f"{a} against {b}", f"{by_setting[a]['evaluate_job']}:greedy",
                        f"{by_setting[b]['evaluate_job']}:greedy") for a, b in pairs)
    return section


def _asc(engine: Engine, experiment: str, cite: _Cites, comparisons: list[Comparison]) -> Section:
    from rplat.asc import asc_curve, ranker_accuracy

    section = Section("ASC against self-consistency")
    rankers = ranker_accuracy(engine, experiment)
    if rankers:
        title = "Rankers on their held-out pairs"
        section.blocks.append(Table(
            f"{title} (ranked right: s_pos > s_neg)",
            ["ranker", "encoder", "held-out pairs", "accuracy % [95% CI]", "train-ranker job"],
            [[r["ranker"], r["encoder"] or "", str(r["heldout_pairs"]), interval(r["accuracy"], r["ci_low"],
                                                                                 r["ci_high"]),
              str(r["train_ranker_job"])] for r in rankers]))
        for r in rankers:
            cite(r["train_ranker_job"], title)
    curves: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in asc_curve(engine, experiment, repeats=ASC_REPEATS, seed=SEED):
        curves.setdefault((r["aggregate_job"], r["method"]), []).append(r)
    if not curves:
        section.blocks.append("The experiment's aggregate jobs have no samples to vote over.")
        return section
    n = max(len(rows) for rows in curves.values())
    ks = list(range(1, n + 1)) if n <= MAX_K_COLUMNS else sorted({*(2**i for i in range(n.bit_length())), n})
    title = "ASC curve"
    section.blocks.append(Table(
        f"{title}: accuracy (%) [95% Wilson interval] against the number of samples k ({ASC_REPEATS} random subsets "
        f"of k samples per problem and k, seed {SEED}, the same subsets for every method)",
        ["model", "method", "problems", "unanswered", *(f"k={k}" for k in ks), "aggregate job", "sample job"],
        [[rows[0]["model"] or "", method, str(rows[0]["n"]), rows[0]["unanswered"],
          *(next((interval(r["accuracy"], r["ci_low"], r["ci_high"]) for r in rows if r["k"] == k), "")
            for k in ks), str(job), str(rows[0]["sample_job"])] for (job, method), rows in curves.items()]))
    figure = "ASC against SC"
    section.blocks.append(Figure(f"{figure}: accuracy against the number of samples k", "asc-curve",
                                 _asc_figure(curves)))
    for (job, method), rows in curves.items():
        for name in (title, figure):
            cite(job, name)
            cite(rows[0]["sample_job"], name)
        if method != "sc" and (job, "sc") in curves:
            comparisons.append((f"{method} against sc (all samples)", f"{job}:{method}", f"{job}:sc"))
    return section


def _comparisons(engine: Engine, comparisons: Sequence[Comparison], cite: _Cites) -> Section:
    from rplat.reports import compare_report

    section = Section("Paired comparisons")
    title = "Paired comparisons"
    rows, refused = [], []
    for what, run_a, run_b in comparisons:
        try:
            c = compare_report(engine, run_a, run_b, resamples=RESAMPLES, seed=SEED)
        except UserError as exc:  # a run without predictions (an evaluation stored alone) cannot be paired
            refused.append(f"{what} ({run_a} against {run_b}): {exc}")
            continue
        a, b = c["a"], c["b"]
        rows.append([what, run_a, run_b, str(c["n"]), interval(a["accuracy"], a["ci_low"], a["ci_high"]),
                     interval(b["accuracy"], b["ci_low"], b["ci_high"]),
                     f"{100 * c['difference']:+.2f} [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}]",
                     f"{c['p_mcnemar']:.4g}", str(c["both"]), str(c["only_a"]), str(c["only_b"]), str(c["neither"])])
        cite(a["job_id"], title)
        cite(b["job_id"], title)
    if rows:
        section.blocks.append(Table(
            f"{title} on the problems both runs predicted: accuracy (%) [95% Wilson interval], the difference A - B "
            f"in points [paired bootstrap 95% interval, {RESAMPLES:,} resamples, seed {SEED}], the exact McNemar "
            "p-value, and how many problems both, only A, only B and neither solve",
            ["comparison", "run A", "run B", "problems", "A % [95% CI]", "B % [95% CI]", "A - B [95% CI]",
             "McNemar p", "both", "only A", "only B", "neither"], rows))
    section.blocks += [f"Not compared: {line}" for line in refused]
    return section


def _training(metrics: Sequence[Any], cite: _Cites) -> Section:
    curves: dict[int, list[Any]] = {}
    for r in metrics:
        curves.setdefault(r.job_id, []).append(r)
    title = "Training"
    section = Section(title)
    section.blocks.append(Table(
        "Training jobs: optimizer steps logged, the first and last loss, the last eval loss",
        ["job", "kind", "result", "steps", "first loss", "last loss", "last eval loss"],
        [[str(job_id), rows[0].kind, rows[0].result_name or "", str(len(rows)), _number(rows[0].loss),
          _number(rows[-1].loss), _number(next((r.eval_loss for r in reversed(rows) if r.eval_loss is not None),
                                               None))]
         for job_id, rows in curves.items()]))
    figure = "Training curves"
    section.blocks.append(Figure(f"{figure}: loss against the optimizer step", "training-curves",
                                 _training_figure(curves)))
    for job_id in curves:
        cite(job_id, title)
        cite(job_id, figure)
    return section


# --- provenance ------------------------------------------------------------------------------------------------------


def _named(kind: str, params: dict[str, Any], job_id: int) -> tuple[list[str], list[str]]:
    """The models (run, named, made) and the data (datasets, chain sets) a job's params name, by its kind's
    references (`rplat.references`); nothing for a kind this process does not know (an import's)."""
    from rplat import kinds
    from rplat.references import made, references

    try:
        params_type = kinds.get(kind).params
        params = kinds.current_names(params_type, params)  # a job stored before a rename: its old names
    except (UserError, ValueError):
        return [], []
    models, data = [], []
    for name, ref in references(params_type):
        value = params.get(name)
        if value is None:
            continue
        if ref.target == "model":
            models.append(f"{name}: {value}")
        elif ref.target == "dataset":
            data.append(f"{name}: {', '.join(value) if isinstance(value, list) else value}")
        elif ref.target == "chains":
            data.append(f"chains of {value} on {params.get(ref.dataset or '')}")
    result = made(kind, params, job_id)
    if result is not None:
        models.append(f"makes: {result.name}")
    return models, data


def _upstream(con: Any, cited: set[int]) -> list[Any]:
    """The cited jobs and every job upstream of them (parents, the jobs their params name and the jobs that trained
    the models their params name), by id."""
    from rplat import kinds
    from rplat.references import references

    found: dict[int, Any] = {}
    frontier = set(cited)
    while frontier:
        ids = sorted(frontier)
        rows = records(con, "SELECT job_id, kind, status, experiment, CAST(params AS VARCHAR) AS params "
                            "FROM job_timeline WHERE list_contains($ids, job_id)", {"ids": ids})
        parents = records(con, "SELECT depends_on_id FROM store.job_dependencies WHERE list_contains($ids, job_id)",
                          {"ids": ids})
        found.update({r.job_id: r for r in rows})
        frontier = {int(p.depends_on_id) for p in parents}
        models: set[str] = set()
        for r in rows:
            try:
                params_type = kinds.get(r.kind).params
                params = kinds.current_names(params_type, json.loads(r.params or "{}"))
            except (UserError, ValueError):  # an import's kind, or a kind this process lacks: no references known
                continue
            for name, ref in references(params_type):
                values = params.get(name)
                for value in values if isinstance(values, list) else [values]:
                    if ref.target == "job" and isinstance(value, int):
                        frontier.add(value)
                    elif ref.target == "model" and isinstance(value, str):
                        models.add(value)
        if models:
            frontier |= {int(m.job_id) for m in records(
                con, "SELECT job_id FROM store.models WHERE list_contains($names, name) AND job_id IS NOT NULL",
                {"names": sorted(models)})}
        frontier -= found.keys()
    return [found[i] for i in sorted(found)]


def _provenance(engine: Engine, cite: _Cites) -> Section:
    from rplat.export import job_lineage

    with open_views(engine) as con:
        jobs = _upstream(con, set(cite.by_job))
        lineage = {j["job_id"]: j for j in job_lineage(con, {j.job_id for j in jobs})}
    rows = []
    for job in jobs:
        params = json.loads(job.params or "{}")
        models, data = _named(job.kind, params, job.job_id)
        ran = lineage[job.job_id]
        if ran["model"] and not any(m.endswith(f": {ran['model']}") for m in models):
            models.insert(0, f"runs: {ran['model']}")
        template = f"{ran['prompt_template']} (sha256 {ran['prompt_hash']})" if ran["prompt_template"] else ""
        rows.append([str(job.job_id), job.kind, job.status, job.experiment or "", "; ".join(models),
                     "; ".join(data), template, json.dumps(params, sort_keys=True, ensure_ascii=False),
                     "; ".join(cite.by_job.get(job.job_id, [])) or "upstream of the jobs above"])
    return Section("Provenance", [
        "Every job a number above came from, and every job upstream of those (its parents, the jobs its params "
        "name and the jobs that trained the models they name), each with its models, data, prompt template and "
        "params; `rplat explain TABLE ID` follows any stored row further.",
        Table("Jobs behind the numbers", ["job", "kind", "status", "experiment", "models", "data",
                                          "prompt template", "params", "used in"], rows)])


# --- the card --------------------------------------------------------------------------------------------------------


def build_card(engine: Engine, experiment: str) -> Card:
    """The card of `experiment`: a section per report that applies (RATIONALYST, Turning Dust into Gold, ASC), the
    paired comparisons those reports' runs call for, the training curves, and the provenance of every number. An
    experiment without succeeded jobs, or whose succeeded jobs give no number, is one sentence."""
    from rplat.runners.rationalyst.kinds import KINDS as RATIONALYST_KINDS

    known_experiment(engine, experiment)
    with open_views(engine) as con:
        jobs = records(con, "SELECT job_id, kind, status FROM job_timeline WHERE experiment = $e ORDER BY job_id",
                       {"e": experiment})
        (about,) = records(con, "SELECT description FROM store.experiments WHERE name = $e", {"e": experiment})
        metrics = records(con, """
            SELECT t.job_id, t.kind, t.result_name, t.step, t.loss, t.eval_loss
            FROM training_metrics t JOIN job_timeline j ON j.job_id = t.job_id
            WHERE t.experiment = $e AND j.status = 'succeeded' ORDER BY t.job_id, t.step""", {"e": experiment})
    succeeded = {j.kind for j in jobs if j.status == "succeeded"}
    if not succeeded:
        held = ", ".join(f"{n} {status}" for status, n in sorted(Counter(j.status for j in jobs).items()))
        raise UserError(f"experiment {experiment!r} has no succeeded jobs yet ({held or 'it holds no jobs'}); run "
                        "its jobs (`rplat runner --until-done`) and write its card when they have succeeded.")
    cite = _Cites()
    comparisons: list[Comparison] = []
    sections = []
    if succeeded & {kind.name for kind in RATIONALYST_KINDS}:
        sections.append(_rationalyst(engine, experiment, jobs, cite, comparisons))
    try:
        tdg = tdg_report(engine, experiment)
    except UserError:  # no evaluated greedy sample job: the experiment has no Table 2
        tdg = None
    if tdg is not None:
        sections.append(_tdg(tdg, cite, comparisons))
    if "aggregate" in succeeded:
        sections.append(_asc(engine, experiment, cite, comparisons))
    if comparisons:
        sections.append(_comparisons(engine, comparisons, cite))
    if metrics:
        sections.append(_training(metrics, cite))
    if not cite.by_job:
        raise UserError(f"experiment {experiment!r} has no results a card shows: none of its succeeded jobs "
                        f"({', '.join(sorted(succeeded))}) is an evaluation, an aggregate, a RATIONALYST job or a "
                        "training job with logged steps; see `rplat jobs ls`.")
    sections.append(_provenance(engine, cite))
    intro = (f"{about.description + '. ' if about.description else ''}Written by `rplat report card --experiment "
             f"{experiment}`. Every number is one that `rplat report` gives for the experiment (rationalyst, tdg, "
             f"asc with --repeats {ASC_REPEATS} --seed {SEED}, compare with --resamples {RESAMPLES} --seed {SEED}) "
             "or, for training, a row of the `training_metrics` view; each table names its jobs, and the provenance "
             "at the end lists them with their models, data, prompt templates and params.")
    return Card(experiment, intro, sections)


# --- rendering -------------------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    return [f"**{_md_cell(table.title)}**", "", "| " + " | ".join(_md_cell(c) for c in table.columns) + " |",
            "| " + " | ".join("---" for _ in table.columns) + " |",
            *("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows), ""]


def render_md(card: Card, image: Callable[[int, Figure], str]) -> str:
    """The card as Markdown; `image(number, figure)` gives the path its image is linked by."""
    lines = [f"# Results card: experiment {card.experiment}", "", card.intro, ""]
    number = 0
    for section in card.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines += _md_table(block)
            elif isinstance(block, Figure):
                number += 1
                lines += [f"![{_md_cell(block.title)}]({image(number, block)})", "",
                          f"*Figure {number}: {block.title}*", ""]
            else:
                lines += [block, ""]
    return "\n".join(lines)


_STYLE = ("body{font-family:sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
          "table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.9rem}"
          "th,td{border:1px solid #ccc;padding:0.2rem 0.5rem;text-align:left;vertical-align:top}"
          "caption{text-align:left;font-weight:bold;padding:0.3rem 0}img{max-width:100%}"
          "code{font-size:0.85rem;word-break:break-all}")


def _html_text(text: str) -> str:
    """A paragraph's text, escaped, its `code spans` set as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_html(card: Card) -> str:
    """The card as one HTML file: its images inside it as data URIs."""
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>Results card: experiment {e(card.experiment)}</title>", f"<style>{_STYLE}</style>", "</head>",
             "<body>", f"<h1>Results card: experiment {e(card.experiment)}</h1>", f"<p>{_html_text(card.intro)}</p>"]
    number = 0
    for section in card.sections:
        parts.append(f"<h2>{e(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts += ["<table>", f"<caption>{e(block.title)}</caption>",
                          "<tr>" + "".join(f"<th>{e(c)}</th>" for c in block.columns) + "</tr>",
                          *("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in block.rows),
                          "</table>"]
            elif isinstance(block, Figure):
                number += 1
                data = base64.b64encode(block.png).decode("ascii")
                parts.append(f'<figure><img alt="{e(block.title)}" src="data:image/png;base64,{data}">'
                             f"<figcaption>Figure {number}: {e(block.title)}</figcaption></figure>")
            else:
                parts.append(f"<p>{_html_text(block)}</p>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


# --- writing ---------------------------------------------------------------------------------------------------------


def file_type_of(out: Path, file_type: str | None) -> str:
    """The file type asked for, or the one the suffix of `out` names."""
    if file_type is not None:
        return file_type
    suffix = out.suffix.lower().lstrip(".")
    if suffix not in FILE_TYPES:
        raise UserError(f"cannot tell the file type of {out} from its suffix; give --file-type md or html, or an "
                        "--out ending in .md or .html.")
    return suffix


def figures_dir(out: Path) -> Path:
    """Where a Markdown card's images go: beside it, in `<stem>_files/`."""
    return out.with_name(f"{out.stem}_files")


def check_out(out: Path, file_type: str) -> None:
    """Refuse an --out that cannot be written as a card, before anything is read."""
    if not out.parent.is_dir():
        raise UserError(f"the directory {out.parent} does not exist; create it or choose another --out.")
    if out.is_dir():
        raise UserError(f"{out} is a directory; give --out a file name, e.g. {out / f'card.{file_type}'}.")
    images = figures_dir(out)
    if file_type == "md" and images.exists() and not images.is_dir():
        raise UserError(f"{images} is a file, where the card's images would go; remove it or choose another --out.")


def _replace(path: Path, content: bytes) -> None:
    """Write `content` beside `path`, then rename it there: the file appears whole or not at all."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(content)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_card(card: Card, out: Path, file_type: str) -> list[Path]:
    """Write the card to `out` (md: its images into `<stem>_files/` beside it; html: inside it); returns the
    paths written, the card last. Nothing is written outside `out` and that folder."""
    check_out(out, file_type)
    written: list[Path] = []
    images = figures_dir(out)
    made_dir = False
    try:
        if file_type == "md":
            paths = {}
            for number, figure in enumerate(card.figures(), start=1):
                if not images.is_dir():
                    images.mkdir()
                    made_dir = True
                path = images / f"figure-{number}-{figure.slug}.png"
                _replace(path, figure.png)
                written.append(path)
                paths[number] = path
            text = render_md(card, lambda number, _: quote(f"{images.name}/{paths[number].name}"))
        else:
            text = render_html(card)
        _replace(out, text.encode("utf-8"))
        written.append(out)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if made_dir:
            images.rmdir()
        raise UserError(f"cannot write {out} ({exc.strerror or exc}); choose a writable --out path.") from None
    return written
