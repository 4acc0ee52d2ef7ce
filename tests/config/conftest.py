"""Fixtures of the configuration tests: a service factory over SQLite or Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from esf.plugins.redis_config import RedisConfigStore
from esf.plugins.sqlite_config import SqliteConfigStore

from esf.config import ConfigService
from esf.settings import ConfigSettings

#: Short intervals so that reconciliation and heartbeats happen within a test.
FAST = ConfigSettings(
    poll_interval_s=0.05,
    reconcile_interval_s=0.3,
    heartbeat_interval_s=0.2,
    node_ttl_s=3.0,
    diverged_after_s=0.5,
    store_timeout_s=2.0,
)


def eventually(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail after a generous ``timeout`` (not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout}s")
        time.sleep(0.02)


class StoreSpec:
    """How to build stores that share one source of truth (one per simulated process)."""

    def __init__(self, kind: str, location: str, prefix: str) -> None:
        self.kind = kind
        self.location = location
        self.prefix = prefix

    def store(self, settings: ConfigSettings = FAST) -> Any:
        if self.kind == "redis":
            return RedisConfigStore(self.location, prefix=self.prefix, history_limit=settings.history_limit)
        return SqliteConfigStore(
            self.location, history_limit=settings.history_limit, poll_interval_s=settings.poll_interval_s
        )


@pytest.fixture(params=["sqlite", "redis"])
def spec(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return StoreSpec("redis", url, f"test:{uuid.uuid4().hex[:8]}:")
    return StoreSpec("sqlite", str(tmp_path / "config.sqlite"), "")


@pytest.fixture
def make_service(spec: StoreSpec, tmp_path: Path) -> Iterator[Callable[..., ConfigService]]:
    """Build services (one per simulated process) on the same store; all closed after the test."""
    made: list[ConfigService] = []

    def make(settings: ConfigSettings = FAST, **kwargs: Any) -> ConfigService:
        kwargs.setdefault("data_dir", tmp_path / f"node{len(made)}")
        service = ConfigService(spec.store(settings), settings=settings, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        service.close()
