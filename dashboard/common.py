"""What every dashboard page shares: the store's read-only connection, the empty-store hint, table display."""

from __future__ import annotations

import duckdb
import pandas as pd
import streamlit as st

from rplat.config import get_settings
from rplat.dashboard import queries
from rplat.errors import UserError

EMPTY = ("No {what} yet: run `make demo` (or `rplat pipeline rationalyst` / `rplat pipeline tdg` and "
         "`rplat runner`) to fill the store.")


@st.cache_resource
def store(database_url: str) -> duckdb.DuckDBPyConnection:
    return queries.open_store(database_url)


def connection() -> duckdb.DuckDBPyConnection:
    try:
        return store(get_settings().database_url)
    except UserError as exc:
        st.error(str(exc))
        st.stop()


def table(frame: pd.DataFrame) -> None:
    st.dataframe(frame, hide_index=True)
