"""The `rplat` command line: the table of its commands, loaded lazily, and the entry point that words every error.

Each command lives in one module of this package and is imported only when it runs or shows its own help, so a
command pays for the libraries it uses and no other's (`rplat jobs ls` never imports DuckDB, `rplat sql` never
torch). `rplat --help` imports none: it lists the commands from COMMANDS.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, NoReturn

import click

from rplat.errors import UserError

__all__ = ["COMMANDS", "cli", "main"]


class Lazy(NamedTuple):
    """Where a command is defined ("module:attribute") and its help line: the first sentence of its docstring."""

    target: str
    help: str


COMMANDS: dict[str, Lazy] = {
    "chains": Lazy("rplat.cli.chains:chains", "Operations on stored teacher chains: relabel a chain set with the "
                   "other labeler."),
    "dashboard": Lazy("rplat.cli.analysis:dashboard", "Browse rationales, failures, solved sets and jobs in a "
                      "read-only Streamlit app (runs until Ctrl-C)."),
    "db": Lazy("rplat.cli.db:db", "Schema migrations (Alembic)."),
    "enqueue": Lazy("rplat.cli.enqueue:enqueue", "Queue a job of KIND, or one per line of a JSONL file."),
    "experiments": Lazy("rplat.cli.jobs:experiments", "Named experiments that group jobs."),
    "explain": Lazy("rplat.cli.analysis:explain", "Where row ID of TABLE came from: its job (params, parents), "
                    "models, prompt template and inputs."),
    "export": Lazy("rplat.cli.export:export", "Write the rows of VIEW (rationales, chains, samples, predictions, "
                   "problems, ...) to a file, each with the job that made it: its kind, model, prompt template and "
                   "params as JSON."),
    "generate": Lazy("rplat.cli.data:generate", "Write benchmark files from offline generators (then `rplat import "
                     "problems`)."),
    "import": Lazy("rplat.cli.data:import_", "Import documents or problems (JSONL, .gz, .zst, Parquet, shards, stdin, "
                   "Hugging Face; streamed) or teacher chains."),
    "init": Lazy("rplat.cli.db:init", "Create RPLAT_HOME and the database, and migrate it to the current schema."),
    "jobs": Lazy("rplat.cli.jobs:jobs", "List, inspect, cancel and retry jobs."),
    "kinds": Lazy("rplat.cli.jobs:kinds_cmd", "List job kinds and their parameters."),
    "models": Lazy("rplat.cli.models:models", "The model and adapter registry."),
    "pipeline": Lazy("rplat.cli.pipelines:pipeline", "Enqueue a method's whole DAG of jobs at once."),
    "report": Lazy("rplat.cli.analysis:report", "Human-readable summaries of finished jobs."),
    "review": Lazy("rplat.cli.review:review", "Correct a chain's label, a rationale's keep decision or a problem's "
                   "gold answer; every later job reads it."),
    "runner": Lazy("rplat.cli.jobs:runner", "Claim and run jobs until stopped (SIGTERM releases the running jobs "
                   "for other runners)."),
    "serve": Lazy("rplat.cli.serve:serve", "vLLM servers for registered models: `rplat serve MODEL` starts one, "
                  "`stop` ends it, `ls` lists them."),
    "slice": Lazy("rplat.cli.slices:slice_", "Named slices of the predictions: save a filter with its metric "
                  "(`add`), list them (`ls`), measure one on every run (`show`)."),
    "slurm": Lazy("rplat.cli.slurm:slurm", "Runners as Slurm job arrays: submit them (`submit`), or keep them matched "
                  "to the queue (`scale`)."),
    "sql": Lazy("rplat.cli.analysis:sql", "Run one read-only QUERY over the analytics views (DuckDB) and print the "
                "rows."),
    "status": Lazy("rplat.cli.jobs:status", "Queue depth per kind and status, live runners with their devices and "
                   "the jobs on them, running jobs."),
}


class LazyGroup(click.Group):
    """A click group whose commands, all declared in `lazy`, are imported by name when one is invoked (click's
    documented LazyGroup pattern); its help lists them from their declared help lines instead of importing them."""

    def __init__(self, *args: Any, lazy: Mapping[str, Lazy], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.lazy)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return None
        module, _, attribute = self.lazy[cmd_name].target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), f"{self.lazy[cmd_name].target} is not a click command"
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:  # click suggests close names from `self.commands`: none here
            raise click.exceptions.NoSuchCommand(exc.command_name, possibilities=self.lazy, ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # What click.Group.format_commands writes, from the help lines: the same shortening, no import.
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, click.Command(name, help=self.lazy[name].help).get_short_help_str(limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rplat")
def cli() -> None:
    """rplat: run RATIONALYST and Turning-Dust-into-Gold experiments on a database-backed job queue.

    The store is RPLAT_DATABASE_URL (default: a SQLite file under RPLAT_HOME, default ./.rplat).
    """


def _one_sentence(message: str) -> str:
    """Click's message as one lower-case clause: "No such option '--x'. Did you mean '--y'?" -> one line."""
    text = " ".join(message.split()).rstrip(".")
    text = re.sub(r"\.? Did you mean (.+)\?$", r" (did you mean \1?)", text)
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


