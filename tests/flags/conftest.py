"""Fixtures of the flag tests: a flag service over a real configuration store (SQLite or Redis)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from esf.plugins.redis_config import RedisConfigStore
from esf.plugins.sqlite_config import SqliteConfigStore

from esf.config import ConfigService
from esf.flags import FLAGS_PREFIX, SEGMENTS_PREFIX, FlagService, validate_flags
from esf.settings import ConfigSettings, FlagSettings

FAST = ConfigSettings(poll_interval_s=0.05, reconcile_interval_s=0.3, heartbeat_interval_s=0.2, node_ttl_s=3.0,
                      store_timeout_s=2.0)


def flag_config(store: Any, data_dir: Path) -> ConfigService:
    """A configuration service that validates flags as the Foundation's does."""
    config = ConfigService(store, settings=FAST, data_dir=data_dir)
    config.register_validator(validate_flags, prefixes=(FLAGS_PREFIX, SEGMENTS_PREFIX))
    return config


@pytest.fixture(params=["sqlite", "redis"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConfigService]:
    if request.param == "redis":
        store: Any = RedisConfigStore(request.getfixturevalue("redis_url"), prefix=f"test:{uuid.uuid4().hex[:8]}:")
    else:
        store = SqliteConfigStore(str(tmp_path / "config.sqlite"), poll_interval_s=FAST.poll_interval_s)
    service = flag_config(store, tmp_path / "node")
    yield service
    service.close()


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Iterator[ConfigService]:
    service = flag_config(SqliteConfigStore(str(tmp_path / "config.sqlite"), poll_interval_s=0.05), tmp_path / "n")
    yield service
    service.close()


@pytest.fixture
def make_flags() -> Callable[..., FlagService]:
    def make(config: ConfigService, **settings: Any) -> FlagService:
        return FlagService(lambda: config, settings=FlagSettings(**settings))

    return make
