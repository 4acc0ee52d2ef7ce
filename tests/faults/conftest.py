"""Fixtures of the fault-injection suite: a ledger database, worker environments, the run's summary."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

import esf
from esf.foundation import Foundation
from tests.conftest import REDIS_HOST, REDIS_PORT, lease_redis_db
from tests.jobs.harness import Worker, settings_env

from . import app
from .ledger import SUMMARIES, DeadLetters, Ledger


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARIES:
        terminalreporter.section("fault scenarios")
        for line in SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture
def ledger_url() -> Iterator[str]:
    """A Redis database of the test's own on the shared server, for the ledger only."""
    with lease_redis_db() as db:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@dataclass
class Cluster:
    """Workers of tests.faults.app on one set of servers, and a Foundation of the same app to send from."""

    env: dict[str, str]
    ledger_url: str
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)
    foundations: list[Foundation] = field(default_factory=list)

    def ledger(self, scenario: str, fnd: Foundation | None = None) -> Ledger:
        """The ledger of ``scenario``; given ``fnd``, it also reads the DLQs of ``fnd``'s queues."""
        return Ledger(redis.Redis.from_url(self.ledger_url), scenario, DeadLetters(fnd) if fnd else None)

    def foundation(self, **extra: str) -> Foundation:
        fnd = app.build(esf.Settings.from_env({**self.env, **extra}))
        self.foundations.append(fnd)
        return fnd

    def worker(self, concurrency: int = 2, wait: bool = True, **extra: str) -> Worker:
        w = Worker({**self.env, **extra}, self.log_dir / f"worker-{len(self.workers)}.log",
                   concurrency=concurrency, app="tests.faults.app:make")
        self.workers.append(w)
        if wait:
            w.wait_ready()
        return w

    def close(self) -> None:
        for w in self.workers:
            w.discard()
        for fnd in self.foundations:
            fnd.close()


def cluster_env(broker_url: str, ledger_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Settings of a scenario's processes: short visibility timeout, a queue and namespace of their own."""
    return settings_env(broker_url, queues=(f"q-{uuid.uuid4().hex[:8]}",), data_dir=str(data_dir),
                        extra={"ESF_TELEMETRY_ENABLED": "false", "ESF_TEST_FAULTS_LEDGER_URL": ledger_url,
                               **extra})


@pytest.fixture
def make_cluster(ledger_url: str, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Build clusters on given servers; their workers are stopped and Foundations closed at the end."""
    made: list[Cluster] = []

    def make(broker_url: str, **extra: str) -> Cluster:
        c = Cluster(cluster_env(broker_url, ledger_url, tmp_path / f"data-{len(made)}", **extra), ledger_url,
                    tmp_path)
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()
