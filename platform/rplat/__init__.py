"""rplat: a database-backed workbench for research on LLM reasoning supervision."""

__version__ = "0.1.0"
