"""GPU-aware runners: real `rplat runner` processes with declared devices (no GPU needed)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from test_conformance import Runners, events, job, wait_for

from rplat.errors import UserError
from rplat.models import Job
from rplat.queue import Queue, default_dedupe_key
from rplat.runners.framework.runner import parse_devices, visible_devices
from rplat.store import transaction

import rplat_test_plugins
from rplat_test_plugins import device_output
from stores import Store


@pytest.fixture
def runners(db: Store, tmp_path: Path) -> Iterator[Runners]:
    rplat_test_plugins.register()
    rplat_test_plugins.create_output_tables(db.engine())
    started = Runners(db, tmp_path)
    try:
        yield started
    finally:
        started.kill_all()


def meet(engine: Engine, meeting: str, *, gpus: int, peers: int = 1, **options: Any) -> int:
    """Enqueue a test-devices job of `meeting` needing `gpus` devices (never deduplicated: meetings repeat)."""
    job_id, _ = Queue(engine).enqueue("test-devices", {"meeting": meeting, "peers": peers}, gpus=gpus, dedupe=False,
                                      **options)
    return job_id


def started_in(engine: Engine, job_id: int) -> list[tuple[int, int]]:
    """(attempt, process id) of each attempt of a test-devices job that reached its handler."""
    with transaction(engine) as session:
        return [tuple(r) for r in session.execute(
            select(device_output.c.attempt, device_output.c.pid).where(device_output.c.job_id == job_id)
            .order_by(device_output.c.attempt))]


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- claims need free devices ---------------------------------------------------------------------


def test_a_two_gpu_job_is_never_claimed_by_a_one_gpu_runner(db: Store, runners: Runners) -> None:
    engine = db.engine()
    big = meet(engine, "big", gpus=2, priority=10)  # first in line, so a claim ignoring its need would take it
    small = meet(engine, "small", gpus=1)
    runners.start("one-gpu", "--gpus", "0", "--until-done")
    assert runners.wait("one-gpu") == 0, "--until-done does not wait for a job it can never take"
    done, waiting = job(engine, small), job(engine, big)
    assert (done.status, done.lease_owner, done.devices) == ("succeeded", "one-gpu", ["0"])
    assert (waiting.status, waiting.lease_token, waiting.attempts, waiting.devices) == ("queued", 0, 0, None)
    runners.start("two-gpus", "--gpus", "0,1", "--until-done")
    assert runners.wait("two-gpus") == 0
    taken = job(engine, big)
    assert (taken.status, taken.lease_owner, taken.lease_token, taken.devices) == ("succeeded", "two-gpus", 1,
                                                                                   ["0", "1"])
    assert taken.result is not None
    assert (taken.result["cuda_visible_devices"], taken.result["devices"]) == ("0,1", ["0", "1"])


def test_two_one_gpu_jobs_run_side_by_side_on_a_two_gpu_runner_with_two_slots(db: Store, runners: Runners) -> None:
    engine = db.engine()
    # Each job waits until both have started: they can only finish if they ran at the same time.
    ids = [meet(engine, "pair", gpus=1, peers=2) for _ in range(2)]
    runner = runners.start("two-slots", "--gpus", "0,1", "--slots", "2", "--until-done")
    assert runners.wait("two-slots") == 0
    results = []
    for job_id in ids:
        stored = job(engine, job_id)
        assert (stored.status, stored.attempts) == ("succeeded", 1)
        assert stored.result is not None and stored.result["devices"] == stored.devices
        results.append(stored.result)
    assert sorted(r["cuda_visible_devices"] for r in results) == ["0", "1"], "each saw a different single device"
    assert max(r["started"] for r in results) < min(r["finished"] for r in results), "their runs overlap"
    pids = {r["pid"] for r in results}
    assert len(pids) == 2 and runner.pid not in pids, "each ran in a child process of its own"


def test_nothing_is_double_claimed_by_gpu_runners_under_concurrency(db: Store, runners: Runners) -> None:
    engine = db.engine()
    needs = [0, 1, 2, 0, 1, 1, 2, 0] * 3
    queue = Queue(engine)
    with transaction(engine) as session:
        ids = {queue.enqueue_in(session, "test-devices", {"meeting": f"job-{i}"}, gpus=g)[0]: g
               for i, g in enumerate(needs)}
    fleet = {"a": ["--gpus", "0,1", "--slots", "2"], "b": ["--gpus", "2,3", "--slots", "3"],
             "c": ["--gpus", "0"], "d": ["--gpus", "none"]}
    for name, args in fleet.items():
        runners.start(name, *args, "--until-done", "--quiet", lease=30.0)
    assert [runners.wait(name) for name in fleet] == [0] * len(fleet)
    with transaction(engine) as session:
        meetings = session.scalars(select(device_output.c.meeting)).all()
        ends = session.execute(select(Job.status, Job.lease_token, Job.attempts, func.count())
                               .group_by(Job.status, Job.lease_token, Job.attempts)).all()
        jobs = {j.id: j for j in session.scalars(select(Job))}
    assert sorted(meetings) == sorted(f"job-{i}" for i in range(len(needs))), "each job ran exactly once"
    assert ends == [("succeeded", 1, 1, len(needs))]
    owned = {name: parse_devices(args[1], "--gpus") for name, args in fleet.items()}
    for job_id, gpus in ids.items():
        stored = jobs[job_id]
        assert stored.result is not None
        assert len(stored.devices or []) == gpus and set(stored.devices or []) <= set(owned[stored.lease_owner])
        if stored.lease_owner != "d":  # runner d runs in-process, without devices: CUDA_VISIBLE_DEVICES untouched
            assert stored.result["cuda_visible_devices"] == ",".join(stored.devices or [])
    for one, other in combinations(jobs.values(), 2):
        assert one.result is not None and other.result is not None
        overlap = one.result["started"] < other.result["finished"] and other.result["started"] < one.result["finished"]
        if one.lease_owner == other.lease_owner and overlap:
            assert not set(one.devices or []) & set(other.devices or []), "a device is given to one job at a time"


# --- what a runner shows, and how its children end ------------------------------------------------


def test_status_json_shows_runner_devices_and_the_jobs_on_them(db: Store, runners: Runners) -> None:
    engine = db.engine()
    ids = [meet(engine, "hold", gpus=1, peers=3) for _ in range(2)]  # a third never comes: they hold their devices
    runners.start("rack", "--gpus", "0,1", "--slots", "2")
    wait_for(lambda: all(started_in(engine, j) for j in ids), "both jobs to reach their handler")
    status = json.loads(db.rplat("status", "--json", check=True).stdout)
    (rack,) = [r for r in status["runners"] if r["runner"] == "rack"]
    assert (rack["gpus"], rack["slots"]) == (["0", "1"], 2)
    on_rack = sorted(rack["jobs"], key=lambda j: j["id"])
    assert [(j["id"], j["kind"]) for j in on_rack] == [(ids[0], "test-devices"), (ids[1], "test-devices")]
    assert sorted(d for j in on_rack for d in j["devices"]) == ["0", "1"]
    running = {r["id"]: r for r in status["running"]}
    assert {j: running[j]["devices"] for j in ids} == {j["id"]: j["devices"] for j in on_rack}
    shown = db.rplat("status", check=True).stdout
    assert all(f"{j['id']}[{j['devices'][0]}]" in shown for j in on_rack)
    runners.procs["rack"].send_signal(signal.SIGTERM)
    assert runners.wait("rack") == 0
    for job_id in ids:
        released = job(engine, job_id)
        assert (released.status, released.attempts) == ("queued", 0), "SIGTERM reached the job's process"
        assert [e.runner for e in events(engine, job_id, "released")] == ["rack"]


def test_a_runner_killed_9_takes_its_job_processes_with_it(db: Store, runners: Runners) -> None:
    engine = db.engine()
    first = meet(engine, "late", gpus=1, peers=2)
    runners.start("doomed", "--gpus", "0")
    wait_for(lambda: bool(started_in(engine, first)), "the job to reach its handler")
    ((_, child),) = started_in(engine, first)
    runners.procs["doomed"].kill()
    runners.wait("doomed")
    wait_for(lambda: not alive(child), "the job's process to die with its runner")
    second = meet(engine, "late", gpus=1, peers=2)
    runners.start("heir", "--gpus", "0,1", "--slots", "2", "--until-done")
    assert runners.wait("heir") == 0
    stored = job(engine, first)
    assert (stored.status, stored.attempts, stored.lease_owner) == ("succeeded", 2, "heir")
    assert [(e.runner, e.attempt) for e in events(engine, first, "lease-expired")] == [("doomed", 1)]
    assert [attempt for attempt, _ in started_in(engine, first)] == [1, 2]
    assert job(engine, second).status == "succeeded"


def test_a_job_whose_process_dies_is_failed_with_the_reason(db: Store, runners: Runners) -> None:
    engine = db.engine()
    job_id = meet(engine, "never", gpus=1, peers=2, max_attempts=1)
    runners.start("watcher", "--gpus", "0", "--until-done")
    wait_for(lambda: bool(started_in(engine, job_id)), "the job to reach its handler")
    ((_, child),) = started_in(engine, job_id)
    os.kill(child, signal.SIGKILL)
    assert runners.wait("watcher") == 0
    stored = job(engine, job_id)
    assert stored.status == "failed"
    assert stored.error == (f"the process running job {job_id} was killed by signal 9 before recording how the job "
                            "ended")


# --- enqueue --gpus -------------------------------------------------------------------------------


def test_enqueue_gpus_minus_one_is_one_sentence_and_exit_2(db: Store) -> None:
    proc = db.rplat("enqueue", "probe", "--gpus", "-1")
    assert proc.returncode == 2
    assert proc.stderr == ("error: invalid value for '--gpus': -1 is not in the range 0<=x<=64; see "
                           "`rplat enqueue --help`.\n")
    with transaction(db.engine()) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_gpus_join_the_dedupe_key_only_when_needed(db: Store) -> None:
    queue = Queue(db.engine())
    params = {"tag": "t", "devices": False}
    cpu, created = queue.enqueue("probe", params)
    again, created_again = queue.enqueue("probe", params, gpus=0)
    gpu, created_gpu = queue.enqueue("probe", params, gpus=1)
    assert (created, created_again, created_gpu) == (True, False, True)
    assert again == cpu != gpu
    stored = {j: job(db.engine(), j) for j in (cpu, gpu)}
    assert (stored[cpu].gpus, stored[gpu].gpus) == (0, 1)
    validated = stored[cpu].params
    before = json.dumps(["probe", validated, None, []], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert stored[cpu].dedupe_key == hashlib.sha256(before.encode()).hexdigest(), "keys of CPU jobs did not change"
    assert stored[gpu].dedupe_key == default_dedupe_key("probe", validated, None, [], gpus=1)


def test_a_kind_default_gpus_applies_unless_enqueue_says_otherwise(db: Store) -> None:
    by_default = json.loads(db.rplat("enqueue", "test-gpu-devices", "--param", "meeting=m", "--json",
                                     check=True).stdout)["id"]
    told = json.loads(db.rplat("enqueue", "test-gpu-devices", "--param", "meeting=m", "--gpus", "0", "--json",
                               check=True).stdout)["id"]
    assert (job(db.engine(), by_default).gpus, job(db.engine(), told).gpus) == (1, 0)


# --- device lists -----------------------------------------------------------------------------------


def test_device_lists_parse_ids_and_none() -> None:
    assert parse_devices("0, 1,", "--gpus") == ["0", "1"]
    assert parse_devices("GPU-8f2c,GPU-11aa", "--gpus") == ["GPU-8f2c", "GPU-11aa"]
    assert parse_devices("none", "--gpus") == parse_devices("", "--gpus") == []
    with pytest.raises(UserError, match=r"^--gpus names device '1' twice; list each device once, e.g. --gpus 0,1\.$"):
        parse_devices("0,1,1", "--gpus")


def test_visible_devices_default_to_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert visible_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_devices() == []


def test_runner_without_nvidia_driver_starts_without_importing_torch(tmp_path: Path) -> None:
    if Path("/proc/driver/nvidia/gpus").exists():
        pytest.skip("this machine has an NVIDIA driver")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = str(tmp_path)  # no nvidia-smi either
    code = ("import sys; from rplat.runners.framework.runner import visible_devices; "
            "print(visible_devices(), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out == "[] False\n"


def test_runner_gpus_naming_a_device_twice_is_one_sentence_and_exit_2(db: Store) -> None:
    proc = db.rplat("runner", "--gpus", "0,0", "--once")
    assert (proc.returncode, proc.stderr) == (
        2, "error: --gpus names device '0' twice; list each device once, e.g. --gpus 0,1.\n")
