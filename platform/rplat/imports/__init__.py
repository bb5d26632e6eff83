"""Data into the store: documents, problems and teacher chains from files, and benchmark generators."""
