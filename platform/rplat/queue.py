"""The job queue: every statement that enqueues, claims, leases, fences, finishes or cancels a job.

Claiming is one atomic statement: PostgreSQL `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)`;
SQLite the same UPDATE ... RETURNING inside `BEGIN IMMEDIATE` (see rplat.store). Each claim increments the
job's lease token; every later write by the claimant is fenced on that token, so a runner whose lease was
taken over cannot commit results, checkpoints or a final status. An expired lease is handled by the reaper
(`reap_expired`, run by claimers when idle and every few seconds): the job is queued again for any runner,
or failed on its last attempt, or cancelled if cancellation was asked for. Times come from the database
clock on PostgreSQL (runners on several machines) and from the local clock on SQLite (one machine).

Claim and complete run once per job on every runner; through SQLAlchemy's execution layer they cost about
twice the database work itself (bench/queue.py), so they are plain SQL on a DB-API connection from the
engine's pool (`_HotPath`): on PostgreSQL one autocommit statement each, on SQLite BEGIN IMMEDIATE, the
statement, COMMIT. Everything else goes through SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    DateTime,
    Engine,
    Integer,
    Update,
    bindparam,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from rplat import kinds, references, reviews
from rplat.errors import LeaseLost, UserError
from rplat.hashing import content_hash
from rplat.lookup import experiment_id as find_experiment
from rplat.models import Job, JobDependency, JobEvent, Runner, utcnow
from rplat.store import is_sqlite, transaction

REAP_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    params: dict[str, Any]
    lease_token: int
    attempts: int
    max_attempts: int
    experiment_id: int | None
    devices: tuple[str, ...] = ()  # the device ids the claim gave the job (its CUDA_VISIBLE_DEVICES)


@dataclass(frozen=True)
class Beat:
    """What a heartbeat learned: whether the lease is still ours and whether cancellation was asked for."""

    alive: bool
    cancel_requested: bool


def _db_now() -> ColumnElement[dt.datetime]:
    return func.timezone("UTC", func.statement_timestamp())


def _now(session: Session) -> ColumnElement[dt.datetime] | Any:
    if is_sqlite(session):
        return literal(utcnow())
    return _db_now()


def _later(session: Session, seconds: float) -> ColumnElement[dt.datetime] | Any:
    if is_sqlite(session):
        return literal(utcnow() + dt.timedelta(seconds=seconds))
    return _db_now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def record_event(session: Session, job_id: int, event: str, message: str | None = None, *, runner: str | None = None,
           attempt: int | None = None) -> None:
    session.execute(
        insert(JobEvent).values(job_id=job_id, event=event, message=message, runner=runner, attempt=attempt,
                                at=_now(session))
    )


@functools.cache
def _fence_statement(on_sqlite: bool) -> Update:
    now = bindparam("now", type_=DateTime()) if on_sqlite else _db_now()
    return (update(Job)
            .where(Job.id == bindparam("job_id", type_=Integer),
                   Job.lease_token == bindparam("token", type_=BigInteger), Job.status == "running")
            .values(heartbeat_at=now).returning(Job.id))


# The hot path's SQL, in psycopg's parameter style (turned into sqlite3's for SQLite). {now} and {expires} are
# the database clock on PostgreSQL and parameters from the local clock on SQLite. A job needing k GPUs is
# claimed only with k free devices (%(free)s) and gets the first k of them: {devices} picks element k of
# %(prefixes)s, the JSON list of the free devices' prefixes ([[], [d0], [d0, d1], ...]).
_CLAIM = """
UPDATE jobs SET status = 'running', lease_owner = %(runner)s, lease_token = lease_token + 1,
       attempts = attempts + 1, lease_expires_at = {expires}, heartbeat_at = {now},
       started_at = coalesce(started_at, {now}), devices = CASE WHEN gpus = 0 THEN NULL ELSE {devices} END
WHERE id = ({candidate})
RETURNING id, kind, params, lease_token, max_attempts, experiment_id, devices, attempts"""
_BEST_DUE = """
SELECT id FROM jobs WHERE status = 'queued' AND not_before <= {now}{kinds}{and_unblocked}
  AND (target_host IS NULL OR target_host = %(host)s) AND gpus <= %(free)s
