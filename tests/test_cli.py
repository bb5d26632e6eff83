"""The CLI's happy paths via the real subprocess: experiments, enqueue, jobs, status, models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rplat.models import Job, Model
from rplat.store import transaction

from stores import Store


def rplat_json(store: Store, *args: str) -> Any:
    return json.loads(store.rplat(*args, "--json", check=True).stdout)


def rplat_without_store(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Commands that never open the database."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "rplat.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=True)


def test_experiments_add_then_ls_lists_it_with_its_job_count(db: Store) -> None:
    out = db.rplat("experiments", "add", "math-nat", "--description", "NAT on GSM8K", check=True).stdout
    assert out == "experiment math-nat created\n"
    db.rplat("enqueue", "probe", "--experiment", "math-nat", check=True)
    (row,) = rplat_json(db, "experiments", "ls")
    assert (row["name"], row["jobs"], row["description"]) == ("math-nat", 1, "NAT on GSM8K")
    table = db.rplat("experiments", "ls", check=True).stdout.splitlines()
    assert table[0].split() == ["name", "jobs", "description", "created"]
    assert table[1].split()[:2] == ["math-nat", "1"]


def test_enqueue_prints_the_new_job_id_and_stores_validated_params(db: Store) -> None:
    out = db.rplat("enqueue", "probe", "--param", "tag=first", "--param", "sleep_seconds=0.5", check=True).stdout
    assert out.startswith("job ") and out.endswith(" queued\n")
    job_id = int(out.split()[1])
    with transaction(db.engine()) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.kind, job.status, job.attempts) == ("probe", "queued", 0)
        assert job.params["tag"] == "first"
        assert job.params["sleep_seconds"] == 0.5


def test_enqueue_json_reports_created_and_an_identical_job_is_the_same_job(db: Store) -> None:
    first = rplat_json(db, "enqueue", "probe", "--param", "tag=same")
    again = rplat_json(db, "enqueue", "probe", "--param", "tag=same")
    other = rplat_json(db, "enqueue", "probe", "--param", "tag=same", "--no-dedupe")
    assert first["created"] is True
    assert again == {"id": first["id"], "created": False}
    assert other["created"] is True and other["id"] != first["id"]


def test_enqueue_params_file_is_overridden_by_param_and_after_is_recorded(db: Store) -> None:
    (db.home / "params.json").write_text(json.dumps({"tag": "from-file", "sleep_seconds": 2}), encoding="utf-8")
    parent = rplat_json(db, "enqueue", "probe", "--param", "tag=parent")["id"]
    child = rplat_json(db, "enqueue", "probe", "--params-file", "params.json", "--param", "tag=from-flag",
                       "--after", str(parent), "--priority", "5")["id"]
    shown = rplat_json(db, "jobs", "show", str(child))
    assert (shown["params"]["tag"], shown["params"]["sleep_seconds"]) == ("from-flag", 2.0)
    assert (shown["after"], shown["priority"], shown["status"]) == ([parent], 5, "queued")


def test_kinds_lists_each_kind_with_its_parameters(tmp_path: Path) -> None:
    kinds = {k["kind"]: k for k in json.loads(rplat_without_store("kinds", "--json", cwd=tmp_path).stdout)}
    assert {"probe", "prefilter"} <= set(kinds)
    assert "threshold=0.3" in kinds["prefilter"]["params"]
    assert "documents" in kinds["prefilter"]["params"].split(", ")
    human = rplat_without_store("kinds", cwd=tmp_path).stdout
    assert "probe: " in human and "    params: " in human


def test_jobs_ls_filters_by_status_and_kind(db: Store) -> None:
    queued = rplat_json(db, "enqueue", "probe", "--param", "tag=a")["id"]
    cancelled = rplat_json(db, "enqueue", "probe", "--param", "tag=b")["id"]
    assert db.rplat("jobs", "cancel", str(cancelled), check=True).stdout == f"job {cancelled}: cancelled\n"
    assert [j["id"] for j in rplat_json(db, "jobs", "ls")] == [cancelled, queued]
    assert [j["id"] for j in rplat_json(db, "jobs", "ls", "--status", "queued")] == [queued]
    assert rplat_json(db, "jobs", "ls", "--kind", "prefilter") == []
    (row,) = rplat_json(db, "jobs", "ls", "--status", "cancelled", "--kind", "probe")
    assert (row["id"], row["status"], row["attempts"]) == (cancelled, "cancelled", "0/3")


def test_jobs_logs_show_the_events_of_a_cancelled_and_retried_job(db: Store) -> None:
    job_id = rplat_json(db, "enqueue", "probe")["id"]
    db.rplat("jobs", "cancel", str(job_id), check=True)
    assert db.rplat("jobs", "retry", str(job_id), check=True).stdout == f"queued again: {job_id}\n"
    events = rplat_json(db, "jobs", "logs", str(job_id))
    assert [e["event"] for e in events] == ["enqueued", "cancelled", "requeued"]
    assert events[1]["message"] == "cancelled by the user"
    assert rplat_json(db, "jobs", "show", str(job_id))["status"] == "queued"


def test_jobs_show_human_output_names_kind_status_and_params(db: Store) -> None:
    job_id = rplat_json(db, "enqueue", "probe", "--param", "tag=look")["id"]
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip()
             for line in db.rplat("jobs", "show", str(job_id), check=True).stdout.splitlines()}
    assert (lines["id"], lines["kind"], lines["status"]) == (str(job_id), "probe", "queued")
    assert json.loads(lines["params"])["tag"] == "look"


def test_status_json_reports_queue_depth_per_kind_and_status(db: Store) -> None:
    for tag in ("a", "b"):
        rplat_json(db, "enqueue", "probe", "--param", f"tag={tag}")
    status = rplat_json(db, "status")
    assert status == {"queue": [{"kind": "probe", "status": "queued", "jobs": 2}], "ready": [{"gpus": 0, "jobs": 2}],
                      "runners": [], "running": []}
    gpu_job = rplat_json(db, "enqueue", "probe", "--param", "tag=c", "--gpus", "2")
    waiting = rplat_json(db, "enqueue", "probe", "--param", "tag=d", "--after", str(gpu_job["id"]))
    assert waiting["id"] != gpu_job["id"]
    # A job waiting for its parent is queued but not ready; ready jobs are counted by the GPUs they need.
    assert rplat_json(db, "status")["ready"] == [{"gpus": 0, "jobs": 2}, {"gpus": 2, "jobs": 1}]
    assert db.rplat("status", check=True).stdout.startswith(
        "queue:\nkind   status  jobs\nprobe  queued  4\n\nready jobs (every parent succeeded) by GPUs needed:\n"
        "gpus  jobs\n0     2\n2     1\n")


def test_generate_reasoning_gym_writes_problems_with_worked_solutions(tmp_path: Path) -> None:
    out = tmp_path / "gsm.jsonl"
    proc = rplat_without_store("generate", "reasoning-gym", "gsm_symbolic", "--size", "5", "--out", str(out),
                               cwd=tmp_path)
    assert proc.stdout == f"wrote 5 problems to {out}\n"
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [f"gsm_symbolic-0-{i}" for i in range(5)]
    for r in records:
        assert r["question"].strip()
        assert r["solution"].splitlines()[-1] == f"#### {r['answer']}"


def test_models_ls_lists_registered_models(db: Store) -> None:
    assert rplat_json(db, "models", "ls") == []
    with transaction(db.engine()) as session:
        session.add(Model(name="smollm2-135m-instruct", format="base", role="student", fingerprint="ab" * 32,
                          path="/models/smollm2"))
    assert rplat_json(db, "models", "ls") == [{"name": "smollm2-135m-instruct", "format": "base", "role": "student",
                                               "fingerprint": "ab" * 6, "job": None, "path": "/models/smollm2"}]
