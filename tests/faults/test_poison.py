"""Poison messages and an always-failing handler: they end in the DLQ or are refused, and hold nothing else up."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis

from esf import Settings
from tests.jobs.harness import wait_for

from .conftest import Cluster
from .ledger import settle

pytestmark = pytest.mark.slow

GOOD = 120
FAILING = 6


def test_poison_messages_and_an_always_failing_handler_do_not_hold_up_the_other_jobs(
        make_cluster: Callable[..., Cluster], redis_url: str) -> None:
    # Given one worker of one process (so a stuck message would hold everything up)
    cluster = make_cluster(redis_url)
    fnd = cluster.foundation()
    queue = Settings.from_env(cluster.env).jobs.default_queue
    ledger = cluster.ledger("poison-and-failing")
    cluster.worker(concurrency=1)
    # When poison messages come first: a pickle body (refused: JSON only), a job nobody declared, a body that
    # is not JSON at all
    with fnd.celery.connection_for_write() as conn:
        producer = conn.Producer()
        producer.publish({"args": [1]}, routing_key=queue, serializer="pickle",
                         headers={"task": "f.effect", "id": str(uuid.uuid4())})
        producer.publish([["x"], {}, {}], routing_key=queue, serializer="json",
                         headers={"task": "f.undeclared", "id": str(uuid.uuid4())})
        producer.publish(b"\x00\xffnot json", routing_key=queue, content_type="application/json",
                         content_encoding="binary", headers={"task": "f.effect", "id": str(uuid.uuid4())})
    # And jobs whose handler always fails, mixed with good jobs
    failing = [fnd.jobs.get("f.fail").enqueue("poison-and-failing-attempts", f"bad-{i}") for i in range(FAILING)]
    effect = fnd.jobs.get("f.effect")
    for i in range(GOOD):
        ledger.sent(f"good-{i}")
        effect.enqueue("poison-and-failing", f"good-{i}")
    # Then every good job takes effect
    settle(ledger, timeout=120)
    # And each failing job was tried 1 + retries (2) times and is in the DLQ with its arguments
    ids = {h.id for h in failing}
    entries = wait_for(lambda: [e for e in fnd.jobs.dlq.entries() if e.job_id in ids] if len(
        [e for e in fnd.jobs.dlq.entries() if e.job_id in ids]) == FAILING else None, timeout=60,
        message="every failing job in the DLQ")
    assert all(e.reason == "retries_exhausted" and e.args[1].startswith("bad-") for e in entries)
    attempts = {k.decode(): int(v) for k, v in ledger.client.hgetall("poison-and-failing-attempts:attempts").items()}
    assert attempts == {f"bad-{i}": 3 for i in range(FAILING)}
    assert cluster.workers[0].proc.poll() is None
    # And the poison messages are not left at the head of the queue: it is empty, nothing is unacknowledged
    broker = redis.Redis.from_url(redis_url)
    wait_for(lambda: broker.llen(queue) == 0 and broker.hlen("unacked") == 0, timeout=30,
             message="the queue drained of every message, poison included")
    ledger.report(allow_duplicates=False, failing_dead_lettered=len(entries), poison_messages=3)
