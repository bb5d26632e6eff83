"""The Streamlit dashboard: rationales, failures, solved sets and jobs through the DuckDB views."""

ALLOW_REVIEW = "RPLAT_DASHBOARD_ALLOW_REVIEW"
"""Set to 1 by `rplat dashboard --allow-review` (and only by it) in the app's environment: the review forms show."""
