"""Timeouts from settings reach the clients: a black-holed dependency fails the call instead of hanging it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from esf import Foundation, Settings

#: Generous bound: the default timeouts (or none) would exceed it; the configured ones stay far below.
HANG_S = 20.0


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_postgresql_connect_timeout(black_hole: int) -> None:
    from plugins.sqlalchemy_events._engine import make_engine

    engine = make_engine(f"postgresql://postgres@127.0.0.1:{black_hole}/test", connect_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError), engine.connect():
        pass
    assert time.monotonic() - started < HANG_S
    engine.dispose()


def test_postgresql_statement_timeout(pg_url: str) -> None:
    from plugins.sqlalchemy_events._engine import make_engine

    engine = make_engine(pg_url, statement_timeout_s=0.2)
    with engine.connect() as conn:
        with pytest.raises(sa.exc.OperationalError) as info:
            conn.execute(sa.text("SELECT pg_sleep(60)"))
        assert "statement timeout" in str(info.value)
    engine.dispose()


def test_redis_command_timeout(black_hole: int, data_dir: Path) -> None:
    import redis

    settings = Settings.from_mapping({"data_dir": str(data_dir), "redis_url": f"redis://127.0.0.1:{black_hole}/0",
                                      "resilience": {"redis_timeout_s": 0.5, "redis_connect_timeout_s": 0.5}})
    with Foundation(settings) as fnd:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            fnd.redis.ping()
        assert time.monotonic() - started < HANG_S


def test_coordination_redis_breaker_fails_fast_once_open(black_hole: int, data_dir: Path) -> None:
    from esf.errors import CircuitOpen, ServiceUnavailable

    settings = Settings.from_mapping({"data_dir": str(data_dir), "redis_url": f"redis://127.0.0.1:{black_hole}/0",
                                      "resilience": {"redis_timeout_s": 0.3, "redis_connect_timeout_s": 0.3}})
    with Foundation(settings) as fnd:
        coordinator = fnd.jobs.coordinator
        assert coordinator.breaker is not None
        for _ in range(coordinator.breaker.failure_threshold):
            with pytest.raises(ServiceUnavailable) as info:
                coordinator.get("k")
            assert not isinstance(info.value, CircuitOpen)
        with pytest.raises(CircuitOpen):
            coordinator.get("k")  # no call: the breaker refuses it
        report = fnd.health()["services"]["breakers"]
        assert report["status"] == "degraded" and "redis.coordination" in report["reason"]
