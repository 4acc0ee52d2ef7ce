"""Every bundled event store runs the shipped contract suite of the highest tier it implements."""

from __future__ import annotations

from pathlib import Path

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore

from esf.events import InMemoryEventRecorder
from esf.testing import events


class TestInMemoryEventRecorder(events.EventRecorderContract):
    def create_store(self) -> InMemoryEventRecorder:
        return InMemoryEventRecorder()


class TestSqliteEventStore(events.TransactionalEventStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'events.sqlite'}"

    def create_store(self) -> SqlEventStore:
        return SqlEventStore(self.url, node="contract")


class TestPostgresEventStore(events.TransactionalEventStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> None:
        self.url = pg_url

    def create_store(self) -> SqlEventStore:
        return SqlEventStore(self.url, node="contract")
