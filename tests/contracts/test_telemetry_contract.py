"""The snapshot store contract suite (esf.testing.telemetry), on SQLite and Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from esf.telemetry import RedisSnapshotStore, SQLiteSnapshotStore
from esf.testing import telemetry


class TestSqliteSnapshotStore(telemetry.SnapshotStoreContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "telemetry.sqlite"

    def create_store(self) -> SQLiteSnapshotStore:
        return SQLiteSnapshotStore(self.path)


class TestRedisSnapshotStore(telemetry.SnapshotStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, redis_url: str) -> None:
        self.url, self.prefix = redis_url, f"test:{uuid.uuid4().hex[:8]}:"

    def create_store(self) -> RedisSnapshotStore:
        return RedisSnapshotStore(self.url, key_prefix=self.prefix)
