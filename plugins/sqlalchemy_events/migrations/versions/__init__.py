"""Alembic revisions of the event store."""
