"""Shared fixtures: real PostgreSQL, Redis and RabbitMQ, each test isolated.

A service that cannot be reached skips the test on a laptop and fails it in
CI (``CI=true``): CI never skips.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import PrivateRedis, require_port

PG_ADMIN_URL = os.environ.get("ESF_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
AMQP_URL = os.environ.get("ESF_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("ESF_") and not key.startswith("ESF_TEST_"):
            monkeypatch.delenv(key)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped after the test."""
    require_port(5432, "PostgreSQL")
    import psycopg

    name = f"esf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def lease_redis_db() -> Iterator[int]:
    """An exclusive, flushed Redis database number (1-15), leased across processes."""
    require_port(REDIS_PORT, "Redis")
    import redis

    admin = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + 300
    while True:
        for db in range(1, 16):
            if admin.set(f"esf-test:db-lease:{db}", token, nx=True, ex=1800):
                client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
                client.flushdb()
                try:
                    yield db
                finally:
                    client.flushdb()
                    client.close()
                    if admin.get(f"esf-test:db-lease:{db}") == token.encode():
                        admin.delete(f"esf-test:db-lease:{db}")
                    admin.close()
                return
        if time.monotonic() > deadline:
            pytest.fail("no free Redis test database (1-15) within 300 s")
        time.sleep(0.5)


@pytest.fixture
def redis_db() -> Iterator[int]:
    """An exclusive, flushed Redis database for one test."""
    with lease_redis_db() as db:
        yield db


@pytest.fixture
def redis_url(redis_db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"


@pytest.fixture
def amqp_url() -> str:
    require_port(5672, "RabbitMQ")
    return AMQP_URL


@pytest.fixture
def unique() -> str:
    """A short unique token for queue names and keys."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "esf-data"
    path.mkdir()
    return path


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own (AOF on) that the test may stop, kill and restart."""
    server = PrivateRedis(tmp_path / "private-redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()
