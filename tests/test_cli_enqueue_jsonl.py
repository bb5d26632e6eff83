"""`rplat enqueue KIND --params-jsonl FILE`: one job per line, all validated first and queued in one transaction."""

from __future__ import annotations

import json

from sqlalchemy import func, select

from rplat.models import Experiment, Job, JobDependency
from rplat.queue import Queue
from rplat.store import transaction

from stores import Store


def write_lines(store: Store, name: str, *lines: object) -> str:
    (store.home / name).write_text("".join(f"{json.dumps(line)}\n" for line in lines), encoding="utf-8")
    return name


def jobs_in(store: Store) -> int:
    with transaction(store.engine()) as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_each_line_is_a_job_with_the_shared_params_and_options(db: Store) -> None:
    db.rplat("experiments", "add", "smoke", check=True)
    parent = json.loads(db.rplat("enqueue", "probe", "--param", "tag=parent", "--json", check=True).stdout)["id"]
    tags = db.home / "tags.jsonl"
    tags.write_text('{"tag": "a"}\n\n{"tag": "b", "sleep_seconds": 1}\n', encoding="utf-8")  # a blank line is no job
    out = db.rplat("enqueue", "probe", "--param", "devices=false", "--param", "sleep_seconds=0.5", "--params-jsonl",
                   "tags.jsonl", "--experiment", "smoke", "--priority", "4", "--max-attempts", "2", "--after",
                   str(parent), check=True).stdout.splitlines()
    a, b = (int(line.split()[1]) for line in out[:2])
    assert out == [f"job {a} queued", f"job {b} queued", "2 jobs of kind probe: 2 queued, 0 already existed"]
    with transaction(db.engine()) as session:
        smoke = session.scalar(select(Experiment.id).where(Experiment.name == "smoke"))
        for job_id, tag, sleep in ((a, "a", 0.5), (b, "b", 1.0)):
            job = session.get(Job, job_id)
            assert job is not None
            assert (job.params["tag"], job.params["sleep_seconds"], job.params["devices"]) == (tag, sleep, False)
            assert (job.experiment_id, job.priority, job.max_attempts, job.status) == (smoke, 4, 2, "queued")
            parents = session.scalars(select(JobDependency.depends_on_id).where(JobDependency.job_id == job_id))
            assert list(parents) == [parent]


def test_a_duplicate_line_is_the_job_a_single_enqueue_made_or_makes(db: Store) -> None:
    first = json.loads(db.rplat("enqueue", "probe", "--param", "tag=a", "--json", check=True).stdout)["id"]
    name = write_lines(db, "tags.jsonl", {"tag": "a"}, {"tag": "b"}, {"tag": "b"})
    out = db.rplat("enqueue", "probe", "--params-jsonl", name, check=True).stdout.splitlines()
    b = int(out[1].split()[1])
    assert out == [f"job {first} already exists (identical job)", f"job {b} queued",
                   f"job {b} already exists (identical job)", "3 jobs of kind probe: 1 queued, 2 already existed"]
    again = json.loads(db.rplat("enqueue", "probe", "--param", "tag=b", "--json", check=True).stdout)
    assert again == {"id": b, "created": False}
    assert jobs_in(db) == 2


def test_a_bad_line_in_the_middle_is_one_sentence_naming_it_and_queues_nothing(db: Store) -> None:
    name = write_lines(db, "tags.jsonl", {"tag": "a"}, {"colour": "red"}, {"tag": "c"})
    proc = db.rplat("enqueue", "probe", "--params-jsonl", name)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.startswith("error: tags.jsonl line 2: bad parameter for job kind 'probe': 'colour' is not a "
                                  "parameter of this kind;")
    assert len(proc.stderr.splitlines()) == 1
    assert jobs_in(db) == 0


def test_a_line_whose_reference_fails_after_earlier_lines_were_inserted_queues_nothing(db: Store) -> None:
    with transaction(db.engine()) as session:
        solve = Queue.record_done(session, "solve", {}, {})
    name = write_lines(db, "evaluate.jsonl", {"solve_job": solve}, {"solve_job": 999})
    proc = db.rplat("enqueue", "evaluate", "--params-jsonl", name)
    assert proc.returncode == 2
    assert proc.stderr == ("error: evaluate.jsonl line 2: parameter 'solve_job' of evaluate names job 999, which does "
                           "not exist; see `rplat jobs ls`.\n")
    assert jobs_in(db) == 1  # the solve job alone


def test_params_from_stdin_with_json_output_one_object_per_line(db: Store) -> None:
    lines = "".join(json.dumps({"tag": f"t{i}", "devices": False}) + "\n" for i in range(3))
    out = db.rplat("enqueue", "probe", "--params-jsonl", "-", "--json", input=lines + lines[: lines.index("\n") + 1],
                   check=True).stdout
    results = json.loads(out)
    ids = [r["id"] for r in results[:3]]
    assert results == [{"id": i, "created": True} for i in ids] + [{"id": ids[0], "created": False}]
    with transaction(db.engine()) as session:
        assert [session.get(Job, i).params["tag"] for i in ids] == ["t0", "t1", "t2"]  # type: ignore[union-attr]
