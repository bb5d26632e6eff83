"""Alembic migrations of the rplat store, shipped in the wheel so an installed rplat can upgrade a database."""
