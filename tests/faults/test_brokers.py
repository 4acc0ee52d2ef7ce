"""The broker restarted (Redis, then RabbitMQ, each a private server) while jobs flow."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esf.errors import ServiceUnavailable
from tests.servers import PrivateRabbitMQ, PrivateRedis

from .conftest import Cluster
from .flow import JobFlow
from .ledger import settle

pytestmark = pytest.mark.slow

JOBS = 200
RATE = 40.0  # jobs per second: the run lasts 5 s, the outage sits in its middle
DOWN_S = 3.0
#: Jobs sent after the restart, and how long their enqueues may be refused (the breaker's trials: 1 s doubling).
AFTER = 10
AFTER_WAIT_S = 90.0


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    server = PrivateRabbitMQ(tmp_path / "rabbitmq")
    server.start()
    try:
        yield server
    finally:
        server.kill()


def run_through_a_restart(cluster: Cluster, scenario: str, crash: Callable[[], None],
                          start: Callable[[], None]) -> None:
    fnd = cluster.foundation()
    ledger = cluster.ledger(scenario)
    cluster.worker()
    cluster.worker()
    # When jobs flow and the broker crashes (SIGKILL) in the middle of the run, and comes back
    flow = JobFlow(fnd.jobs.get("f.effect"), ledger, JOBS, RATE, seconds=0.02).start()
    time.sleep(JOBS / RATE / 3)
    crash()
    time.sleep(DOWN_S)
    start()
    ledger.fault_ended()
    flow.join(timeout=180)
    # And, once the broker is back, enqueues go through again: a few more jobs, each sent as soon as the
    # producer's breaker (opened if the outage outlasted three enqueues' retries) lets a trial through
    effect = fnd.jobs.get("f.effect")
    deadline = time.monotonic() + AFTER_WAIT_S
    for key in [f"after-{i}" for i in range(AFTER)]:
        while True:
            try:
                effect.enqueue(scenario, key, 0.02)
                break
            except ServiceUnavailable as exc:  # CircuitOpen is one
                assert time.monotonic() < deadline, f"enqueues refused {AFTER_WAIT_S:.0f} s after the restart: {exc}"
                time.sleep(0.5)
        ledger.sent(key)
    # Then every job whose enqueue returned takes effect; an enqueue the outage refused raised
    settle(ledger, timeout=180)
    ledger.report(allow_duplicates=True, refused=len(flow.refused), down_s=DOWN_S)
    # And the workers consume again without a restart
    dead = [w for w in cluster.workers if w.proc.poll() is not None]
    assert not dead, f"a worker exited (code {dead[0].proc.returncode}):\n{dead[0].log()}" if dead else ""


def test_a_redis_broker_crashed_and_restarted_while_jobs_flow_loses_no_job(
        make_cluster: Callable[..., Cluster], private_redis: PrivateRedis) -> None:
    # Given two workers on a Redis broker of the test's own (AOF, appendfsync always)
    cluster = make_cluster(private_redis.url)
    run_through_a_restart(cluster, "redis-restart", private_redis.kill, private_redis.start)


def test_a_rabbitmq_broker_crashed_and_restarted_while_jobs_flow_loses_no_job(
        make_cluster: Callable[..., Cluster], private_rabbitmq: PrivateRabbitMQ, redis_url: str) -> None:
    # Given two workers on a RabbitMQ node of the test's own (quorum queues, publisher confirms)
    cluster = make_cluster(private_rabbitmq.url, ESF_REDIS_URL=redis_url)
    run_through_a_restart(cluster, "rabbitmq-restart", private_rabbitmq.kill, private_rabbitmq.start)
