"""The `rplat` command line: one module per command group, all thin over the library."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

import click
from sqlalchemy.exc import DBAPIError, OperationalError

from rplat.cli import analysis, asc, data, db, export, jobs, models, pipelines, serve  # noqa: F401 (each registers its commands)
from rplat.cli._common import cli
from rplat.errors import UserError

__all__ = ["cli", "main"]


def _one_sentence(message: str) -> str:
    """Click's message as one lower-case clause: "No such option '--x'. Did you mean '--y'?" -> one line."""
    text = " ".join(message.split()).rstrip(".")
    text = re.sub(r"\.? Did you mean (.+)\?$", r" (did you mean \1?)", text)
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _first_line(exc: DBAPIError) -> str:
    return (str(exc.orig) if exc.orig else str(exc)).strip().splitlines()[0].rstrip(".")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; every mistake a user can make ends as one `error:` sentence on stderr and exit code 2."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="rplat", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(2)
    except click.ClickException as exc:
        command = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "rplat"
        click.echo(f"error: {_one_sentence(exc.format_message())}; see `{command} --help`.", err=True)
        sys.exit(2)
    except OperationalError as exc:
        click.echo(f"error: the database refused the operation ({_first_line(exc)}); check RPLAT_DATABASE_URL.",
                   err=True)
        sys.exit(2)
    except DBAPIError as exc:
        click.echo(f"error: the database rejected the change ({_first_line(exc)}); nothing was written.", err=True)
        sys.exit(2)
    except OSError as exc:
        what = f"cannot use {exc.filename} ({exc.strerror})" if exc.filename else f"operating system error ({exc})"
        click.echo(f"error: {what}; check the path and its permissions.", err=True)
        sys.exit(2)
