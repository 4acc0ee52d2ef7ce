"""Worker subprocesses, a PostgreSQL database and a Redis database for the subscription tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

import esf
from esf.foundation import Foundation
from tests.jobs.harness import Worker, settings_env

from . import apps


@dataclass
class Env:
    """One test's servers and settings; starts workers and a Foundation of the test app."""

    env: dict[str, str]
    redis_url: str
    pg_url: str
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)
    foundations: list[Foundation] = field(default_factory=list)

    def foundation(self, **extra: str) -> Foundation:
        fnd = apps.build(esf.Settings.from_env({**self.env, **extra}))
        self.foundations.append(fnd)
        return fnd

    def worker(self, concurrency: int = 2, **extra: str) -> Worker:
        w = Worker({**self.env, **extra}, self.log_dir / f"worker-{len(self.workers)}.log", concurrency=concurrency,
                   app="tests.subscriptions.apps:make")
        self.workers.append(w)
        w.wait_ready()
        return w

    @property
    def redis(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.redis_url)

    def seen(self) -> list[int]:
        return [int(p) for p in self.redis.lrange("seen", 0, -1)]

    def key(self, stream: str) -> list[int]:
        return [int(p) for p in self.redis.lrange(f"key:{stream}", 0, -1)]

    def sql(self, statement: str, **params: Any) -> list[Any]:
        engine = sa.create_engine(self.pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(statement), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()


@pytest.fixture
def subs_env(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Env]:
    env = settings_env(redis_url, queues=(f"q-{uuid.uuid4().hex[:8]}",), data_dir=str(tmp_path / "data"),
                       extra={"ESF_DATABASE_URL": pg_url, "ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": "0.5",
                              "ESF_TELEMETRY_ENABLED": "false"})
    e = Env(env, redis_url, pg_url, tmp_path)
    e.sql(apps.PROJECTION_DDL)
    try:
        yield e
    finally:
        for w in e.workers:
            w.discard()
        for fnd in e.foundations:
            fnd.close()
