"""Fixtures of the event-sourcing tests: a Foundation on PostgreSQL and on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import esf
from esf.foundation import Foundation


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each backend."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'events.sqlite'}"


@pytest.fixture
def fnd(db_url: str, data_dir: Path) -> Iterator[Foundation]:
    """A Foundation whose event store is the fresh database (no broker used)."""
    f = Foundation(esf.Settings.from_env({"ESF_DATABASE_URL": db_url, "ESF_DATA_DIR": str(data_dir),
                                          "ESF_TELEMETRY_ENABLED": "false"}))
    try:
        yield f
    finally:
        f.close()
