"""The shipped ConfigStore contract suite (esf.testing.config), run against every bundled store."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from esf.plugins.redis_config import RedisConfigStore
from esf.plugins.sqlite_config import SqliteConfigStore

from esf.testing import config

from .conftest import FAST


class TestSqliteConfigStore(config.ConfigStoreContract):
    @pytest.fixture(autouse=True)
    def _file(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "config.sqlite")

    def create_store(self, *, history_limit: int = 1000) -> Any:
        return SqliteConfigStore(self.path, history_limit=history_limit, poll_interval_s=FAST.poll_interval_s)


class TestRedisConfigStore(config.ConfigStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, redis_url: str) -> None:
        self.url, self.prefix = redis_url, f"test:{uuid.uuid4().hex[:8]}:"

    def create_store(self, *, history_limit: int = 1000) -> Any:
        return RedisConfigStore(self.url, prefix=self.prefix, history_limit=history_limit)
