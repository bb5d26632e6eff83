"""What `rplat dashboard` runs: `python -m rplat.dashboard.serve STREAMLIT-ARGS` opens the store and makes the
caches the pages read (the Chains page's copy of the chains: seconds at 10^5 chains) before Streamlit serves its
first page, then runs Streamlit with STREAMLIT-ARGS in this same process, whose sessions share that connection. The
first visitor no longer waits for the copy; what is left of a first visit is the browser loading the frontend."""

from __future__ import annotations

import sys
import time

import click

from rplat.config import get_settings
from rplat.errors import UserError


def warm_up(database_url: str) -> str:
    """Open the store's shared connection and make the Chains page's copy; returns a line that says what it took."""
    # What the pages import (but the modules with Streamlit caches, which want the server running), imported once
    # here rather than during the first visitor's script run.
    import altair  # noqa: F401

    from rplat.dashboard import common, problem_queries, queries, render, tdg_queries  # noqa: F401

    start = time.perf_counter()
    con = queries.shared_store(database_url)
    tdg_queries.refresh_chains(con)
    chains = tdg_queries.copied_chains(con)
    return f"store opened and {chains:,} chains copied for the Chains page in {time.perf_counter() - start:.1f} s"


def main() -> None:
    try:
        said = warm_up(get_settings().database_url)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    click.echo(said, err=True)
    from streamlit.web import cli

    sys.argv = ["streamlit", *sys.argv[1:]]
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