ORDER BY priority DESC, id LIMIT 1{lock}"""


def _unblocked(job: str) -> str:
    """SQL: every parent of the job row `job` (a table name or alias) succeeded."""
    return (f"NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.depends_on_id "
            f"WHERE d.job_id = {job}.id AND p.status <> 'succeeded')")


_COMPLETE = """
UPDATE jobs SET status = 'succeeded', result = %(result)s, finished_at = {now}, error = NULL,
       lease_expires_at = NULL, progress_done = coalesce(%(done)s, progress_done),
       progress_total = coalesce(%(total)s, progress_total)
WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'
RETURNING id"""
# A job's row records its first claim (lease_owner, started_at) and how it succeeded (status, result,
# finished_at); every attempt that ends otherwise writes an event naming its runner (retry, failed, released,
# lease-expired, cancelled). So only a re-claim (lease token above 1) writes a 'claimed' event, and complete
# writes none: the history of a job that ran more than once is complete, and a job that ran once costs no
# event row on the hot path. (On PostgreSQL that event is a second autocommit statement: a runner dying
# between the two loses it, not the claim.)
_CLAIMED_EVENT = """
INSERT INTO job_events (job_id, at, event, runner, attempt)
VALUES (%(job_id)s, {now}, 'claimed', %(runner)s, %(attempt)s)"""
_PG_NOW = "timezone('UTC', statement_timestamp())"
_REUSE_SECONDS = 1.0


class _HotPath:
    """Claim and complete, as plain SQL on a DB-API connection from the engine's pool."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self.engine = engine
        self.sqlite = dialect.name == "sqlite"
        self._local = threading.local()
        json_type = Job.__table__.c.result.type.dialect_impl(dialect)
        self._json_in = json_type.bind_processor(dialect) or (lambda v: v)
        self._json_out = json_type.result_processor(dialect, None) or (lambda v: v)
        self._stamp = DateTime().dialect_impl(dialect).bind_processor(dialect) or (lambda v: v)
        if self.sqlite:
            times = {"now": "%(now)s", "expires": "%(expires)s"}
            lock = ""
            kinds = " AND kind IN (SELECT value FROM json_each(%(kinds)s))"
            devices = "json_extract(%(prefixes)s, '$[' || gpus || ']')"
        else:
            times = {"now": _PG_NOW, "expires": f"{_PG_NOW} + make_interval(secs => %(lease_seconds)s)"}
            lock = " FOR UPDATE SKIP LOCKED"
            kinds = " AND kind = ANY(%(kinds)s)"
            devices = "(%(prefixes)s::json -> gpus)"

        def claim(kinds: str) -> str:
            # Both databases filter before they sort, so a claim that checks dependencies in its WHERE checks the
            # parents of every queued job. The head of the queue is tried first (its parents checked alone); the
            # full search runs only when the head is blocked (COALESCE evaluates its second subquery lazily).
            head = _BEST_DUE.format(kinds=kinds, and_unblocked="", lock=lock, **times)
            best = _BEST_DUE.format(kinds=kinds, and_unblocked=f" AND {_unblocked('jobs')}", lock=lock, **times)
            candidate = f"coalesce((SELECT id FROM ({head}) AS head WHERE {_unblocked('head')}), ({best}))"
            return self._driver_style(_CLAIM.format(candidate=candidate, devices=devices, **times))

        self._claim = claim("")
        self._claim_kinds = claim(kinds)
        self._complete = self._driver_style(_COMPLETE.format(**times))
        self._claimed_event = self._driver_style(_CLAIMED_EVENT.format(now=times["now"]))

    def _driver_style(self, sql: str) -> str:
        """The SQL above is in psycopg's parameter style; sqlite3 wants :name."""
        return re.sub(r"%\((\w+)\)s", r":\1", sql) if self.sqlite else sql

    def claim(self, owner: str, kinds_: list[str] | None, lease_seconds: float, host: str, free: Sequence[str]
              ) -> ClaimedJob | None:
        prefixes = json.dumps([list(free[:k]) for k in range(len(free) + 1)])
        params: dict[str, Any] = {"runner": owner, "host": host, "free": len(free), "prefixes": prefixes}
        if kinds_ is not None:
            params["kinds"] = json.dumps(kinds_) if self.sqlite else kinds_
        if self.sqlite:
            now = utcnow()
            params.update(now=self._stamp(now), expires=self._stamp(now + dt.timedelta(seconds=lease_seconds)))
        else:
            params["lease_seconds"] = lease_seconds
        with self._connection() as conn:
            row = self._change(conn, self._claim if kinds_ is None else self._claim_kinds, params, claim=True)
        if row is None:
            return None
        job_id, kind, job_params, token, max_attempts, experiment_id, devices, attempts = row
        return ClaimedJob(job_id, kind, self._json_out(job_params) or {}, token, attempts, max_attempts,
                          experiment_id, tuple(self._json_out(devices) or ()))

    def complete(self, job_id: int, token: int, result: dict[str, Any] | None, progress: tuple[int, int | None] | None
                 ) -> bool:
        done, total = progress if progress is not None else (None, None)
        params = {"job_id": job_id, "token": token, "result": self._json_in(result), "done": done, "total": total}
        if self.sqlite:
            params["now"] = self._stamp(utcnow())
        with self._connection() as conn:
            return self._change(conn, self._complete, params, claim=False) is not None

    def _change(self, conn: Any, change: str, params: dict[str, Any], *, claim: bool) -> tuple[Any, ...] | None:
        """Run one change to a job (SQLite: in a transaction), and the claimed event if it is a re-claim; the
        changed row or None."""
        if self.sqlite:
            conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(change, params).fetchone()
            if claim and row is not None and row[3] > 1:  # the lease token: a re-claim
                event = {"job_id": row[0], "runner": params["runner"], "attempt": row[-1]}
                if self.sqlite:
                    event["now"] = params["now"]
                conn.execute(self._claimed_event, event)
            if self.sqlite:
                conn.execute("COMMIT")
        except BaseException:
            if self.sqlite:
                conn.execute("ROLLBACK")
            raise
        return row

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """This thread's DB-API connection (in autocommit on PostgreSQL: each hot statement is a transaction).

        A busy runner calls in quick succession, so the connection is kept between calls: no pool checkout and
        no pre-ping round trip each time. Idle for a second, or after any error, it goes back to the pool and
        the next call checks one out (pinged) afresh. Autocommit is switched off again after every call, so a
        kept connection that returns to the pool with its thread's end is an ordinary one."""
        held: tuple[Any, float] | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and time.monotonic() - held[1] > _REUSE_SECONDS:
            held[0].close()
            held = None
        raw = held[0] if held is not None else self.engine.raw_connection()
        conn = raw.driver_connection
        try:
            if not self.sqlite:
                conn.autocommit = True
            try:
                yield conn
            finally:
                if not self.sqlite and not conn.closed:
                    conn.autocommit = False
        except BaseException:
            raw.invalidate()
            raise
        self._local.held = (raw, time.monotonic())


