"""Worker subprocesses, a PostgreSQL database and a Redis database for the saga tests."""

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

    def foundation(self) -> Foundation:
        fnd = apps.build(esf.Settings.from_env(self.env))
        self.foundations.append(fnd)
        return fnd

    def worker(self, concurrency: int = 2) -> Worker:
        w = Worker(self.env, self.log_dir / f"worker-{len(self.workers)}.log", concurrency=concurrency,
                   app="tests.sagas.apps:make")
        self.workers.append(w)
        w.wait_ready()
        return w

    @property
    def redis(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.redis_url)

    def sql(self, statement: str, **params: Any) -> list[Any]:
        engine = sa.create_engine(self.pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(statement), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def effects(self, order_id: str) -> list[tuple[str, str]]:
        """``(effect, run key)`` of an order's committed effects, in commit order."""
        return [(r[0], r[1]) for r in self.sql("SELECT effect, run_key FROM saga_effects WHERE order_id = :o "
                                                "ORDER BY id", o=order_id)]


@pytest.fixture
def saga_env(pg_url: str, redis_url: str, tmp_path: Path) -> Iterator[Env]:
    env = settings_env(redis_url, queues=(f"q-{uuid.uuid4().hex[:8]}",), data_dir=str(tmp_path / "data"),
                       extra={"ESF_DATABASE_URL": pg_url, "ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": "0.3",
                              "ESF_TELEMETRY_ENABLED": "false"})
    e = Env(env, redis_url, pg_url, tmp_path)
    e.sql(apps.EFFECTS_DDL)
    try:
        yield e
    finally:
        for w in e.workers:
            w.discard()
        for fnd in e.foundations:
            fnd.close()
