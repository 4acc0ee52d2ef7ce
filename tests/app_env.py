"""One test's worker subprocesses, Foundations, PostgreSQL database and Redis database around a test app.

A test package subclasses :class:`AppEnv` with its app (``APP``, ``build``) and its own queries, and its
fixture yields it from :func:`running`, which kills the workers and closes the Foundations afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import redis
import sqlalchemy as sa

import esf
from esf.foundation import Foundation
from tests.jobs.harness import Worker, settings_env


@dataclass
class AppEnv:
    """One test's servers and settings; starts workers and Foundations of the test app."""

    #: ``module:callable`` the workers load (``esf worker --app``).
    APP: ClassVar[str]

    env: dict[str, str]
    redis_url: str
    pg_url: str
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)
    foundations: list[Foundation] = field(default_factory=list)

    def build(self, settings: esf.Settings) -> Foundation:
        """The test app's Foundation, as ``APP`` builds it in the workers."""
        raise NotImplementedError

    def foundation(self, **extra: str) -> Foundation:
        fnd = self.build(esf.Settings.from_env({**self.env, **extra}))
        self.foundations.append(fnd)
        return fnd

    def worker(self, concurrency: int = 2, **extra: str) -> Worker:
        w = Worker({**self.env, **extra}, self.log_dir / f"worker-{len(self.workers)}.log", concurrency=concurrency,
                   app=self.APP)
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


E = TypeVar("E", bound=AppEnv)


@contextmanager
def running(cls: type[E], pg_url: str, redis_url: str, tmp_path: Path, *, ddl: str,
            poll_interval_s: float) -> Iterator[E]:
    """A ``cls`` on a queue of its own, with ``ddl`` run on the database; its workers and Foundations end after."""
    env = settings_env(redis_url, queues=(f"q-{uuid.uuid4().hex[:8]}",), data_dir=str(tmp_path / "data"),
                       extra={"ESF_DATABASE_URL": pg_url, "ESF_SUBSCRIPTIONS_POLL_INTERVAL_S": str(poll_interval_s),
                              "ESF_TELEMETRY_ENABLED": "false"})
    e = cls(env, redis_url, pg_url, tmp_path)
    e.sql(ddl)
    try:
        yield e
    finally:
        for w in e.workers:
            w.discard()
        for fnd in e.foundations:
            fnd.close()
