"""What the AppTest modules share: a seeded store's DuckDB connection and running one page function.

The app reads RPLAT_DATABASE_URL (and RPLAT_HOME) through rplat.config: a test points it at a store with
`Store.set_env`.
"""

from __future__ import annotations

from collections.abc import Iterator

import duckdb
from streamlit.testing.v1 import AppTest

from rplat import analytics

from stores import Store

RUN_TIMEOUT = 120.0  # seconds one script run may take on the loaded CI machine before AppTest gives up


def duck_of(store: Store) -> Iterator[duckdb.DuckDBPyConnection]:
    """Body of a module-scoped fixture: the store's read-only DuckDB connection, closed after the module."""
    con = analytics.connect(store.url)
    yield con
    con.close()


def page(module: str, name: str) -> AppTest:
    """Page function `name` of `rplat.dashboard.<module>`, run once."""
    return AppTest.from_string(f"from rplat.dashboard.{module} import {name}\n{name}()",
                               default_timeout=RUN_TIMEOUT).run()
