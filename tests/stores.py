"""The stores tests run against: `Store` (a migrated store's URL, home and CLI), made fresh per test or per module.

A store is a copy of one migrated once per session and backend (a file copy on SQLite, CREATE DATABASE ...
TEMPLATE on PostgreSQL). PostgreSQL comes from RPLAT_TEST_DATABASE_URL (an admin URL; each store is a new
database, dropped afterwards), defaulting to the local server; an unreachable server skips the PostgreSQL half
with the reason, except in CI (CI=true), where it is an error.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from rplat.models import Job

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_admin_url() -> str:
    return os.environ.get("RPLAT_TEST_DATABASE_URL", DEFAULT_PG)


def _pg_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})


@functools.cache  # asked once per session, not once per test: each ask is a connection of its own
def _pg_available() -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        engine = _pg_engine(_pg_admin_url())
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # the reason is shown in the skip message
        return str(exc).splitlines()[0]


@dataclass
class Store:
    """A migrated, empty store: its URL, RPLAT_HOME, and the environment a subprocess needs to use it."""

    backend: str
    url: str
    home: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RPLAT_DATABASE_URL=self.url, RPLAT_HOME=str(self.home), PYTHONPATH=str(TESTS),
                   RPLAT_PLUGINS="rplat_test_plugins", OMP_NUM_THREADS="1", RPLAT_RETRY_BASE_SECONDS="0.2")
        return env

    def set_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's RPLAT_* at the store (for in-process calls; undone after the test)."""
        for key, value in self.env.items():
            if key.startswith("RPLAT_"):
                monkeypatch.setenv(key, value)

    def engine(self) -> Engine:
        from rplat.store import get_engine

        return get_engine(self.url)

    def job(self, job_id: int) -> Job:
        """The job's row as it stands now, detached from its session."""
        from rplat.models import Job
        from rplat.store import transaction

        with transaction(self.engine()) as s:
            job = s.get(Job, job_id)
            assert job is not None, f"no job {job_id}"
            s.expunge(job)
        return job

    def succeeded(self, job_id: int) -> Job:
        """The job's row, which must say it succeeded (its error is the failure's message otherwise)."""
        job = self.job(job_id)
        assert job.status == "succeeded", job.error
        return job

    def rplat(self, *args: str, check: bool = False, timeout: float = 300, input: str | None = None
              ) -> subprocess.CompletedProcess[str]:
        """Run the real `rplat` CLI in a subprocess against this store."""
        proc = subprocess.run([sys.executable, "-m", "rplat.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, input=input, cwd=self.home)
        if check and proc.returncode != 0:
            raise AssertionError(f"rplat {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "rplat.cli", *args], env=self.env, cwd=self.home,
                                text=True, **kwargs)  # type: ignore[call-overload]


class MigratedTemplates:
    """One store per backend migrated to head once per session; each test's migrated store is a copy of it (a
    file copy on SQLite, CREATE DATABASE ... TEMPLATE on PostgreSQL) instead of a migration run of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.sqlite: Path | None = None
        self.postgres: str | None = None
        self._exit = contextlib.ExitStack()

    def sqlite_file(self) -> Path:
        from rplat.migrate import upgrade
        from rplat.store import get_engine

        if self.sqlite is None:
            path = self.directory / "migrated.db"
            engine = get_engine(f"sqlite:///{path}")
            upgrade(engine)
            engine.dispose()
            with contextlib.closing(sqlite3.connect(path)) as conn:  # everything into the file that gets copied
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.sqlite = path
        return self.sqlite

    def postgres_database(self) -> str:
        from rplat.migrate import upgrade
        from rplat.store import get_engine, scratch_postgres

        if self.postgres is None:
            url = self._exit.enter_context(scratch_postgres(_pg_admin_url(), "rplat_template"))
            engine = get_engine(url)
            upgrade(engine)
            engine.dispose()  # a template database must have no connections when it is copied
            self.postgres = make_url(url).database
        return self.postgres

    def close(self) -> None:
        self._exit.close()


def make_store(backend: str, tmp_path: Path, *, migrate: bool = True,
               templates: MigratedTemplates | None = None) -> Iterator[Store]:
    """Yield one new store on `backend` ("sqlite" or "postgresql") under `tmp_path`, migrated to head unless
    `migrate` is false (a copy of `templates`' when given); a PostgreSQL store's database is dropped after."""
    from rplat.migrate import upgrade
    from rplat.store import scratch_postgres

    home = tmp_path / "home"
    home.mkdir()
    if backend == "sqlite":
        store = Store("sqlite", f"sqlite:///{home / 'rplat.db'}", home)
        if migrate and templates is not None:
            shutil.copyfile(templates.sqlite_file(), home / "rplat.db")
        elif migrate:
            upgrade(store.engine())
        else:  # an unmigrated database: an empty SQLite file (no command but `rplat init` creates one)
            sqlite3.connect(home / "rplat.db").close()
        yield store
        store.engine().dispose()
        return
    reason = _pg_available()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {reason}")
        pytest.skip(f"PostgreSQL not reachable at {_pg_admin_url()} ({reason}); set RPLAT_TEST_DATABASE_URL")
    template = templates.postgres_database() if migrate and templates is not None else None
    with scratch_postgres(_pg_admin_url(), "rplat_t", template=template) as url:
        store = Store("postgresql", url, home)
        if migrate and template is None:
            upgrade(store.engine())
        yield store