class JobOptions(TypedDict, total=False):
    """How a job is queued beside its kind and params: the keyword arguments of `Queue.enqueue`, `enqueue_many` and
    `enqueue_in`, each optional (its default in brackets)."""

    experiment: str | None  # the experiment's name [none]
    priority: int  # higher is claimed first [0]
    max_attempts: int  # claims before the job fails for good [3]
    after: Sequence[int]  # jobs that must succeed before this one runs [none]
    dedupe_key: str | None  # jobs with the same key are one job [from kind, params, experiment, after, host, gpus]
    dedupe: bool  # False: always a new job, even if an identical one exists [True]
    model_id: int | None  # the model the job runs [the one its params name]
    host: str | None  # only a runner on this machine (its host name, or its `--host`) claims the job [any]
    gpus: int | None  # only a runner with this many free devices claims the job [the kind's]


@dataclass(frozen=True)
class _Placement:
    """What a job's options name, looked up in the enqueue transaction: the experiment's id and each parent's
    status (by id, ascending)."""

    experiment_id: int | None
    parents: dict[int, str]


def _check(options: JobOptions) -> None:
    max_attempts = options.get("max_attempts", 3)
    if max_attempts < 1:
        raise UserError(f"max_attempts must be at least 1, got {max_attempts}.")