def _database_error(exc: Exception) -> str | None:
    """The sentence for a database error SQLAlchemy raised, or None if `exc` is not one."""
    # Looked up, not imported: a command that never opened the store never imported SQLAlchemy, and then `exc`
    # cannot be one of its errors (importing it here would cost every command SQLAlchemy's start-up).
    errors = sys.modules.get("sqlalchemy.exc")
    if errors is None or not isinstance(exc, errors.DBAPIError):
        return None
    first = (str(exc.orig) if exc.orig else str(exc)).strip().splitlines()[0].rstrip(".")
    if isinstance(exc, errors.OperationalError):
        return f"the database refused the operation ({first}); check RPLAT_DATABASE_URL."
    return f"the database rejected the change ({first}); nothing was written."


def _has_surrogate(text: str) -> bool:
    """Whether `text` holds a lone surrogate: how Python keeps the bytes of an argument or environment value that
    are not UTF-8 (surrogateescape); such a string cannot be written to the store, a file or a terminal."""
    return any("\ud800" <= c <= "\udfff" for c in text)


def _raw(text: str) -> str:
    """The bytes the user gave, shown with the ones that are not UTF-8 escaped (`b'a\\xffb'`)."""
    first = next(i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff")
    start, stop = max(0, first - 24), first + 24  # a long value: the part around its first byte that is not UTF-8
    raw = repr(text[start:stop].encode("utf-8", "surrogateescape"))
    return ("…" if start else "") + raw + ("…" if stop < len(text) else "")


def _not_utf8(args: Sequence[str]) -> str | None:
    """The sentence for the first argument, or RPLAT_* environment variable, that is not UTF-8 text; else None."""
    import os

    for position, arg in enumerate(args, start=1):
        if not _has_surrogate(arg):
            continue
        option, eq, _ = arg.partition("=")
        before = args[position - 2] if position > 1 else ""
        if arg.startswith("--") and eq:
            where = f"the value of {option}, "
        elif before.startswith("-") and not _has_surrogate(before) and "=" not in before:
            where = f"after {before}, "  # its value, or an argument after a flag
        else:
            where = ""
        return (f"argument {position} ({where}{_raw(arg)}) is not UTF-8 text; pass it as UTF-8 (e.g. convert it "
                "with `iconv -t UTF-8`), since the store, its files and its queries hold only UTF-8.")
    for name, value in sorted(os.environ.items()):
        if name.startswith("RPLAT_") and _has_surrogate(value):
            return (f"the environment variable {name} ({_raw(value)}) is not UTF-8 text; set it to a UTF-8 path or "
                    "URL.")
    return None


def _printable(text: str) -> str:
    """`text` with every character a terminal would not show as itself (line and page breaks, control characters,
    lone surrogates) escaped as Python writes it: a message quoting the user's input stays one line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fail(sentence: str, code: int = 2) -> NoReturn:
    """End the command with `error: <sentence>` on stderr, on one line, and exit `code`."""
    click.echo(f"error: {_printable(sentence)}", err=True)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; every mistake a user can make ends as one `error:` sentence on stderr and exit code 2."""
    args = list(argv) if argv is not None else sys.argv[1:]
    sentence = _not_utf8(args)
    if sentence is not None:
        _fail(sentence)
    try:
        cli.main(args=args, prog_name="rplat", standalone_mode=False)
    except UserError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(2)
    except click.ClickException as exc:
        command = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "rplat"
        _fail(f"{_one_sentence(exc.format_message())}; see `{command} --help`.")
    except OverflowError as exc:  # a number past what the database holds that no parameter type bounded
        _fail(f"a number is larger than the database holds ({exc}); give ids from 1 to 2^31-1 and counts in range.")
    except OSError as exc:
        what = f"cannot use {exc.filename} ({exc.strerror})" if exc.filename else f"operating system error ({exc})"
        _fail(f"{what}; check the path and its permissions.")
    except Exception as exc:
        sentence = _database_error(exc)
        if sentence is None:
            raise
        _fail(sentence)
