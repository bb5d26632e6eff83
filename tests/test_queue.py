"""Queue semantics in-process on both stores: dedupe, dependencies, leases, fencing, retries."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from rplat.errors import LeaseLost, UserError
from rplat.models import Experiment, Job, JobDependency, JobEvent, utcnow
from rplat.queue import ClaimedJob, Queue
from rplat.runners.framework.context import JobContext
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

import rplat_test_plugins
from stores import Store

LEASE = 30.0
PROBE = {"devices": False}


@pytest.fixture
def queue(db: Store) -> Queue:
    rplat_test_plugins.register()
    rplat_test_plugins.create_output_tables(db.engine())
    return Queue(db.engine(), retry_base_seconds=10.0)


def job(q: Queue, job_id: int) -> Job:
    with transaction(q.engine) as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


def events(q: Queue, job_id: int, event: str | None = None) -> list[JobEvent]:
    with transaction(q.engine) as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        if event is not None:
            query = query.where(JobEvent.event == event)
        return list(session.scalars(query))


def count(q: Queue, table: Any) -> int:
    with transaction(q.engine) as session:
        return session.scalar(select(func.count()).select_from(table)) or 0


def set_job(q: Queue, job_id: int, **values: Any) -> None:
    with transaction(q.engine) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def expire_lease(q: Queue, job_id: int) -> None:
    """What a runner that died or hung leaves behind: a lease in the past (no waiting in the test)."""
    set_job(q, job_id, lease_expires_at=utcnow() - dt.timedelta(hours=1))


def make_due(q: Queue, job_id: int) -> None:
    set_job(q, job_id, not_before=utcnow() - dt.timedelta(hours=1))


def claim(q: Queue, owner: str = "runner-a") -> ClaimedJob:
    got = q.claim(owner, None, LEASE)
    assert got is not None, "expected a claimable job"
    return got


def context(q: Queue, claimed: ClaimedJob, db: Store) -> JobContext:
    return JobContext(claimed, q, db.home, "runner-a", threading.Event())


# --- enqueue -------------------------------------------------------------------------------------


def test_enqueue_of_unknown_kind_is_a_user_error_and_writes_nothing(queue: Queue) -> None:
    with pytest.raises(UserError, match="unknown job kind 'no-such-kind'"):
        queue.enqueue("no-such-kind", {})
    assert count(queue, Job) == 0
    assert count(queue, JobEvent) == 0


@pytest.mark.parametrize(("params", "message"), [
    ({"sleep_seconds": -1}, "'sleep_seconds'"),
    ({"sleep_seconds": "soon"}, "'sleep_seconds'"),
    ({"colour": "red"}, "'colour' is not a parameter"),
])
def test_enqueue_with_bad_param_is_a_user_error_and_writes_nothing(queue: Queue, params: dict[str, Any],
                                                                   message: str) -> None:
    with pytest.raises(UserError, match=message):
        queue.enqueue("probe", params)
    assert count(queue, Job) == 0


def test_enqueue_into_unknown_experiment_is_a_user_error_and_writes_nothing(queue: Queue) -> None:
    with pytest.raises(UserError, match="experiment 'ghost' does not exist"):
        queue.enqueue("probe", PROBE, experiment="ghost")
    assert count(queue, Job) == 0


def test_enqueue_after_missing_job_is_a_user_error_and_writes_nothing(queue: Queue) -> None:
    with pytest.raises(UserError, match="job 999"):
        queue.enqueue("probe", PROBE, after=[999])
    assert count(queue, Job) == 0


def test_enqueue_stores_validated_params_with_defaults(queue: Queue) -> None:
    job_id, created = queue.enqueue("probe", {"sleep_seconds": "1.5", "devices": False})
    assert created
    stored = job(queue, job_id)
    assert stored.status == "queued"
    assert stored.params["sleep_seconds"] == 1.5
    assert stored.params["burn_seconds"] == 0.0


# --- dedupe ---------------------------------------------------------------------------------------


def test_identical_enqueue_returns_the_existing_job(queue: Queue) -> None:
    first = queue.enqueue("probe", {"tag": "x", "devices": False})
    second = queue.enqueue("probe", {"devices": False, "tag": "x"})
    assert first == (first[0], True)
    assert second == (first[0], False)
    assert count(queue, Job) == 1


def test_different_params_or_experiment_make_different_jobs(queue: Queue) -> None:
    with transaction(queue.engine) as session:
        session.execute(insert(Experiment).values(name="exp"))
    a, _ = queue.enqueue("probe", {"tag": "x", "devices": False})
    b, _ = queue.enqueue("probe", {"tag": "y", "devices": False})
    c, _ = queue.enqueue("probe", {"tag": "x", "devices": False}, experiment="exp")
    assert len({a, b, c}) == 3


def test_concurrent_identical_enqueues_make_one_job(queue: Queue) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def enqueue() -> None:
        try:
            barrier.wait()
            results.append(queue.enqueue("probe", {"tag": "race", "devices": False}))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=enqueue) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert count(queue, Job) == 1


# --- many at once ---------------------------------------------------------------------------------


def test_enqueue_many_dedupes_each_job_as_enqueue_does_with_the_same_options(queue: Queue) -> None:
    with transaction(queue.engine) as session:
        session.execute(insert(Experiment).values(name="exp"))
    single, _ = queue.enqueue("probe", {"tag": "a", **PROBE}, experiment="exp", priority=2)
    jobs = [("line 1", {"tag": "a", **PROBE}), ("line 2", {"tag": "b", **PROBE}), ("line 3", {"tag": "b", **PROBE})]
    results = queue.enqueue_many("probe", jobs, experiment="exp", priority=2)
    new = results[1][0]
    assert results == [(single, False), (new, True), (new, False)]
    assert queue.enqueue("probe", {"tag": "b", **PROBE}, experiment="exp", priority=2) == (new, False)
    assert (job(queue, new).priority, job(queue, new).experiment_id) == (2, job(queue, single).experiment_id)


def test_enqueue_many_with_a_bad_job_names_it_and_writes_none(queue: Queue) -> None:
    jobs = [("line 1", {"tag": "a", **PROBE}), ("line 2", {"colour": "red"}), ("line 3", {"tag": "c", **PROBE})]
    with pytest.raises(UserError, match="^line 2: bad parameter for job kind 'probe': 'colour' is not a parameter"):
        queue.enqueue_many("probe", jobs)
    assert count(queue, Job) == 0


def test_enqueue_many_words_a_bad_option_once_not_as_a_mistake_of_one_job(queue: Queue) -> None:
    with pytest.raises(UserError, match="^experiment 'ghost' does not exist"):
        queue.enqueue_many("probe", [("line 1", PROBE), ("line 2", {"tag": "b", **PROBE})], experiment="ghost")
    with pytest.raises(UserError, match="^max_attempts must be at least 1"):
        queue.enqueue_many("probe", [("line 1", PROBE)], max_attempts=0)
    assert count(queue, Job) == 0


def test_enqueue_many_failing_after_jobs_were_inserted_rolls_them_back(queue: Queue) -> None:
    with transaction(queue.engine) as session:
        solve = Queue.record_done(session, "solve", {}, {})
    # The second job's reference is checked in the transaction, after the first job's row was inserted.
    jobs = [("line 1", {"solve_job": solve}), ("line 2", {"solve_job": 999})]
    with pytest.raises(UserError, match="^line 2: parameter 'solve_job' of evaluate names job 999, which does not"):
        queue.enqueue_many("evaluate", jobs)
    assert count(queue, Job) == 1  # the solve job alone
    assert count(queue, JobEvent) == 0


# --- claim order and kinds ------------------------------------------------------------------------


def test_claim_takes_the_highest_priority_then_the_oldest_job(queue: Queue) -> None:
    low, _ = queue.enqueue("probe", {"tag": "low", "devices": False}, priority=0)
    first_high, _ = queue.enqueue("probe", {"tag": "high-1", "devices": False}, priority=5)
    second_high, _ = queue.enqueue("probe", {"tag": "high-2", "devices": False}, priority=5)
    assert [claim(queue).id for _ in range(3)] == [first_high, second_high, low]


def test_claim_takes_only_the_kinds_asked_for(queue: Queue) -> None:
    queue.enqueue("test-fail", {})
    probe, _ = queue.enqueue("probe", PROBE)
    got = queue.claim("runner-a", ["probe", "prefilter"], LEASE)
    assert got is not None and got.id == probe
    assert queue.claim("runner-a", ["probe"], LEASE) is None


def test_a_job_pinned_to_a_host_is_claimed_only_there(queue: Queue) -> None:
    pinned, _ = queue.enqueue("probe", PROBE, host="gpu-7")
    elsewhere, created = queue.enqueue("probe", PROBE, host="gpu-8")
    assert created and elsewhere != pinned  # the same job for another machine is another job
    anywhere, _ = queue.enqueue("probe", PROBE)
    got = queue.claim("runner-a", None, LEASE, host="cpu-1")
    assert got is not None and got.id == anywhere
    assert queue.claim("runner-a", None, LEASE, host="cpu-1") is None
    got = queue.claim("runner-b", None, LEASE, host="gpu-7")
    assert got is not None and got.id == pinned
    assert queue.claim("runner-b", None, LEASE, host="gpu-7") is None


def test_a_runner_takes_jobs_pinned_to_its_host_name(db: Store) -> None:
    import socket

    job = db.rplat("enqueue", "probe", "--param", "devices=false", "--host", socket.gethostname(), "--json", check=True)
    other = db.rplat("enqueue", "probe", "--param", "devices=false", "--host", "no-such-host", "--json", check=True)
    db.rplat("runner", "--once", "--quiet", check=True)
    shown = {j["id"]: j["status"] for j in json.loads(db.rplat("jobs", "ls", "--json", check=True).stdout)}
    assert shown[json.loads(job.stdout)["id"]] == "succeeded"
    assert shown[json.loads(other.stdout)["id"]] == "queued"


def test_runner_until_done_waits_out_retry_backoff_where_once_stops(db: Store) -> None:
    """--once leaves a job in retry backoff queued; --until-done waits for its last attempt and exits once
    nothing it could run is left (a job pinned to another machine does not keep it waiting)."""
    failing = json.loads(db.rplat("enqueue", "test-fail", "--max-attempts", "2", "--json", check=True).stdout)["id"]
    child = json.loads(db.rplat("enqueue", "probe", "--param", "devices=false", "--after", str(failing), "--json",
                                check=True).stdout)["id"]
    elsewhere = json.loads(db.rplat("enqueue", "probe", "--param", "devices=false", "--host", "no-such-host",
                                    "--json", check=True).stdout)["id"]

    def statuses() -> dict[int, tuple[str, str]]:
        listed = json.loads(db.rplat("jobs", "ls", "--json", check=True).stdout)
        return {j["id"]: (j["status"], j["attempts"]) for j in listed}

    db.rplat("runner", "--once", "--quiet", check=True)
    assert statuses()[failing] == ("queued", "1/2")
    db.rplat("runner", "--until-done", "--quiet", "--poll-seconds", "0.05", check=True, timeout=60)
    after = statuses()
    assert after[failing] == ("failed", "2/2")
    assert after[child][0] == "cancelled"
    assert after[elsewhere][0] == "queued"


def test_claim_skips_a_job_not_yet_due(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    set_job(queue, job_id, not_before=utcnow() + dt.timedelta(hours=1))
    assert queue.claim("runner-a", None, LEASE) is None


# --- dependencies ---------------------------------------------------------------------------------


def test_child_is_not_claimable_until_its_parent_succeeded(queue: Queue) -> None:
    parent, _ = queue.enqueue("probe", {"tag": "parent", "devices": False})
    child, _ = queue.enqueue("probe", {"tag": "child", "devices": False}, priority=10, after=[parent])
    first = claim(queue)
    assert first.id == parent
    assert queue.claim("runner-b", None, LEASE) is None
    queue.complete(first.id, first.lease_token, {})
    assert claim(queue).id == child


def test_parent_failing_for_good_cancels_its_descendants_with_the_reason(queue: Queue) -> None:
    parent, _ = queue.enqueue("test-fail", {}, max_attempts=1)
    child, _ = queue.enqueue("probe", {"tag": "child", "devices": False}, after=[parent])
    grandchild, _ = queue.enqueue("probe", {"tag": "grandchild", "devices": False}, after=[child])
    claimed = claim(queue)
    assert queue.fail(claimed.id, claimed.lease_token, "boom", retryable=True) == "failed"
    for descendant in (child, grandchild):
        assert job(queue, descendant).status == "cancelled"
    assert job(queue, child).error == f"parent job {parent} failed"
    assert job(queue, grandchild).error == f"parent job {parent} failed"
    assert queue.claim("runner-b", None, LEASE) is None


def test_enqueue_after_an_already_failed_parent_is_cancelled(queue: Queue) -> None:
    parent, _ = queue.enqueue("test-fail", {}, max_attempts=1)
    claimed = claim(queue)
    queue.fail(claimed.id, claimed.lease_token, "boom", retryable=True)
    child, created = queue.enqueue("probe", PROBE, after=[parent])
    assert created
    assert job(queue, child).status == "cancelled"
    assert job(queue, child).error == f"parent job {parent} failed"
    with transaction(queue.engine) as session:
        assert session.scalar(select(JobDependency.depends_on_id).where(JobDependency.job_id == child)) == parent


# --- leases and fencing ---------------------------------------------------------------------------


def test_lease_token_increases_on_each_claim(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    tokens = [claim(queue).lease_token]
    expire_lease(queue, job_id)
    tokens.append(claim(queue, "runner-b").lease_token)
    queue.release(job_id, tokens[-1])
    tokens.append(claim(queue, "runner-c").lease_token)
    assert tokens == sorted(set(tokens))
    assert job(queue, job_id).lease_token == tokens[-1]


def test_first_claim_is_on_the_job_row_and_every_later_claim_is_an_event(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    claim(queue, "runner-a")
    assert events(queue, job_id, "claimed") == []
    assert (job(queue, job_id).lease_owner, job(queue, job_id).lease_token) == ("runner-a", 1)
    expire_lease(queue, job_id)
    claim(queue, "runner-b")
    expired = events(queue, job_id, "lease-expired")
    assert [(e.runner, e.attempt) for e in expired] == [("runner-a", 1)]
    assert [(e.runner, e.attempt) for e in events(queue, job_id, "claimed")] == [("runner-b", 2)]


def test_complete_records_result_progress_and_ends_the_lease(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    claimed = claim(queue, "runner-a")
    queue.complete(job_id, claimed.lease_token, {"ok": True}, (4, 4))
    stored = job(queue, job_id)
    assert (stored.status, stored.result, stored.progress_done, stored.progress_total) == ("succeeded", {"ok": True},
                                                                                          4, 4)
    assert (stored.lease_owner, stored.lease_expires_at, stored.error) == ("runner-a", None, None)
    assert stored.finished_at is not None


def test_expired_lease_is_reclaimed_by_another_runner_as_a_new_attempt(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    first = claim(queue, "runner-a")
    assert queue.claim("runner-b", None, LEASE) is None
    expire_lease(queue, job_id)
    second = claim(queue, "runner-b")
    assert (second.id, second.attempts) == (first.id, 2)
    assert job(queue, job_id).lease_owner == "runner-b"


def test_fence_rejects_a_stale_token_and_its_late_commit_writes_nothing(queue: Queue, db: Store) -> None:
    job_id, _ = queue.enqueue("test-echo", {"i": 7})
    stale = claim(queue, "runner-a")
    expire_lease(queue, job_id)
    current = claim(queue, "runner-b")
    late = context(queue, stale, db)
    with pytest.raises(LeaseLost), late.transaction() as session:
        session.execute(insert(rplat_test_plugins.echo_output).values(job_id=job_id, i=7, runner="runner-a"))
    with pytest.raises(LeaseLost):
        queue.complete(stale.id, stale.lease_token, {"runner": "runner-a"})
    assert count(queue, rplat_test_plugins.echo_output) == 0
    assert (job(queue, job_id).status, job(queue, job_id).lease_owner) == ("running", "runner-b")
    queue.complete(current.id, current.lease_token, {"runner": "runner-b"})
    assert job(queue, job_id).result == {"runner": "runner-b"}


def test_heartbeat_with_a_stale_token_reports_the_lease_lost(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    stale = claim(queue, "runner-a")
    expire_lease(queue, job_id)
    claim(queue, "runner-b")
    beat = queue.heartbeat(job_id, stale.lease_token, LEASE)
    assert not beat.alive
    assert job(queue, job_id).lease_owner == "runner-b"


def test_heartbeat_extends_the_lease_and_records_progress(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    claimed = claim(queue)
    expire_lease(queue, job_id)
    assert queue.heartbeat(job_id, claimed.lease_token, LEASE, (3, 10)).alive
    assert queue.claim("runner-b", None, LEASE) is None
    stored = job(queue, job_id)
    assert (stored.progress_done, stored.progress_total) == (3, 10)


# --- retries, release, reaper ---------------------------------------------------------------------


def test_failures_retry_with_exponential_backoff_up_to_max_attempts(queue: Queue) -> None:
    job_id, _ = queue.enqueue("test-fail", {}, max_attempts=3)
    delays = []
    for attempt in (1, 2):
        claimed = claim(queue)
        assert claimed.attempts == attempt
        assert queue.fail(job_id, claimed.lease_token, "boom", retryable=True) == "queued"
        retry_at = events(queue, job_id, "retry")[-1].at
        delays.append((job(queue, job_id).not_before - retry_at).total_seconds())
        assert queue.claim("runner-b", None, LEASE) is None, "not claimable before its backoff elapsed"
        make_due(queue, job_id)
    assert delays == pytest.approx([10.0, 20.0], abs=1.0)
    last = claim(queue)
    assert queue.fail(job_id, last.lease_token, "boom", retryable=True) == "failed"
    stored = job(queue, job_id)
    assert (stored.status, stored.attempts, stored.error) == ("failed", 3, "boom")
    assert queue.claim("runner-b", None, LEASE) is None


def test_backoff_is_capped_at_retry_max_seconds(queue: Queue) -> None:
    q = Queue(queue.engine, retry_base_seconds=10.0, retry_max_seconds=15.0)
    job_id, _ = q.enqueue("test-fail", {}, max_attempts=5)
    q.fail(job_id, claim(q).lease_token, "boom", retryable=True)
    make_due(q, job_id)
    q.fail(job_id, claim(q).lease_token, "boom", retryable=True)
    delay = (job(q, job_id).not_before - events(q, job_id, "retry")[-1].at).total_seconds()
    assert delay == pytest.approx(15.0, abs=1.0)


def test_non_retryable_failure_fails_at_once(queue: Queue) -> None:
    job_id, _ = queue.enqueue("test-fail", {}, max_attempts=3)
    claimed = claim(queue)
    assert queue.fail(job_id, claimed.lease_token, "bad input", retryable=False) == "failed"
    assert (job(queue, job_id).status, job(queue, job_id).attempts) == ("failed", 1)


def test_release_requeues_at_once_without_counting_the_attempt(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    first = claim(queue)
    queue.release(job_id, first.lease_token, runner="runner-a")
    stored = job(queue, job_id)
    assert (stored.status, stored.attempts, stored.lease_expires_at) == ("queued", 0, None)
    assert [e.event for e in events(queue, job_id)][-1] == "released"
    second = claim(queue, "runner-b")
    assert (second.attempts, second.lease_token) == (1, first.lease_token + 1)


def test_expired_lease_on_the_last_attempt_is_failed_by_the_reaper(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE, max_attempts=1)
    child, _ = queue.enqueue("probe", {"tag": "child", "devices": False}, after=[job_id])
    claim(queue)
    expire_lease(queue, job_id)
    assert queue.claim("runner-b", None, LEASE) is None
    stored = job(queue, job_id)
    assert stored.status == "failed"
    assert "lease expired on the last attempt" in (stored.error or "")
    assert job(queue, child).status == "cancelled"


# --- cancel and retry by the operator -------------------------------------------------------------


def test_cancel_of_a_queued_job_cancels_it_and_its_descendants(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    child, _ = queue.enqueue("probe", {"tag": "child", "devices": False}, after=[job_id])
    assert queue.cancel(job_id) == "cancelled"
    assert (job(queue, job_id).status, job(queue, job_id).error) == ("cancelled", "cancelled by the user")
    assert (job(queue, child).status, job(queue, child).error) == ("cancelled", f"parent job {job_id} cancelled")
    assert queue.claim("runner-a", None, LEASE) is None


def test_cancel_of_a_finished_job_is_a_user_error(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    claimed = claim(queue)
    queue.complete(job_id, claimed.lease_token, {})
    with pytest.raises(UserError, match="already succeeded"):
        queue.cancel(job_id)


def test_heartbeat_reports_a_cancel_request_to_the_job_context(queue: Queue, db: Store) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    claimed = claim(queue)
    ctx = context(queue, claimed, db)
    assert queue.cancel(job_id) == "cancel-requested"
    beat = queue.heartbeat(job_id, claimed.lease_token, LEASE)
    ctx._on_beat(beat.alive, beat.cancel_requested)
    assert beat.alive
    assert ctx.cancelled


def test_cancel_of_a_running_job_reaches_its_runner_and_ends_it_cancelled(queue: Queue, db: Store) -> None:
    job_id, _ = queue.enqueue("test-items", {"items": 1000, "pause_seconds": 0.05})
    runner = Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=0.6, poll_seconds=0.05, name="runner-a"))
    thread = threading.Thread(target=runner.run)
    thread.start()
    try:
        while job(queue, job_id).status == "queued" and thread.is_alive():
            thread.join(0.02)
        assert queue.cancel(job_id) == "cancel-requested"
    finally:
        thread.join(60)
    assert not thread.is_alive()
    stored = job(queue, job_id)
    assert (stored.status, stored.error) == ("cancelled", "cancelled while running")
    assert events(queue, job_id, "cancelled")[-1].message == "the running job stopped at a cancellation check"
    with transaction(queue.engine) as session:
        written = session.scalar(select(func.count()).select_from(rplat_test_plugins.item_output))
    assert written is not None and 0 < written < 1000
    # How far it got is recorded with its end, not only by the heartbeat before it (which may lag the handler).
    assert (stored.progress_done, stored.progress_total) == (written, 1000)


def test_expired_lease_after_a_cancel_request_is_cancelled_by_the_reaper(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    claim(queue)
    queue.cancel(job_id)
    expire_lease(queue, job_id)
    assert queue.claim("runner-b", None, LEASE) is None
    assert job(queue, job_id).status == "cancelled"


def test_retry_requeues_the_job_and_the_descendants_its_failure_cancelled(queue: Queue) -> None:
    parent, _ = queue.enqueue("test-fail", {}, max_attempts=1)
    child, _ = queue.enqueue("probe", {"tag": "child", "devices": False}, after=[parent])
    claimed = claim(queue)
    queue.fail(parent, claimed.lease_token, "boom", retryable=True)
    assert job(queue, child).status == "cancelled"
    assert sorted(queue.retry(parent)) == [parent, child]
    for job_id in (parent, child):
        stored = job(queue, job_id)
        assert (stored.status, stored.attempts, stored.error) == ("queued", 0, None)
    assert claim(queue).id == parent
    assert queue.claim("runner-b", None, LEASE) is None, "the child still waits for its parent"


def test_retry_of_a_queued_job_is_a_user_error(queue: Queue) -> None:
    job_id, _ = queue.enqueue("probe", PROBE)
    with pytest.raises(UserError, match="only failed or cancelled jobs can be retried"):
        queue.retry(job_id)
