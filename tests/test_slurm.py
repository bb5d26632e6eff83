"""Slurm as the cluster engine: the runner array's script and the scaler's decision (pure), then a real one-node
Slurm (.ci/slurm-setup, `make slurm`) draining the queue, preempting a training runner, and scaling within bounds.

The cluster tests need Slurm running with its two fake GPUs: without it they skip saying how to start it, except
in CI (CI=true), where a missing Slurm is a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from rplat.errors import UserError
from rplat.models import Job, JobEvent, Runner, TrainingMetric
from rplat.queue import Queue
from rplat.slurm import (
    ArraySpec,
    Plan,
    SlurmCommands,
    Task,
    Where,
    demand_by_gpus,
    parse_squeue,
    plan,
    runner_script,
)
from rplat.store import transaction

from killable_runners import last_checkpoint, wait_for
from stores import MigratedTemplates, Store, make_store

WHERE = Where(database_url="postgresql://rplat@db-host/rplat", home=Path("/shared/rplat"),
              python="/opt/venv/bin/python")


# --- the script -----------------------------------------------------------------------------------


def _directives(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_the_script_is_one_array_of_runners_on_their_gpus_that_slurm_signals_before_the_limit() -> None:
    script = runner_script(ArraySpec(runners=4, gpus=2, partition="gpu", time="4:00:00", kinds=("train-nat",),
                                     max_idle=60, grace_seconds=90, sbatch_args=("--account=lab",),
                                     runner_args=("--lease-seconds", "120")), WHERE)
    tag = _tag_of(script)
    assert _directives(script) == [
        f"--job-name=rplat-runner-{tag}-g2", "--array=0-3", "--ntasks=1", "--gres=gpu:2", "--signal=B:TERM@90",
        "--output=/shared/rplat/slurm/%x-%A_%a.out", "--partition=gpu", "--time=4:00:00", "--account=lab"]
    lines = script.splitlines()
    assert "export RPLAT_HOME=/shared/rplat" in lines
    assert "export RPLAT_DATABASE_URL=postgresql://rplat@db-host/rplat" in lines
    # The runner replaces the batch shell (exec), so Slurm's SIGTERM reaches it; its devices are Slurm's.
    assert lines[-1] == ("exec /opt/venv/bin/python -m rplat.cli runner --kinds train-nat --max-idle 60 "
                         "--lease-seconds 120 --gpus \"${CUDA_VISIBLE_DEVICES:?Slurm set no CUDA_VISIBLE_DEVICES "
                         "for this task}\"")


def test_a_cpu_array_asks_for_no_gpu_and_its_runners_take_none() -> None:
    script = runner_script(ArraySpec(runners=1, gpus=0, max_idle=None), WHERE)
    assert not any(d.startswith("--gres") for d in _directives(script))
    assert script.splitlines()[-1] == "exec /opt/venv/bin/python -m rplat.cli runner --gpus none"


def test_two_stores_never_share_an_array_name() -> None:
    other = Where(database_url=WHERE.database_url, home=Path("/shared/other"), python=WHERE.python)
    spec = ArraySpec(runners=1, gpus=1)
    assert _tag_of(runner_script(spec, WHERE)) != _tag_of(runner_script(spec, other))


def _tag_of(script: str) -> str:
    found = re.search(r"--job-name=rplat-runner-([0-9a-f]{8})-g\d+", script)
    assert found, script
    return found.group(1)


def test_submit_dry_run_prints_the_script_and_submits_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "RPLAT_HOME": str(tmp_path), "RPLAT_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
           "PATH": "/nonexistent"}  # no sbatch: a dry run needs none
    out = subprocess.run([sys.executable, "-m", "rplat.cli", "slurm", "submit", "--runners", "2", "--dry-run"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "#SBATCH --array=0-1" in out.stdout and "#SBATCH --gres=gpu:1" in out.stdout
    assert f"export RPLAT_HOME={tmp_path}" in out.stdout
    assert out.stdout.splitlines()[-1].startswith(f"exec {sys.executable} -m rplat.cli runner --max-idle 300 ")


def test_a_mistake_in_the_options_is_one_sentence() -> None:
    with pytest.raises(UserError, match="is not an sbatch option; pass one option each"):
        runner_script(ArraySpec(runners=1, gpus=1, sbatch_args=("account=lab",)), WHERE)


# --- the scaler's decision ------------------------------------------------------------------------


def _tasks(spec: str) -> list[Task]:
    """Tasks from "ARRAY_INDEX:STATE:GPUS ..."."""
    out = []
    for item in spec.split():
        task, state, gpus = item.split(":")
        array, index = task.split("_")
        out.append(Task(array=array, index=index, state=state, gpus=int(gpus)))
    return out


def test_from_zero_runners_each_gpu_count_gets_runners_in_turn_up_to_the_maximum() -> None:
    assert plan({1: (40, 0), 2: (2, 0)}, [], max_runners=5) == Plan(submit={1: 3, 2: 2})
    assert plan({1: (40, 0), 2: (2, 0)}, [], max_runners=100) == Plan(submit={1: 40, 2: 2})
    assert plan({1: (40, 0), 2: (2, 0)}, [], max_runners=1) == Plan(submit={1: 1})


def test_running_jobs_keep_their_runners_and_only_the_shortfall_is_submitted() -> None:
    tasks = _tasks("7_0:RUNNING:1 7_1:RUNNING:1 7_2:PENDING:1")
    assert plan({1: (3, 2)}, tasks, max_runners=10) == Plan(submit={1: 2})
    assert plan({1: (1, 2)}, tasks, max_runners=10) == Plan()


def test_never_above_the_maximum_counting_pending_and_running() -> None:
    tasks = _tasks("7_0:RUNNING:1 7_1:PENDING:1 8_0:PENDING:2")
    assert plan({1: (10, 1), 2: (5, 0)}, tasks, max_runners=3) == Plan()
    # A lowered maximum cancels pending tasks, newest first; running ones are left to leave by themselves.
    assert plan({1: (10, 1), 2: (5, 0)}, tasks, max_runners=1) == Plan(cancel=("8_0", "7_1"))


def test_an_empty_queue_cancels_every_pending_task_and_no_running_one() -> None:
    tasks = _tasks("7_0:RUNNING:1 7_1:PENDING:1 7_2:PENDING:1 8_0:PENDING:2 9_0:COMPLETING:1")
    assert plan({}, tasks, max_runners=8) == Plan(cancel=("7_2", "7_1", "8_0"))


def test_a_surplus_in_one_gpu_count_pays_for_a_shortfall_in_another() -> None:
    tasks = _tasks("7_0:PENDING:1 7_1:PENDING:1")
    assert plan({2: (1, 0)}, tasks, max_runners=2) == Plan(submit={2: 1}, cancel=("7_1", "7_0"))


def test_ready_jobs_are_queued_jobs_whose_parents_all_succeeded_counted_per_gpus(db: Store) -> None:
    queue = Queue(db.engine())
    parent, _ = queue.enqueue("probe", {"tag": "parent"})
    queue.enqueue("probe", {"tag": "child"}, after=[parent], gpus=1)
    queue.enqueue("probe", {"tag": "alone"}, gpus=1)
    queue.enqueue("probe", {"tag": "two"}, gpus=2)
    assert demand_by_gpus(db.engine()) == {0: (1, 0), 1: (1, 0), 2: (1, 0)}
    assert queue.claim("r", ["probe"], 60, free=["0"]) is not None  # the parent, first by id
    assert demand_by_gpus(db.engine(), ["probe"]) == {0: (0, 1), 1: (1, 0), 2: (1, 0)}
    assert demand_by_gpus(db.engine(), ["train-nat"]) == {}


def test_squeue_lines_of_other_jobs_and_stores_are_left_out() -> None:
    out = ("12|0|RUNNING|rplat-runner-0123abcd-g1\n12|1|PENDING|rplat-runner-0123abcd-g1\n"
           "13|0|PENDING|rplat-runner-ffffffff-g1\n14|N/A|RUNNING|train.sh\n15|2|PENDING|rplat-runner-0123abcd-g2\n")
    assert parse_squeue(out, "0123abcd") == [Task("12", "0", "RUNNING", 1), Task("12", "1", "PENDING", 1),
                                             Task("15", "2", "PENDING", 2)]


# --- a real Slurm ---------------------------------------------------------------------------------


def _slurm_missing() -> str | None:
    """None if Slurm answers with an available node, else why not."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (no sbatch)"
    try:
        nodes = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%T"], capture_output=True, text=True,
                               timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 30 s"
    if nodes.returncode != 0:
        return f"sinfo failed: {(nodes.stderr or nodes.stdout).strip()}"
    if not {"idle", "mixed", "allocated"} & set(nodes.stdout.split()):
        return f"no Slurm node is up (sinfo: {nodes.stdout.split() or 'no nodes'})"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = _slurm_missing()
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"Slurm is required in CI but not running: {reason}; .ci/run starts it with .ci/slurm-setup")
    pytest.skip(f"{reason}; start a one-node test cluster with `make slurm` (as root)")