@contextlib.contextmanager
def _named(label: str) -> Iterator[None]:
    """A mistake in one of many jobs, prefixed with which one: "jobs.jsonl line 3: ..."."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{label}: {exc}") from None


def default_dedupe_key(kind: str, params: dict[str, Any], experiment_id: int | None, after: Sequence[int],
                       host: str | None = None, gpus: int = 0, reviews: int = 0) -> str:
    """The same logical job (kind, params, experiment, parents, pinned host, GPUs needed, and for a kind that reads
    reviewed values the latest review) always gets the same key; a part left at its default is left out, so keys
    made before that part existed stay the same."""
    parts: list[Any] = [kind, params, experiment_id, sorted(after)]
    if host is not None:
        parts.append(host)
    if gpus:
        parts.append({"gpus": gpus})
    if reviews:
        parts.append({"reviews": reviews})
    return content_hash(*parts)


def gpus_needed(kind: str, gpus: int | None) -> int:
    """The GPUs a job needs: `gpus` if given (checked), else its kind's default."""
    if gpus is None:
        return kinds.get(kind).gpus
    if gpus < 0:
        raise UserError(f"a job needs 0 or more GPUs, not {gpus}; pass e.g. --gpus 1 (or leave it to the kind).")
    return gpus


class Queue:
    def __init__(self, engine: Engine, *, retry_base_seconds: float = 5.0, retry_max_seconds: float = 600.0) -> None:
        self.engine = engine
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self._hot = _HotPath(engine)
        self._next_reap = 0.0

    # --- enqueue -----------------------------------------------------------------------------------

    def enqueue(self, kind: str, params: dict[str, Any] | None = None, **options: Unpack[JobOptions]
                ) -> tuple[int, bool]:
        """Validate and enqueue one job; returns (job id, created). An identical job already enqueued is returned."""
        validated = kinds.validate_params(kind, params or {})
        _check(options)
        with transaction(self.engine) as session:
            return self.enqueue_in(session, kind, validated, **options)

    def enqueue_many(self, kind: str, jobs: Iterable[tuple[str, dict[str, Any]]], **options: Unpack[JobOptions]
                     ) -> list[tuple[int, bool]]:
        """Enqueue many jobs of one kind with the same options, all or none: `jobs` pairs each job's params with how a
        mistake in them is named ("jobs.jsonl line 3"). Every job's params are validated before anything is
        written, then all are enqueued in one transaction, each de-duplicated as `enqueue` would; returns
        (job id, created) per job, in order."""
        kinds.get(kind)  # an unknown kind or a bad option is one mistake, not one per job
        _check(options)
        validated: list[tuple[str, dict[str, Any]]] = []
        for label, params in jobs:
            with _named(label):
                validated.append((label, kinds.validate_params(kind, params)))
        with transaction(self.engine) as session:
            placed = self._place(session, options)
            enqueued = []
            for label, params in validated:
                with _named(label):
                    enqueued.append(self._insert(session, kind, params, placed, options))
            return enqueued

    def enqueue_in(self, session: Session, kind: str, validated: dict[str, Any], **options: Unpack[JobOptions]
                   ) -> tuple[int, bool]:
        """Enqueue inside the caller's transaction (pipelines enqueue a whole DAG in one)."""
        return self._insert(session, kind, validated, self._place(session, options), options)

    @staticmethod
    def _place(session: Session, options: JobOptions) -> _Placement:
        """Look up the experiment and the parents the options name (a missing one is a UserError)."""
        experiment = options.get("experiment")
        experiment_id = find_experiment(session, experiment) if experiment is not None else None
        parents = sorted(set(options.get("after", ())))
        if not parents:
            return _Placement(experiment_id, {})
        # FOR SHARE (PostgreSQL): a parent cannot fail between this read and our commit, unseen by both sides.
        found = dict(session.execute(
            select(Job.id, Job.status).where(Job.id.in_(parents)).with_for_update(read=True)).all())
        missing = [p for p in parents if p not in found]
        if missing:
            raise UserError(f"--after names job {missing[0]}, which does not exist; see `rplat jobs ls`.")
        return _Placement(experiment_id, {p: found[p] for p in parents})

    def _insert(self, session: Session, kind: str, validated: dict[str, Any], placed: _Placement,
                options: JobOptions) -> tuple[int, bool]:
        """Check the params' references and insert the job, or find the identical one (dedupe)."""
        experiment_id, parents = placed.experiment_id, list(placed.parents)
        lineage = references.check(session, kind, validated, parents)
        gpus = gpus_needed(kind, options.get("gpus"))
        host = options.get("host")
        dedupe = options.get("dedupe", True)
        dedupe_key = options.get("dedupe_key")
        if dedupe and dedupe_key is None:
            latest = reviews.latest_id(session) if kinds.get(kind).reads_reviews else 0
            dedupe_key = default_dedupe_key(kind, validated, experiment_id, parents, host, gpus, latest)
        model_id = options.get("model_id")
        values = dict(
            kind=kind, params=validated, experiment_id=experiment_id, priority=options.get("priority", 0),
            max_attempts=options.get("max_attempts", 3), gpus=gpus,
            dedupe_key=dedupe_key if dedupe else None, model_id=model_id if model_id is not None else lineage.model_id,
            prompt_template_id=lineage.prompt_template_id, target_host=host, status="queued", attempts=0,
            lease_token=0, cancel_requested=False, progress_done=0,
            created_at=_now(session), not_before=_now(session),
        )
        dialect_insert = sqlite.insert if is_sqlite(session) else postgresql.insert
        stmt = dialect_insert(Job).values(**values)
        if dedupe:
            stmt = stmt.on_conflict_do_nothing(index_elements=[Job.dedupe_key])
        job_id = session.scalar(stmt.returning(Job.id))
        if job_id is None:
            existing = session.scalar(select(Job.id).where(Job.dedupe_key == dedupe_key))
            assert existing is not None
            return existing, False
        if parents:
            session.execute(insert(JobDependency), [{"job_id": job_id, "depends_on_id": p} for p in parents])
        record_event(session, job_id, "enqueued")
        dead = [p for p, status in placed.parents.items() if status in ("failed", "cancelled")]
        if dead:
            reason = f"parent job {dead[0]} {placed.parents[dead[0]]}"
            session.execute(update(Job).where(Job.id == job_id).values(
                status="cancelled", error=reason, finished_at=_now(session)))
            record_event(session, job_id, "cancelled", reason)
        return job_id, True

    @staticmethod
    def record_done(session: Session, kind: str, params: dict[str, Any], result: dict[str, Any], *, items: int = 0
                    ) -> int:
        """Record a job its caller did itself (an import), in the caller's transaction so that the job and the rows
        carrying its id commit together or not at all: succeeded on its one attempt, `items` its progress."""
        now = _now(session)
        return session.scalar(insert(Job).values(
            kind=kind, params=params, result=result, status="succeeded", attempts=1, max_attempts=1, lease_token=0,
            cancel_requested=False, priority=0, created_at=now, not_before=now, started_at=now, finished_at=now,
            progress_done=items, progress_total=items).returning(Job.id))

    @staticmethod
    def finish_recorded(session: Session, job_id: int, *, params: dict[str, Any], result: dict[str, Any],
                        items: int) -> None:
        """Complete a job `record_done` wrote earlier in the same transaction, once its caller knows the outcome
        (a streamed import learns its input's sha256 and counts only at the end): params, result, progress."""
        session.execute(update(Job).where(Job.id == job_id).values(
            params=params, result=result, progress_done=items, progress_total=items, finished_at=_now(session)))

    def resolve_model(self, job: ClaimedJob) -> None:
        """Record the model a running job runs once it is registered (by a parent job, or a bundled model on first
        use); fenced on the lease, and nothing to do if it is known already or not registered yet."""
        if not references.has_primary(job.kind):
            return
        with transaction(self.engine) as session:
            if session.scalar(select(Job.model_id).where(Job.id == job.id)) is not None:
                return
            model_id = references.model_of(session, job.kind, job.params)
            if model_id is not None:
                session.execute(update(Job).where(Job.id == job.id, Job.lease_token == job.lease_token,
                                                  Job.model_id.is_(None)).values(model_id=model_id))

    # --- claim, lease, fence -----------------------------------------------------------------------

    def claim(self, owner: str, kinds_: Iterable[str] | None, lease_seconds: float, host: str | None = None,
              free: Sequence[str] = ()) -> ClaimedJob | None:
        """Atomically take the best claimable job: queued, due, its parents succeeded, not pinned to another
        host than `host` (default: this machine's name), needing no more GPUs than the `free` device ids (it
        gets the first ones it needs, recorded in `jobs.devices`); highest priority, then oldest."""
        host = host or socket.gethostname()
        reaped_now = time.monotonic() >= self._next_reap
        if reaped_now:
            self.reap_expired()
        job = self._take(owner, kinds_, lease_seconds, host, free)
        if job is None and not reaped_now and self.reap_expired():
            job = self._take(owner, kinds_, lease_seconds, host, free)
        return job

    def outstanding(self, kinds_: Iterable[str] | None, host: str | None = None, gpus: int = 0) -> int:
        """Jobs of these kinds that a runner on `host` with `gpus` devices could still get: queued (due or in
        retry backoff, ready or waiting for parents) or running (a running job may be released or re-claimed)."""
        host = host or socket.gethostname()
        query = select(func.count()).select_from(Job).where(
            Job.status.in_(("queued", "running")), or_(Job.target_host.is_(None), Job.target_host == host),
            Job.gpus <= gpus)
        if kinds_ is not None:
            query = query.where(Job.kind.in_(list(kinds_)))
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _take(self, owner: str, kinds_: Iterable[str] | None, lease_seconds: float, host: str,
              free: Sequence[str]) -> ClaimedJob | None:
        return self._hot.claim(owner, list(kinds_) if kinds_ is not None else None, lease_seconds, host, free)

    def reap_expired(self) -> int:
        """Settle expired leases (the runner died or hung): queued again while attempts remain, else failed;
        cancelled if cancellation was asked for. Returns how many were queued again."""
        self._next_reap = time.monotonic() + REAP_EVERY_SECONDS
        with transaction(self.engine) as session:
            now = _now(session)
            expired = select(Job.id).where(Job.status == "running", Job.lease_expires_at < now)
            if not is_sqlite(session):
                expired = expired.with_for_update(skip_locked=True)
            cancel = Job.cancel_requested.is_(True)
            last = Job.attempts >= Job.max_attempts
            rows = session.execute(
                update(Job).where(Job.id.in_(expired))
                .values(status=case((cancel, "cancelled"), (last, "failed"), else_="queued"),
                        error=case((cancel, func.coalesce(Job.error, "cancelled while running")),
                                   (last, "its lease expired on the last attempt (the runner died or hung)"),
                                   else_=Job.error),
                        finished_at=case((or_(cancel, last), now), else_=Job.finished_at),
                        lease_expires_at=None, not_before=now)
                .returning(Job.id, Job.status, Job.lease_owner, Job.attempts)
                .execution_options(synchronize_session=False)
            ).all()
            for row in rows:
                if row.status == "queued":
                    record_event(session, row.id, "lease-expired",
                                 f"the lease of {row.lease_owner} expired on attempt {row.attempts}; queued again",
                                 runner=row.lease_owner, attempt=row.attempts)
                    continue
                why = "cancellation was requested" if row.status == "cancelled" else "it was the last attempt"
                record_event(session, row.id, row.status, f"the lease expired and {why}", runner=row.lease_owner,
                             attempt=row.attempts)
                self._cancel_descendants(session, row.id, f"parent job {row.id} {row.status}")
        return sum(row.status == "queued" for row in rows)

    def heartbeat(self, job_id: int, token: int, lease_seconds: float, progress: tuple[int, int | None] | None = None
                  ) -> Beat:
        """Extend the lease (and record progress) if it is still ours."""
        with transaction(self.engine) as session:
            values: dict[str, Any] = dict(lease_expires_at=_later(session, lease_seconds), heartbeat_at=_now(session))
            if progress is not None:
                values.update(progress_done=progress[0], progress_total=progress[1])
            row = session.execute(
                update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == "running")
                .values(**values).returning(Job.cancel_requested)
            ).one_or_none()
        if row is None:
            return Beat(alive=False, cancel_requested=False)
        return Beat(alive=True, cancel_requested=bool(row.cancel_requested))

    def fence(self, session: Session, job_id: int, token: int) -> None:
        """First statement of every write a job makes: proves (and locks) the lease, or raises LeaseLost."""
        params: dict[str, Any] = {"job_id": job_id, "token": token}
        if self._hot.sqlite:
            params["now"] = utcnow()
        got = session.connection().execute(_fence_statement(self._hot.sqlite), params).one_or_none()
        if got is None:
            raise LeaseLost(f"job {job_id}: lease token {token} is no longer current")

    # --- finishing ---------------------------------------------------------------------------------

    def _finish(self, session: Session, job_id: int, token: int, **values: Any) -> None:
        done = session.execute(
            update(Job).where(Job.id == job_id, Job.lease_token == token, Job.status == "running")
            .values(lease_expires_at=None, **values).returning(Job.id)
        ).one_or_none()
        if done is None:
            raise LeaseLost(f"job {job_id}: lease token {token} is no longer current")

    def complete(self, job_id: int, token: int, result: dict[str, Any] | None,
                 progress: tuple[int, int | None] | None = None) -> None:
        """Record success (fenced on the lease token, else LeaseLost)."""
        if not self._hot.complete(job_id, token, result, progress):
            raise LeaseLost(f"job {job_id}: lease token {token} is no longer current")

    def fail(self, job_id: int, token: int, error: str, *, retryable: bool, runner: str | None = None) -> str:
        """Record a failure: back to the queue with exponential backoff, or failed for good (cancelling descendants)."""
        with transaction(self.engine) as session:
            attempts, max_attempts = session.execute(
                select(Job.attempts, Job.max_attempts).where(Job.id == job_id)
            ).one()
            if retryable and attempts < max_attempts:
                delay = min(self.retry_base_seconds * 2 ** (attempts - 1), self.retry_max_seconds)
                self._finish(session, job_id, token, status="queued", error=error, not_before=_later(session, delay))
                record_event(session, job_id, "retry", f"attempt {attempts} failed, retrying in {delay:.0f}s: {error}",
                       runner=runner, attempt=attempts)
                return "queued"
            self._finish(session, job_id, token, status="failed", error=error, finished_at=_now(session))
            record_event(session, job_id, "failed", error, runner=runner, attempt=attempts)
            self._cancel_descendants(session, job_id, f"parent job {job_id} failed")
            return "failed"

    def release(self, job_id: int, token: int, *, runner: str | None = None) -> None:
        """Give the job back (runner shutting down): queued again at once, and the attempt does not count."""
        with transaction(self.engine) as session:
            self._finish(session, job_id, token, status="queued", attempts=Job.attempts - 1, not_before=_now(session))
            record_event(session, job_id, "released", "runner shut down; the job resumes from its checkpoint",
                   runner=runner)

    def finish_cancelled(self, job_id: int, token: int, *, runner: str | None = None,
                         progress: tuple[int, int | None] | None = None) -> None:
        """Record that the running job stopped at a cancellation check, with how far it got (`progress`: the
        handler's last, which a heartbeat may not have carried yet; a total it never gave keeps the stored one)."""
        values: dict[str, Any] = {}
        if progress is not None:
            values["progress_done"] = progress[0]
            if progress[1] is not None:
                values["progress_total"] = progress[1]
        with transaction(self.engine) as session:
            self._finish(session, job_id, token, status="cancelled", finished_at=_now(session),
                         error="cancelled while running", **values)
            record_event(session, job_id, "cancelled", "the running job stopped at a cancellation check", runner=runner)
            self._cancel_descendants(session, job_id, f"parent job {job_id} cancelled")

    # --- operator actions --------------------------------------------------------------------------

    def cancel(self, job_id: int) -> str:
        """Cancel a queued job now; ask a running one to stop (its runner sees it within one heartbeat)."""
        with transaction(self.engine) as session:
            # Row-locked (PostgreSQL), so a runner cannot claim the job between this read and the update below.
            status = session.scalar(select(Job.status).where(Job.id == job_id).with_for_update())
            if status is None:
                raise UserError(f"job {job_id} does not exist; see `rplat jobs ls`.")
            if status == "queued":
                session.execute(update(Job).where(Job.id == job_id).values(
                    status="cancelled", finished_at=_now(session), error="cancelled by the user"))
                record_event(session, job_id, "cancelled", "cancelled by the user")
                self._cancel_descendants(session, job_id, f"parent job {job_id} cancelled")
                return "cancelled"
            if status == "running":
                session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
                record_event(session, job_id, "cancel-requested", "cancellation requested by the user")
                return "cancel-requested"
            raise UserError(f"job {job_id} is already {status}; only queued or running jobs can be cancelled.")

    def retry(self, job_id: int) -> list[int]:
        """Queue a failed or cancelled job again, with the descendants its end had cancelled; returns their ids."""
        with transaction(self.engine) as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            if status is None:
                raise UserError(f"job {job_id} does not exist; see `rplat jobs ls`.")
            if status not in ("failed", "cancelled"):
                raise UserError(f"job {job_id} is {status}; only failed or cancelled jobs can be retried.")
            ids = [job_id, *self._descendants(session, job_id, status="cancelled")]
            session.execute(update(Job).where(Job.id.in_(ids)).values(
                status="queued", attempts=0, error=None, finished_at=None, cancel_requested=False,
                not_before=_now(session), lease_expires_at=None))
            for i in ids:
                record_event(session, i, "requeued", f"retry of job {job_id} requested by the user")
            return ids

    @staticmethod
    def _descendants(session: Session, job_id: int, *, status: str) -> list[int]:
        found: list[int] = []
        frontier = [job_id]
        while frontier:
            children = session.scalars(
                select(Job.id).join(JobDependency, JobDependency.job_id == Job.id)
                .where(JobDependency.depends_on_id.in_(frontier), Job.status == status)
            ).all()
            frontier = [c for c in children if c not in found]
            found.extend(frontier)
        return found

    def _cancel_descendants(self, session: Session, job_id: int, reason: str) -> None:
        ids = self._descendants(session, job_id, status="queued")
        if not ids:
            return
        session.execute(update(Job).where(Job.id.in_(ids)).values(
            status="cancelled", error=reason, finished_at=_now(session)))
        for i in ids:
            record_event(session, i, "cancelled", reason)

    # --- runners -----------------------------------------------------------------------------------

    def register_runner(self, name: str, host: str, pid: int, kinds_: list[str] | None, gpus: Sequence[str] = (),
                        slots: int = 1, slurm_job: str | None = None) -> None:
        with transaction(self.engine) as session:
            session.execute(insert(Runner).values(name=name, host=host, pid=pid, kinds=kinds_, gpus=list(gpus),
                                                  slots=slots, slurm_job=slurm_job, started_at=_now(session),
                                                  heartbeat_at=_now(session)))

    def runner_beat(self, name: str, current_job_id: int | None, jobs_done: int, *, stopped: bool = False) -> None:
        with transaction(self.engine) as session:
            values: dict[str, Any] = dict(heartbeat_at=_now(session), current_job_id=current_job_id,
                                          jobs_done=jobs_done)
            if stopped:
                values["stopped_at"] = _now(session)
            session.execute(update(Runner).where(Runner.name == name).values(**values))
