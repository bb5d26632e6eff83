"""`rplat sql`, `rplat explain`, `rplat report` and `rplat dashboard`: read what the jobs wrote."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from rplat.boundary import MAX_EXAMPLES, MAX_RESAMPLES
from rplat.cli._common import HOST, ID, NAME, RUN, SEED, emit, open_store, option, table
from rplat.cli.asc import report_asc
from rplat.config import get_settings
from rplat.errors import UserError

# --- sql -----------------------------------------------------------------------------------------


@click.command()
@click.argument("query", required=False)
@click.option("--views", "list_views", is_flag=True, help="list the views and their columns")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts (one object per row)")
@click.option("--csv", "as_csv", is_flag=True, help="print CSV for scripts")
@click.option("--timeout", type=float, default=60.0, show_default=True, metavar="SECONDS",
              help="stop the query if it runs longer")
def sql(query: str | None, list_views: bool, as_json: bool, as_csv: bool, timeout: float) -> None:
    """Run one read-only QUERY over the analytics views (DuckDB) and print the rows.

    The views name the useful joins (`rplat sql --views` lists them); the raw tables are `store.<table>`.
    Nothing else is visible and nothing can be written: the store is attached READ_ONLY, DuckDB reads no file
    and is locked down (docs/security.md).

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
    analytics.check_timeout(timeout)
    con = None
    try:
        engine = open_store()
        url = engine.url.render_as_string(hide_password=False)
        engine.dispose()
        con = analytics.connect(url)
        if list_views:
            columns = ["view", "columns"]
            rows = [(name, [{"name": c, "type": t} for c, t in cols] if as_json else ", ".join(c for c, _ in cols))
                    for name, cols in analytics.view_columns(con).items()]
            batches: Iterator[list[tuple[Any, ...]]] = iter([rows])
        elif as_csv:  # rows go out as DuckDB reads them: a large result is never held whole
            columns, batches = analytics.stream_query(con, query or "", timeout=timeout)
        else:
            columns, rows = analytics.run_query(con, query or "", timeout=timeout)
        if as_csv:
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow(columns)
            for batch in batches:
                writer.writerows(batch)
        else:
            emit([dict(zip(columns, row, strict=True)) for row in rows], columns, as_json)
    except KeyboardInterrupt:  # outside DuckDB's calls (inside them, analytics.TimeLimit words it)
        if con is not None:
            con.interrupt()
        raise analytics.Interrupted("the query was stopped by Ctrl-C before it finished.") from None
    finally:
        if con is not None:
            con.close()



# --- explain -------------------------------------------------------------------------------------


@click.command()
@click.argument("table_name", metavar="TABLE")
@click.argument("row_id", metavar="ID", type=ID)
@click.option("--json", "as_json", is_flag=True, help="print the tree as JSON for scripts")
def explain(table_name: str, row_id: int, as_json: bool) -> None:
    """Where row ID of TABLE came from: its job (params, parents), models, prompt template and inputs.

    \b
    rplat explain rationale_scores 12
    rplat explain predictions 40 --json
    """
    from rplat.lineage import explain as explain_row
    from rplat.lineage import render
    from rplat.store import transaction

    engine = open_store()
    with transaction(engine.execution_options(rplat_readonly=True)) as session:
        tree = explain_row(session, table_name, row_id)
    click.echo(json.dumps(tree, default=str) if as_json else render(tree))


# --- reports --------------------------------------------------------------------------------------


@click.group()
def report() -> None:
    """Human-readable summaries of finished jobs."""


report.add_command(report_asc)