def _store(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           templates: MigratedTemplates) -> Iterator[Store]:
    for store in make_store(backend, tmp_path, templates=templates):
        store.set_env(monkeypatch)
        try:
            yield store
        finally:
            _cancel_arrays(store)


def _cancel_arrays(db: Store) -> None:
    """Whatever a test leaves in Slurm goes with its store."""
    arrays = sorted({t.array for t in _tasks_of(db)})
    if arrays:
        subprocess.run(["scancel", *arrays], check=False, timeout=60)
        wait_for(lambda: not _tasks_of(db), "the store's runner arrays to leave Slurm")


@pytest.fixture
def pg(slurm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
       _templates: MigratedTemplates) -> Iterator[Store]:
    yield from _store("postgresql", tmp_path, monkeypatch, _templates)


@pytest.fixture
def lite(slurm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
         _templates: MigratedTemplates) -> Iterator[Store]:
    yield from _store("sqlite", tmp_path, monkeypatch, _templates)


def _tasks_of(db: Store) -> list[Task]:
    return SlurmCommands(Where(db.url, db.home.resolve(), "")).tasks()


_PASS = re.compile(r"runners: (\d+) pending, (\d+) running; submitted (.+?); cancelled (.+)$")


def _passes(output: str) -> list[tuple[int, int, int, list[str]]]:
    """(pending, running, submitted, cancelled) of every scaling pass the scaler printed."""
    passes = []
    for line in output.splitlines():
        found = _PASS.search(line)
        if found:
            submitted = sum(int(n) for n in re.findall(r"(\d+) x ", found.group(3)))
            cancelled = [] if found.group(4) == "none" else found.group(4).split()
            passes.append((int(found.group(1)), int(found.group(2)), submitted, cancelled))
    return passes


