"""A handler job whose event store is unreachable waits for it instead of spending its retries."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from esf import Event
from tests.faults.proxy import FaultProxy
from tests.jobs.harness import wait_for

from .conftest import Env


def deferrals(log: Path) -> int:
    """How many times the worker deferred a handler job of ``orders`` (its log says so at INFO)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if "esf.subscription.orders" in line and "deferred" in line)


def test_handler_jobs_wait_out_an_unreachable_event_store_and_deliver_every_event_when_it_returns(
        subs_env: Env) -> None:
    # Given a worker running handler jobs (no dispatcher) whose database goes through a proxy of the test's own
    port = urlsplit(subs_env.pg_url).port or 5432
    proxy = FaultProxy(port)
    try:
        worker_url = subs_env.pg_url.replace(f":{port}/", f":{proxy.port}/", 1)
        fnd = subs_env.foundation()
        subs_env.worker(ESF_DATABASE_URL=worker_url, ESF_SUBSCRIPTIONS_DISPATCHER="false")
        stored = fnd.events.append([Event("order.paid", {"order": i, "total": 150}, stream_id=f"order-{i % 3}")
                                    for i in range(6)])
        expected = sorted(e.position for e in stored)
        # When the database stops answering the worker, and the batches are sent
        proxy.set("reset")
        assert fnd.subscriptions.tick("orders").sent > 0
        fnd.jobs.outbox.drain()
        # Then the handler jobs are deferred again and again, far past their 2 retries, and none is dead-lettered
        log = subs_env.log_dir / "worker-0.log"
        wait_for(lambda: deferrals(log) >= 12, timeout=90,
                 message="handler jobs deferred while the database is unreachable")
        queue = fnd.subscriptions.get("orders").queue
        assert fnd.jobs.dlq.depth(queue) == {queue: 0}
        assert subs_env.seen() == []
        # When the database answers again
        proxy.set("pass")
        # Then every event is delivered, and still nothing was dead-lettered
        wait_for(lambda: sorted(set(subs_env.seen())) == expected, timeout=90, message="delivery after the outage")
        assert fnd.jobs.dlq.depth(queue) == {queue: 0}
    finally:
        proxy.close()
