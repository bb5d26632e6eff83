"""N-way intersection: the Intersections page's query over 20 runs x 10^5 problems, DuckDB against SQLite itself.

Command: OMP_NUM_THREADS=1 .venv/bin/python bench/analytics.py [--runs 20] [--problems 100000] [--rounds 3]

A SQLite store (migrated to head, under .cache/bench, built once per shape and schema revision) holds `--runs`
evaluated runs of one evaluate job each over the same `--problems` problems, each solved with its own probability,
and their evaluation rows. Every side computes the same answer: for each combination of runs, how many of the
problems all of them answered it solves exactly (the UpSet chart's bars), with rplat.analytics.signatures_sql, which
DuckDB and SQLite both run as written:
- sqlite: SQLite runs it on the store, over the `run_solves` view's SELECT on the store's own tables;
- duckdb view: DuckDB runs it over the `run_solves` view (the store attached READ_ONLY through the sqlite scanner,
  which pushes no filter down: every query reads all of `predictions`);
- rplat: `analytics.solved_signatures`, what the page calls: the same SQL over the connection's cached copy of
  `run_solves` (integer run keys), after the refresh that checks the evaluations table for new runs. The copy
  is filled on the first query of a connection and after each new evaluation; that cold query is printed too.
Each side's best of `--rounds` alternating rounds counts (the machine is shared). The last line reads
`ratio analytics: X` (the sqlite time over rplat's; X > 1: rplat is faster).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.pop(0)  # bench/ must not shadow stdlib modules (bench/queue.py is "queue")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from rplat import analytics  # noqa: E402
from rplat.migrate import head_revision, upgrade  # noqa: E402
from rplat.store import get_engine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NOW = "2026-01-01 00:00:00"


def build(path: Path, runs: int, problems: int) -> None:
    """The store: one import job, `problems` problems, `runs` evaluate jobs with a prediction for every problem."""
    engine = get_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    rng = random.Random(0)
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO experiments (id, name, created_at) VALUES (1, 'bench', ?)", (NOW,))
        jobs = [(1, "import-problems")] + [(2 + r, "evaluate") for r in range(runs)]
        con.executemany("INSERT INTO jobs (id, kind, params, experiment_id, priority, status, attempts, max_attempts, "
                        "not_before, lease_token, cancel_requested, progress_done, created_at) "
                        "VALUES (?, ?, '{}', 1, 0, 'succeeded', 1, 3, ?, 0, 0, 1, ?)",
                        [(i, kind, NOW, NOW) for i, kind in jobs])
        con.execute("INSERT INTO models (id, name, format, fingerprint, config, created_at) "
                    "VALUES (1, 'student', 'base', 'f', '{}', ?)", (NOW,))
        con.execute("INSERT INTO datasets (id, name, kind, created_at) VALUES (1, 'bench', 'problems', ?)", (NOW,))
        con.executemany("INSERT INTO problems (id, dataset_id, job_id, external_id, question, answer, content_hash) "
                        "VALUES (?, 1, 1, ?, ?, '1', ?)",
                        ((i, str(i), f"q{i}", f"h{i}") for i in range(1, problems + 1)))
        for r in range(runs):
            p = 0.3 + 0.6 * r / max(runs - 1, 1)  # the runs differ, so that many combinations occur
            solved = [rng.random() < p for _ in range(problems)]
            con.executemany("INSERT INTO predictions (job_id, problem_id, model_id, method, answer, correct, "
                            "tie_size) VALUES (?, ?, 1, 'greedy', ?, ?, 1)",
                            ((2 + r, i, "1" if ok else "0", ok) for i, ok in zip(range(1, problems + 1), solved,
                                                                              strict=True)))
            con.execute("INSERT INTO evaluations (job_id, model_id, method, subject, n, n_correct, accuracy) "
                        "VALUES (?, 1, 'greedy', 'all', ?, ?, ?)", (2 + r, problems, sum(solved),
                                                                    sum(solved) / problems))


def timed(fn: Callable[[], list[tuple[int, int]]]) -> tuple[float, list[tuple[int, int]]]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--problems", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds; each side's best counts")
    args = parser.parse_args()
    # One store per shape and schema revision: a store built before a migration would lack what the views read.
    path = REPO / ".cache" / "bench" / f"analytics-{args.runs}x{args.problems}-{head_revision()}.db"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        build(path.with_suffix(".tmp"), args.runs, args.problems)
        path.with_suffix(".tmp").rename(path)
        print(f"built {path} in {time.perf_counter() - t0:.1f} s")

    native = sqlite3.connect(path)
    names = [f"greedy / student / job {2 + r}" for r in range(args.runs)]
    store_view = f"({analytics.VIEWS['run_solves'].replace(f'{analytics.STORE}.', '')}) AS run_solves"

    def sqlite_side() -> list[tuple[int, int]]:
        return native.execute(analytics.signatures_sql(store_view, "run", names)).fetchall()

    duck = analytics.connect(f"sqlite:///{path}")

    def view_side() -> list[tuple[int, int]]:
        return duck.execute(analytics.signatures_sql("run_solves", "run", names)).fetchall()

    def rplat_side() -> list[tuple[int, int]]:
        return analytics.solved_signatures(duck, names)

    t_cold, cold = timed(rplat_side)
    t_sqlite = t_view = t_rplat = float("inf")
    for _ in range(args.rounds):
        t, reference = timed(sqlite_side)
        t_sqlite = min(t_sqlite, t)
        t, through_view = timed(view_side)
        t_view = min(t_view, t)
        t, ours = timed(rplat_side)
        t_rplat = min(t_rplat, t)
    same = sorted(reference) == sorted(through_view) == sorted(ours) == sorted(cold)
    print(f"{args.runs} runs x {args.problems} problems ({args.runs * args.problems} predictions): "
          f"{len(ours)} combinations over {sum(n for _, n in ours)} common problems; all sides agree: {same}")
    print(f"sqlite on the store:             {t_sqlite:7.3f} s")
    print(f"duckdb over the run_solves view: {t_view:7.3f} s")
    print(f"rplat, first query (fills cache): {t_cold:6.3f} s")
    print(f"rplat solved_signatures:         {t_rplat:7.3f} s")
    if not same:
        sys.exit("the sides disagree")
    print(f"ratio analytics: {t_sqlite / t_rplat:.2f}")


if __name__ == "__main__":
    main()