@report.command("rationalyst")
@click.option("--experiment", default=None, type=NAME, help="the experiment whose evaluations to show (default: all)")
@click.option("--json", "as_json", is_flag=True)
def report_rationalyst(experiment: str | None, as_json: bool) -> None:
    """Accuracy per solving method (micro over problems) and the mining funnel behind the rationale model."""
    from rplat.reports import rationalyst_report

    summary = rationalyst_report(open_store(), experiment=experiment)
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    f = summary["funnel"]
    click.echo(f"documents kept by the prefilter: {f['prefilter_passed']}; texts annotated: {f['extractions']} "
               f"({f['passed_fidelity']} faithful); rationales: {f['rationales']}, scored: {f['scored']}, "
               f"leaks (restating the following text, never kept): {f['leaks']}, kept by loss delta: {f['kept']}; "
               f"training steps: {f['train_steps']}")
    accuracy = "accuracy % [95% CI]"
    click.echo(table([{**r, accuracy: _with_interval(r["accuracy"], r["ci_low"], r["ci_high"], 100)}
                      for r in summary["results"]], ["method", "subject", "n", "correct", accuracy, "evaluate_job"]))


def _with_interval(value: float | None, low: float | None, high: float | None, scale: float = 1) -> str:
    """`33.33 [9.7, 70.0]`: a percentage and its interval for a table cell (empty without a value)."""
    if value is None or low is None or high is None:
        return ""
    return f"{scale * value:.2f} [{scale * low:.1f}, {scale * high:.1f}]"


def _proportion(value: float, low: float, high: float) -> str:
    """`75.00% (95% Wilson interval 30.1-95.4%)`: a proportion and its interval in a sentence."""
    return f"{100 * value:.2f}% (95% Wilson interval {100 * low:.1f}-{100 * high:.1f}%)"


@report.command("tdg")
@click.option("--experiment", required=True, type=NAME, help="the experiment whose greedy sample evaluations to show")
@click.option("--table", "which", type=click.Choice(["1", "2"]), default="2", show_default=True,
              help="with --csv: which table to print")
@click.option("--json", "as_json", is_flag=True, help="print both tables as JSON, with their job ids")
@click.option("--csv", "as_csv", is_flag=True, help="print one table (--table) as CSV")
def report_tdg(experiment: str, which: str, as_json: bool, as_csv: bool) -> None:
    """Turning Dust into Gold's Table 2 (greedy accuracy % per subject, micro Avg, gain against sft) and Table 1
    (problems solved by kd and neg, and by neg and nat: both, each, IoU per subject and overall)."""
    import csv

    from rplat.reports import tdg_report

    if as_json and as_csv:
        raise UserError("choose one of --json and --csv, not both.")
    summary = tdg_report(open_store(), experiment)
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    subjects = summary["subjects"]
    table2 = [{"setting": r["setting"], "model": r["model"], **r["accuracy"],
               **{f"{s}_ci_low": v for s, v in r["ci_low"].items()},
               **{f"{s}_ci_high": v for s, v in r["ci_high"].items()},
               "avg": r["avg"], "avg_ci_low": r["avg_ci_low"], "avg_ci_high": r["avg_ci_high"], "gain": r["gain"],
               "evaluate_job": r["evaluate_job"]} for r in summary["table2"]]
    columns2 = ["setting", "model", *subjects, "avg", "gain", "evaluate_job"]
    table1 = [{"pair": f"{t['a']}/{t['b']}", "subject": c["subject"], "both": c["intersection"],
               "solved_a": c["solved_a"], "solved_b": c["solved_b"], "iou": c["iou"]}
              for t in summary["table1"] for c in t["cells"]]
    columns1 = ["pair", "subject", "both", "solved_a", "solved_b", "iou"]
    if as_csv:
        with_ci = [name for c in columns2 for name in ((c, f"{c}_ci_low", f"{c}_ci_high") if c in (*subjects, "avg")
                                                        else (c,))]
        rows, columns = (table2, with_ci) if which == "2" else (table1, columns1)
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if r.get(c) is None else r.get(c) for c in columns] for r in rows])
        return

    click.echo(f"Table 2: greedy accuracy (%) [95% Wilson interval] on the test problems, experiment {experiment} "
               "(avg: micro over all problems; gain: relative to sft)")
    click.echo(table([{**r, **{s: _with_interval(r.get(s), r.get(f"{s}_ci_low"), r.get(f"{s}_ci_high"))
                               for s in (*subjects, "avg")},
                       "gain": "n/a" if r["gain"] is None else f"{100 * r['gain']:+.1f}%"} for r in table2], columns2))
    for t in summary["table1"]:
        click.echo(f"\nTable 1: problems solved by {t['a']} ({t['model_a']}, evaluate job {t['evaluate_job_a']}) "
                   f"and {t['b']} ({t['model_b']}, evaluate job {t['evaluate_job_b']})")
        cells = t["cells"]
        click.echo(table([{"": label, **{c["subject"]: fmt(c) for c in cells}} for label, fmt in (
            (f"{t['a']} & {t['b']}", lambda c: c["intersection"]), (t["a"], lambda c: c["solved_a"]),
            (t["b"], lambda c: c["solved_b"]), ("IoU", lambda c: f"{c['iou']:.2f}"))],
            ["", *(c["subject"] for c in cells)]))
    for pair in summary["missing_pairs"]:
        click.echo(f"\nTable 1 {pair}: not both models evaluated in this experiment")


