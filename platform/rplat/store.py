"""Store connections: SQLite (WAL, BEGIN IMMEDIATE) and PostgreSQL engines, sessions, upserts."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from rplat.errors import UserError

SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(engine_or_session: Engine | Session) -> bool:
    bind = engine_or_session.get_bind() if isinstance(engine_or_session, Session) else engine_or_session
    return bind.dialect.name == "sqlite"


def _configure_sqlite(engine: Engine) -> None:
    """WAL, foreign keys, a busy timeout; and every transaction starts with BEGIN IMMEDIATE.

    pysqlite's own transaction handling begins lazily with a deferred BEGIN, which lets two writers
    both read and then fail to upgrade (SQLITE_BUSY without waiting). Taking the write lock at BEGIN
    makes each transaction wait its turn under the busy timeout instead. Read-only engines
    (`execution_options(rplat_readonly=True)`) begin deferred so they never block writers.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get("rplat_readonly", False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


@functools.cache
def _engine_for(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(
            f"RPLAT_DATABASE_URL {url!r} is not a database URL; use sqlite:///PATH or postgresql://HOST/DB."
        ) from None
    if parsed.get_backend_name() == "sqlite":
        # No directory and no file is made here: `check_reachable(engine, create=True)` (`rplat init`, migrations)
        # makes them; every other command refuses a store that is not there.
        engine = create_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    raise UserError(
        f"RPLAT_DATABASE_URL uses {parsed.get_backend_name()!r}; rplat supports sqlite and postgresql."
    )


def get_engine(url: str | None = None) -> Engine:
    if url is None:
        from rplat.config import get_settings

        url = get_settings().database_url
    return _engine_for(url)


def sqlite_file(engine: Engine) -> Path | None:
    """The file of a SQLite store (None: PostgreSQL, or SQLite in memory)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def check_reachable(engine: Engine, *, create: bool = False) -> None:
    """Fail with one sentence if the database cannot be reached.

    A SQLite store that does not exist is made (its directory, and the file on connecting) only with `create`
    (`rplat init`, migrations); without it the check refuses it and leaves no directory or file behind, so a
    read command pointed at the wrong RPLAT_HOME creates nothing."""
    path = sqlite_file(engine)
    if path is not None:
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_file():
            raise UserError(f"there is no store at {path.resolve()}; run `rplat init` to create one, or point "
                            "RPLAT_HOME (or RPLAT_DATABASE_URL) at an existing store.")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise UserError(
            f"cannot reach the database {engine.url.render_as_string(hide_password=True)} ({reason}); "
            "check RPLAT_DATABASE_URL and that the server is running."
        ) from None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One session, one transaction: commits on success, rolls back everything on error."""
    with session_factory(engine)() as session, session.begin():
        yield session


def _insert_for(session: Session) -> Any:
    return sqlite.insert if is_sqlite(session) else postgresql.insert


def insert_ignore(
    session: Session, model: type, rows: Sequence[Mapping[str, Any]], conflict_cols: Iterable[str]
) -> int:
    """INSERT ... ON CONFLICT (key) DO NOTHING: the idempotent write every job uses; returns rows inserted."""
    if not rows:
        return 0
    # A Core insert on the table: an ORM-entity insert with many rows is an ORM bulk insert, whose result has no
    # rowcount. psycopg reports -1 for executemany, hence the clamp (the count is exact on SQLite only).
    stmt = _insert_for(session)(model.__table__).on_conflict_do_nothing(index_elements=list(conflict_cols))
    result = session.execute(stmt, list(rows))
    return max(result.rowcount, 0)


def upsert(
    session: Session,
    model: type,
    rows: Sequence[Mapping[str, Any]],
    conflict_cols: Iterable[str],
    update_cols: Iterable[str],
) -> None:
    """INSERT ... ON CONFLICT (key) DO UPDATE SET the given columns to the new values."""
    if not rows:
        return
    stmt = _insert_for(session)(model)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(conflict_cols), set_={c: stmt.excluded[c] for c in update_cols}
    )
    session.execute(stmt, list(rows))


@contextlib.contextmanager
def scratch_postgres(admin_url: str, prefix: str = "rplat_scratch", template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database on the server of `admin_url` (tests, benchmarks), empty or a copy of the database
    named `template` (which nobody may be connected to); dropped on exit."""
    import uuid

    parsed = make_url(admin_url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            _engine_for(url).dispose()
            _engine_for.cache_clear()
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
