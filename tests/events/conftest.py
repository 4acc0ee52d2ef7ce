"""Fixtures of the event store tests: every contract test runs on PostgreSQL and on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'events.sqlite'}"


@pytest.fixture
def store(db_url: str) -> Iterator[SqlEventStore]:
    """A migrated event store on a fresh database (no spool)."""
    s = SqlEventStore(db_url, node="test-node")
    try:
        yield s
    finally:
        s.close()
