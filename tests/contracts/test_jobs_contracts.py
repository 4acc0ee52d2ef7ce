"""The coordinator and schedule store contract suites (esf.testing.jobs), on SQLite and Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis

from esf.jobs._coord import RedisCoordinator, SqliteCoordinator
from esf.jobs._schedules import RedisScheduleStore, SqliteScheduleStore
from esf.testing import jobs


class TestSqliteCoordinator(jobs.CoordinatorContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "coord.sqlite"

    def create_coordinator(self) -> SqliteCoordinator:
        return SqliteCoordinator(self.path)


class TestRedisCoordinator(jobs.CoordinatorContract):
    @pytest.fixture(autouse=True)
    def _database(self, redis_url: str) -> None:
        self.url, self.prefix = redis_url, f"test:{uuid.uuid4().hex[:8]}:"

    def create_coordinator(self) -> RedisCoordinator:
        return RedisCoordinator(redis.Redis.from_url(self.url), prefix=self.prefix)


class TestSqliteScheduleStore(jobs.ScheduleStoreContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = tmp_path / "schedules.sqlite"

    def create_store(self) -> SqliteScheduleStore:
        return SqliteScheduleStore(self.path)


class TestRedisScheduleStore(jobs.ScheduleStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, redis_url: str) -> None:
        self.url, self.prefix = redis_url, f"test:{uuid.uuid4().hex[:8]}:"

    def create_store(self) -> RedisScheduleStore:
        return RedisScheduleStore(redis.Redis.from_url(self.url), prefix=self.prefix)
