"""A runner takes only the job kinds it can run; a job it cannot run stays queued for one that can."""

from __future__ import annotations

import subprocess
import sys

from rplat.models import Job
from rplat.queue import Queue
from rplat.store import transaction

from stores import Store


def test_runner_without_a_plugin_leaves_the_plugins_jobs_queued(db: Store) -> None:
    job_id, _ = Queue(db.engine()).enqueue("test-fail", {"message": "x"})
    env = {k: v for k, v in db.env.items() if k != "RPLAT_PLUGINS"}
    proc = subprocess.run([sys.executable, "-m", "rplat.cli", "runner", "--once", "--quiet"], env=env, cwd=db.home,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempts) == ("queued", 0)


def test_a_job_whose_stored_params_no_longer_fit_fails_without_retries(db: Store) -> None:
    job_id, _ = Queue(db.engine()).enqueue("probe", {"devices": False})
    with transaction(db.engine()) as s:
        s.get(Job, job_id).params = {"devices": False, "retired_param": 1}
    assert db.rplat("runner", "--once", "--quiet").returncode == 0
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.attempts) == ("failed", 1)
        assert "no longer fit" in job.error and "\n" not in job.error
