"""Alembic environment: migrates the configured database (or RPLAT_DATABASE_URL) to the models."""

from __future__ import annotations

from pathlib import Path

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from rplat.config import get_settings
from rplat.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def _driver_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# Indexes whose column order Alembic cannot reflect on every database (SQLite reports `priority DESC` as a
# plain column), so a comparison would always report them as changed; their migrations create them.
_NOT_COMPARED = {("index", "ix_jobs_claim")}


def _include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    return (type_, name) not in _NOT_COMPARED


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
        include_object=_include_object,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=_driver_url(_url()), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    # A plain engine: batch migrations on SQLite recreate tables, which foreign-key enforcement forbids.
    url = make_url(_driver_url(_url()))
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # a fresh RPLAT_HOME, as `rplat init` makes
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        _configure(connection=conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