def test_the_scaler_drains_one_and_two_gpu_jobs_from_zero_runners_each_job_run_once(pg: Store) -> None:
    queue = Queue(pg.engine())
    ones = [queue.enqueue("probe", {"tag": f"one-{i}", "devices": False}, gpus=1)[0] for i in range(40)]
    twos = [queue.enqueue("probe", {"tag": f"two-{i}", "devices": False}, gpus=2)[0] for i in range(2)]
    assert _tasks_of(pg) == []
    status = json.loads(pg.rplat("status", "--json", check=True).stdout)
    assert status["ready"] == [{"gpus": 1, "jobs": 40}, {"gpus": 2, "jobs": 2}]
    scaler = pg.popen("slurm", "scale", "--every", "1", "--max-runners", "4", "--max-idle", "2",
                      "--runner-arg=--poll-seconds=0.2", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: all(pg.job(j).status in ("succeeded", "failed") for j in ones + twos), "every job to end")
        wait_for(lambda: not _tasks_of(pg), "the runners to leave and the pending tasks to be cancelled")
    finally:
        scaler.terminate()
        out, err = scaler.communicate(timeout=60)
    assert scaler.returncode == 0, err
    passes = _passes(out)
    assert passes and all(pending + running + submitted <= 4 for pending, running, submitted, _ in passes), out
    with transaction(pg.engine()) as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ones + twos)))}
        events = s.execute(select(JobEvent.job_id, JobEvent.event)).all()
        runners = {r.name: r.slurm_job for r in s.scalars(select(Runner))}
    assert {(j.status, j.attempts) for j in jobs.values()} == {("succeeded", 1)}
    # Run once: no job was claimed a second time, released, retried or expired.
    assert sorted({event for _, event in events}) == ["enqueued"]
    assert all(re.fullmatch(r"\d+_\d+", slurm_job or "") for slurm_job in runners.values()), runners
    assert {jobs[j].result["runner"] for j in jobs} <= set(runners)
    assert {tuple(jobs[j].devices) for j in twos} == {("0", "1")}
    assert {tuple(jobs[j].devices) for j in ones} <= {("0",), ("1",), ("0", "1")}


