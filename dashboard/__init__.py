"""The Streamlit dashboard: rationales, failures, solved sets and jobs through the DuckDB views."""
