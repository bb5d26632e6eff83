"""`rplat init` and `rplat db`: create the store and migrate it."""

from __future__ import annotations

import sys

import click

from rplat.cli._common import open_store
from rplat.config import get_settings


@click.command()
def init() -> None:
    """Create RPLAT_HOME and the database, and migrate it to the current schema."""
    from rplat.migrate import upgrade

    settings = get_settings()
    engine = open_store(at_head=False, create=True)  # first: a store that cannot be made leaves no directories
    upgrade(engine)
    for d in (settings.home, settings.artifacts, settings.checkpoints):
        d.mkdir(parents=True, exist_ok=True)
    click.echo(f"rplat home {settings.home}; database {engine.url.render_as_string(hide_password=True)} at head")



# --- db -------------------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """Schema migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Migrate the database up to REVISION (default head)."""
    from rplat.migrate import current_revision, upgrade

    engine = open_store(at_head=False)
    upgrade(engine, revision)
    click.echo(f"database at {current_revision(engine)}")


@db.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION (`base` removes every table)."""
    from rplat.migrate import current_revision, downgrade

    engine = open_store(at_head=False)
    downgrade(engine, revision)
    click.echo(f"database at {current_revision(engine) or 'base'}")


@db.command("check")
def db_check() -> None:
    """Exit 0 if the database is at head and matches the models exactly; else say what differs (exit 1)."""
    from rplat.migrate import current_revision, drift, head_revision

    engine = open_store(at_head=False)
    current, head = current_revision(engine), head_revision()
    if current != head:
        click.echo(f"database at {current or 'base'}, head is {head}; run `rplat db upgrade`.", err=True)
        sys.exit(1)
    diff = drift(engine)
    if diff:
        click.echo(f"database at head but differs from the models: {diff}", err=True)
        sys.exit(1)
    click.echo(f"database at head {head}; no drift")