@report.command("prefilter")
@click.option("--job", "job_id", type=ID, default=None, help="the prefilter job (default: the latest one)")
@click.option("--experiment", default=None, type=NAME, help="the latest prefilter job of this experiment")
@click.option("--examples", default=3, show_default=True, type=click.IntRange(0, MAX_EXAMPLES),
              help="documents shown per side")
@click.option("--json", "as_json", is_flag=True)
def report_prefilter(job_id: int | None, experiment: str | None, examples: int, as_json: bool) -> None:
    """How many documents a prefilter job kept, the cosine distribution, and the closest and farthest documents."""
    from rplat.reports import prefilter_report

    summary = prefilter_report(open_store(), job_id=job_id, experiment=experiment, examples=examples)
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    click.echo(f"prefilter job {summary['job_id']} ({summary['status']}): {summary['passed']} of {summary['scored']} "
               f"documents kept at cosine >= {summary['threshold']} (max {summary['max_chars']} chars)")
    if summary["over_max_chars"] or summary["outside_subsets"]:
        click.echo(f"not embedded: {summary['over_max_chars'] or 0} documents over max_chars, "
                   f"{summary['outside_subsets'] or 0} outside the chosen subsets")
    if summary["pass_rate"] is not None:
        click.echo(f"pass rate: {_proportion(summary['pass_rate'], summary['ci_low'], summary['ci_high'])}")
    q = summary["cosine_quantiles"]
    click.echo("cosine to the reference centroid: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))
    for title, key in (("closest", "closest"), ("farthest", "farthest")):
        click.echo(f"{title}:")
        for doc in summary[key]:
            click.echo(f"  {doc['cosine']:.3f}  [{doc['external_id']}] {doc['snippet']}")



@report.command("compare")
@click.argument("run_a", metavar="RUN_A", type=RUN)
@click.argument("run_b", metavar="RUN_B", type=RUN)
@click.option("--resamples", default=10_000, show_default=True, type=click.IntRange(1, MAX_RESAMPLES),
              help="paired bootstrap resamples of the common problems")
@click.option("--seed", default=0, show_default=True, type=SEED, help="the bootstrap's random seed")
@click.option("--json", "as_json", is_flag=True)
def report_compare(run_a: str, run_b: str, resamples: int, seed: int, as_json: bool) -> None:
    """Two runs on the problems both predicted: accuracies, their difference with a paired bootstrap interval, the
    exact McNemar test, and how many problems each solves alone.

    A RUN is an evaluate or aggregate job id, with the method after a colon when the job stored several.

    \b
    rplat report compare 12 15
    rplat report compare 20:sc 20:asc-f3 --json
    """
    from rplat.reports import compare_report

    c = compare_report(open_store(), run_a, run_b, resamples=resamples, seed=seed)
    if as_json:
        click.echo(json.dumps(c))
        return
    for name in ("a", "b"):
        r = c[name]
        click.echo(f"{name.upper()}: {r['kind']} job {r['job_id']} {r['method']} (model {r['model'] or '?'}, "
                   f"unanswered samples: {r['unanswered']}): "
                   f"accuracy {_proportion(r['accuracy'], r['ci_low'], r['ci_high'])}")
    click.echo(f"on {c['n']} common problems; difference A - B: {100 * c['difference']:+.2f} points, paired "
               f"bootstrap 95% interval [{100 * c['ci_low']:+.1f}, {100 * c['ci_high']:+.1f}] ({c['resamples']} "
               f"resamples, seed {c['seed']})")
    click.echo(f"solved by both: {c['both']}, by A only: {c['only_a']}, by B only: {c['only_b']}, "
               f"by neither: {c['neither']}; exact McNemar p = {c['p_mcnemar']:.4g}")
    click.echo(f"left out (predicted by one run only): {c['a']['left_out']} of A's problems, "
               f"{c['b']['left_out']} of B's")


@report.command("card")
@click.option("--experiment", required=True, type=NAME, help="the experiment whose results to write")
@option("--file-type", old="--format", type=click.Choice(["md", "html"]), default=None,
        help="md (images in <stem>_files/ beside it) or html (one file, images inside)  "
             "[default: the suffix of --out]")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="the card's file")
