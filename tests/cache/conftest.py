"""Fixtures of the cache tests: caches on the leased Redis database, with a key prefix of their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from esf.cache import TwoTierCache, create_cache
from esf.settings import CacheSettings, Settings, TelemetrySettings


def cache_settings(data_dir: Path, redis_url: str | None, prefix: str, **cache: Any) -> Settings:
    """Settings of a cache test: telemetry off unless asked, this test's own Redis prefix (pub/sub is global)."""
    return Settings(data_dir=str(data_dir), redis_url=redis_url,
                    cache=CacheSettings(redis_prefix=prefix, **cache),
                    telemetry=TelemetrySettings(enabled=False))


@pytest.fixture
def make_cache(data_dir: Path, unique: str) -> Iterator[Callable[..., TwoTierCache]]:
    """``make_cache(redis_url or None, **cache_settings)``: a cache closed after the test."""
    made: list[TwoTierCache] = []

    def make(redis_url: str | None, **cache: Any) -> TwoTierCache:
        settings = cache_settings(data_dir, redis_url, f"t{unique}:", **cache)
        c = create_cache(settings)
        made.append(c)
        if redis_url is not None:
            # Subscribed first: a (re)subscription makes every copy held here ask Redis again.
            c.core.ensure_started()
            assert c.core.subscribed.wait(10)
        return c

    yield make
    for c in made:
        c.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