def test_a_training_runner_cancelled_by_slurm_releases_its_job_which_resumes_in_another_task(
        pg: Store, tmp_path: Path) -> None:
    from test_ranker import COMMON, _seed

    _seed(pg, tmp_path, 11)
    # 8 training questions in each of 400 epochs: a run far longer than the test, which ends it once resumed.
    job_id, _ = Queue(pg.engine()).enqueue(
        "train-ranker", {**COMMON, "epochs": 400, "heldout_fraction": 0.2, "checkpoint_every": 10}, gpus=1)
    submitted = pg.rplat("slurm", "submit", "--runners", "2", "--gpus-per-runner", "1", "--max-idle", "600",
                         "--runner-arg=--poll-seconds=0.2", "--runner-arg=--lease-seconds=3", check=True)
    array = re.search(r"submitted runner array (\d+)", submitted.stdout)
    assert array, submitted.stdout
    wait_for(lambda: last_checkpoint(pg, job_id) >= 10, "the first checkpoint")
    first = pg.job(job_id)
    with transaction(pg.engine()) as s:
        victim = s.scalar(select(Runner.slurm_job).where(Runner.name == first.lease_owner))
    assert victim is not None and victim.startswith(f"{array.group(1)}_")
    status = pg.rplat("status", check=True).stdout  # from the running job to the Slurm job running it
    assert re.search(rf"^{job_id}\s.*\s{re.escape(victim)}$", status, re.MULTILINE), status
    subprocess.run(["scancel", victim], check=True, timeout=60)

    def resumed() -> tuple[str, str] | None:
        with transaction(pg.engine()) as s:
            row = s.execute(select(JobEvent.message, JobEvent.runner).where(
                JobEvent.job_id == job_id, JobEvent.event == "log",
                JobEvent.message.like("resumed training at step %"))).first()
        return (row.message, row.runner) if row else None

    wait_for(lambda: resumed() is not None, "the job to resume in another runner")
    message, rescuer_name = resumed() or ("", "")
    at = int(message.split()[4])
    wait_for(lambda: last_checkpoint(pg, job_id) > at, "the resumed run's next checkpoint")
    with transaction(pg.engine()) as s:
        events = s.execute(select(JobEvent.event, JobEvent.runner)
                           .where(JobEvent.job_id == job_id, JobEvent.event != "log").order_by(JobEvent.id)).all()
        rescuer = s.scalar(select(Runner.slurm_job).where(Runner.name == rescuer_name))
        metric_steps = s.scalars(select(TrainingMetric.step).where(TrainingMetric.job_id == job_id)
                                 .order_by(TrainingMetric.step)).all()
    job = pg.job(job_id)
    assert [e for e, _ in events] == ["enqueued", "released", "claimed"]
    assert events[1].runner == first.lease_owner and events[2].runner == rescuer_name == job.lease_owner
    assert rescuer is not None and rescuer.startswith(f"{array.group(1)}_") and rescuer != victim
    assert (job.status, job.attempts) == ("running", 1)  # a release does not count an attempt
    # It went on from the checkpoint the cancelled runner left (step 10 or later), not from step 0.
    assert at >= 10 and at % 10 == 0 and list(metric_steps) == list(range(len(metric_steps)))


def test_scale_stays_within_max_runners_and_cancels_pending_tasks_once_the_queue_empties(lite: Store) -> None:
    queue = Queue(lite.engine())
    jobs = [queue.enqueue("probe", {"tag": str(i), "devices": False, "sleep_seconds": 600}, gpus=1)[0]
            for i in range(6)]
    scale = ("slurm", "scale", "--once", "--max-runners", "3", "--max-idle", "600", "--runner-arg=--poll-seconds=0.2",
             "--runner-arg=--lease-seconds=3")  # a heartbeat a second: a cancelled job stops within one
    first = lite.rplat(*scale, check=True).stdout
    assert _passes(first) == [(0, 0, 3, [])]
    # Two GPUs: two runners take a job each, the third task waits for a GPU.
    wait_for(lambda: sum(lite.job(j).status == "running" for j in jobs) == 2, "two jobs to run")
    tasks = _tasks_of(lite)
    assert sorted(t.state for t in tasks) == ["PENDING", "RUNNING", "RUNNING"]
    again = lite.rplat(*scale, check=True).stdout
    assert _passes(again) == [(1, 2, 0, [])]
    for j in jobs:
        queue.cancel(j)
    wait_for(lambda: all(lite.job(j).status == "cancelled" for j in jobs), "every job to be cancelled")
    emptied = lite.rplat(*scale, check=True).stdout
    pending = [t.id for t in tasks if t.pending]
    assert _passes(emptied) == [(1, 2, 0, pending)]
    left = _tasks_of(lite)
    assert sorted(t.state for t in left) == ["RUNNING", "RUNNING"] and not {t.id for t in left} & set(pending)


def test_slurms_refusal_is_one_sentence_and_submits_nothing(lite: Store) -> None:
    Queue(lite.engine()).enqueue("probe", {"devices": False}, gpus=1)
    refused = lite.rplat("slurm", "scale", "--once", "--partition", "no-such-partition")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: sbatch refused: ") and "partition" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and _tasks_of(lite) == []
