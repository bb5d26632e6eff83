"""The Streamlit dashboard: browse rationales, failures, solved sets and jobs through the DuckDB views."""
