"""A runner in the foreground: a progress line every RPLAT_PROGRESS_SECONDS on a log, and `--max-idle`."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from rplat.queue import Queue

from rplat_test_plugins import create_output_tables
from stores import Store

LINE = re.compile(r"^\[runner\] job (\d+) \(test-items\): (\d+)/(\d+) items \((\d+)%\), [\d,.]+/s", re.MULTILINE)


def _run(db: Store, *args: str) -> str:
    """A runner process that drains the queue; its stderr (a pipe: not a terminal)."""
    proc = subprocess.run([sys.executable, "-m", "rplat.cli", "runner", "--until-done", "--poll-seconds", "0.1",
                           *args], env={**db.env, "RPLAT_PROGRESS_SECONDS": "0.1"}, cwd=db.home,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("where", ["in-process", "child"], ids=["in-process", "child-process"])
def test_a_foreground_runner_prints_its_jobs_progress_lines(db: Store, where: str) -> None:
    create_output_tables(db.engine())
    job_id, _ = Queue(db.engine()).enqueue("test-items", {"items": 4, "pause_seconds": 0.5})
    log = _run(db, *(["--slots", "2"] if where == "child" else []))
    lines = [tuple(map(int, m.groups())) for m in LINE.finditer(log)]
    assert lines, log
    assert {(job, total) for job, _, total, _ in lines} == {(job_id, 4)}
    dones = [done for _, done, _, _ in lines]
    assert dones == sorted(dones) and dones[0] >= 1 and dones[-1] <= 4
    assert all(pct == round(100 * done / 4) for _, done, _, pct in lines)
    assert f"job {job_id} (test-items): succeeded, 4/4" in log


def test_a_quiet_runner_prints_no_progress(db: Store) -> None:
    create_output_tables(db.engine())
    Queue(db.engine()).enqueue("test-items", {"items": 3, "pause_seconds": 0.4})
    assert _run(db, "--quiet") == ""


def test_a_runner_with_max_idle_leaves_where_until_done_would_wait(db: Store) -> None:
    queue = Queue(db.engine())
    job_id, _ = queue.enqueue("probe", {"devices": False})
    # The job runs elsewhere: a runner with --until-done would wait for it (it may be released), this one leaves.
    assert queue.claim("elsewhere", None, 600) is not None
    log = _run(db, "--max-idle", "0.5")
    assert "[runner] nothing to claim for 0.5 s; leaving" in log
    assert db.job(job_id).status == "running"
