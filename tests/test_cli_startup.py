"""What each command imports: only the libraries it uses, checked on the modules a real `rplat` process loaded.

`rplat.cli` is a table of commands loaded by name (COMMANDS), so `rplat --help` imports no command module and a
command imports its own module and what that uses. The sets are read from `sys.modules` at the process's exit,
never from timings.
"""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path

import click
import pytest

import rplat.cli
from rplat.cli import COMMANDS, cli

from stores import Store

# Runs the CLI like `rplat ARGS`, then writes the name of every module the process imported to $MODULES_OUT.
PROBE = """
import atexit, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write("\\n".join(sorted(sys.modules))))
from rplat.cli import main
main(sys.argv[1:])
"""
HEAVY = {"pandas", "numpy", "pyarrow", "duckdb", "torch", "transformers", "streamlit"}


def imported(env: dict[str, str], cwd: Path, *args: str) -> set[str]:
    """The top-level packages and the rplat modules that `rplat ARGS` imported; the command must succeed."""
    out = cwd / "modules.txt"
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env={**env, "MODULES_OUT": str(out)}, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = out.read_text(encoding="utf-8").split()
    return {n.split(".")[0] for n in names} | {n for n in names if n.startswith("rplat.")}


@pytest.mark.parametrize("args", [("--help",), ("enqueue", "--help")], ids=["help", "enqueue-help"])
def test_help_imports_no_library_beyond_click(tmp_path: Path, args: tuple[str, ...]) -> None:
    modules = imported(dict(os.environ), tmp_path, *args)
    assert not modules & (HEAVY | {"sqlalchemy", "pydantic", "alembic"})
    command_modules = {m for m in modules if m.startswith("rplat.cli.")}
    assert command_modules == ({"rplat.cli._common", "rplat.cli.enqueue"} if "enqueue" in args else set())


def test_the_queue_commands_import_none_of_the_analysis_or_training_libraries(db: Store) -> None:
    listing = imported(db.env, db.home, "jobs", "ls")
    status = imported(db.env, db.home, "status")
    for modules in (listing, status):
        assert "sqlalchemy" in modules
        assert not modules & HEAVY
        assert "alembic" not in modules  # the at-head check reads the revisions itself
        assert "rplat.kinds" not in modules  # listing jobs loads no job kind
        assert not {m for m in modules if m.startswith("rplat.cli.")} - {"rplat.cli._common", "rplat.cli.jobs"}


def test_enqueue_loads_the_kinds_but_none_of_their_libraries(db: Store) -> None:
    modules = imported(db.env, db.home, "enqueue", "probe", "--param", "tag=light")
    assert {"rplat.kinds", "rplat.queue", "rplat.runners.framework.kinds"} <= modules
    assert not modules & HEAVY


def test_sql_imports_duckdb_without_pandas_or_torch(db: Store) -> None:
    modules = imported(db.env, db.home, "sql", "SELECT count(*) FROM job_timeline")
    assert "duckdb" in modules
    assert not modules & {"pandas", "numpy", "pyarrow", "torch", "transformers", "streamlit"}


def test_a_runner_starts_and_drains_an_empty_queue_without_torch(db: Store) -> None:
    modules = imported(db.env, db.home, "runner", "--once", "--quiet", "--gpus", "none")
    assert "rplat.runners.framework.runner" in modules
    assert not modules & HEAVY


def test_the_help_lists_every_command_as_click_would_after_loading_them_all() -> None:
    ctx = click.Context(cli, info_name="rplat")
    for name, entry in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=1000) == entry.help  # the table's line is the command's own
    lazy, loaded = click.HelpFormatter(), click.HelpFormatter()
    cli.format_commands(ctx, lazy)
    click.Group.format_commands(cli, ctx, loaded)
    assert lazy.getvalue() == loaded.getvalue()


def subcommands(group: click.Group) -> Iterator[click.Command]:
    for command in group.commands.values():
        yield command
        if isinstance(command, click.Group):
            yield from subcommands(command)


def test_every_command_defined_in_the_cli_package_is_in_the_table() -> None:
    defined: list[click.Command] = []
    for module in pkgutil.iter_modules(rplat.cli.__path__):
        if module.name != "__main__":
            found = vars(import_module(f"rplat.cli.{module.name}")).values()
            defined += [c for c in found if isinstance(c, click.Command) and c is not cli]
    nested = {id(sub) for group in defined if isinstance(group, click.Group) for sub in subcommands(group)}
    ctx = click.Context(cli, info_name="rplat")
    assert {id(c) for c in defined} - nested == {id(cli.get_command(ctx, name)) for name in COMMANDS}