def report_card(experiment: str, file_type: str | None, out: Path) -> None:
    """Write one document for a paper draft or a PR: the experiment's tables (the reports that apply: rationalyst,
    tdg, asc, compare), figures (accuracy with intervals, ASC against SC, training curves) and the jobs behind every
    number (kind, models, data, prompt template hash, params).

    \b
    rplat report card --experiment demo-tdg --out cards/demo-tdg.md
    rplat report card --experiment demo-tdg --out demo-tdg.html
    """
    from rplat.card import build_card, check_out, file_type_of, write_card

    file_type = file_type_of(out, file_type)
    check_out(out, file_type)
    card = build_card(open_store(), experiment)
    written = write_card(card, out, file_type)
    images = written[:-1]
    where = f", its {len(images)} image{'s' * (len(images) != 1)} in {images[0].parent}" if images else ""
    click.echo(f"wrote the results card of experiment {experiment} to {out}{where}")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, type=HOST,
              help="address to bind (0.0.0.0 shows the store to every machine that can reach this one)")
@click.option("--port", default=8501, show_default=True, type=click.IntRange(1, 65535))
@click.option("--allow-review", is_flag=True,
              help="let the Chains and Rationales pages write reviews (as `rplat review` does); on 127.0.0.1 only")
def dashboard(host: str, port: int, allow_review: bool) -> None:
    """Browse rationales, failures, solved sets and jobs in a read-only Streamlit app (runs until Ctrl-C).

    With --allow-review the Chains and Rationales pages can also add reviews, as `rplat review` does."""
    import os

    from rplat import dashboard as dashboard_package
    from rplat.ports import check_port

    if allow_review and not _loopback(host):
        # The dashboard has no login: anyone who reaches the port could write reviews under any name.
        raise UserError(f"--allow-review serves the review forms on 127.0.0.1 only, not on --host {host} (the "
                        "dashboard has no login, so anyone reaching it could review under any name); drop --host, "
                        "or review with `rplat review`.")
    open_store()
    check_port(host, port, "pick another address with --host or port with --port")
    app = Path(dashboard_package.__file__).with_name("app.py")
    # Only this process's environment turns reviews on (a request cannot): set it with the flag, clear it without.
    env = {k: v for k, v in os.environ.items() if k != dashboard_package.ALLOW_REVIEW}
    env["RPLAT_DATABASE_URL"] = get_settings().database_url
    if allow_review:
        env[dashboard_package.ALLOW_REVIEW] = "1"
    mode = "read-only but for reviews" if allow_review else "read-only"
    click.echo(f"dashboard at http://{host}:{port} ({mode}); Ctrl-C stops it", err=True)
    # rplat.dashboard.serve opens the store and makes the pages' caches, then runs Streamlit in the same process.
    os.execve(sys.executable, [sys.executable, "-m", "rplat.dashboard.serve", "run", str(app),
                               "--server.address", host, "--server.port", str(port),
                               "--server.headless", "true", "--browser.gatherUsageStats", "false",
                               "--server.fileWatcherType", "none", "--global.developmentMode", "false",
                               "--client.toolbarMode", "minimal"], env)


def _loopback(host: str) -> bool:
    """Whether `host` is an address of this machine only (127.0.0.1, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
