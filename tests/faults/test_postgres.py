"""PostgreSQL stopped while events are appended, synchronously and through workers, then started."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from esf import Event
from tests.servers import PrivatePostgres

from .conftest import Cluster
from .ledger import settle

pytestmark = pytest.mark.slow

SCENARIO = "postgres-stop"
PER_ROUND = 25


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


def stored_per_key(url: str) -> dict[str, int]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT data->>'key', count(*) FROM esf_events "
                                        "WHERE event_type = 'fault.tick' GROUP BY 1"))
            return {str(k): int(n) for k, n in rows}
    finally:
        engine.dispose()


def test_events_appended_while_postgresql_is_stopped_are_stored_once_and_delivered_after_it_starts(
        make_cluster: Callable[..., Cluster], private_pg: PrivatePostgres, redis_url: str) -> None:
    # Given a worker (async appends, a subscription recording every fault.tick, its handler with 3 retries: an
    # outage defers handler jobs rather than spending them) on a PostgreSQL of the test's own
    cluster = make_cluster(redis_url, ESF_DATABASE_URL=private_pg.url, ESF_TEST_FAULTS_SUBS="1")
    fnd = cluster.foundation()
    ledger = cluster.ledger(SCENARIO)
    cluster.worker()

    def tick(key: str) -> Event:
        return Event("fault.tick", {"scenario": SCENARIO, "key": key}, stream_id=f"s-{key[-1]}")

    def append_round(name: str) -> tuple[list[object], list[object]]:
        sync_keys = [f"{name}-sync-{i}" for i in range(PER_ROUND)]
        async_keys = [f"{name}-async-{i}" for i in range(PER_ROUND)]
        ledger.sent(*sync_keys, *async_keys)
        sync = [fnd.events.append(tick(k)) for k in sync_keys]
        pending = [fnd.append_async(tick(k)) for k in async_keys]
        return sync, pending

    append_round("before")
    # When PostgreSQL stops and events keep coming, both ways
    private_pg.stop()
    started = time.monotonic()
    sync, _ = append_round("during")
    during_s = time.monotonic() - started
    # Then the synchronous appends return pending results (spooled, never dropped, never blocking long)
    assert all(r.is_pending for r in sync)  # type: ignore[attr-defined]
    assert fnd.events.health()["status"] == "degraded"
    time.sleep(2)
    # When PostgreSQL starts again
    private_pg.start()
    ledger.fault_ended()
    append_round("after")
    # Then every event is delivered to the subscription (at least once) and stored exactly once
    settle(ledger, timeout=120)
    stored = stored_per_key(private_pg.url)
    twice = sum(n - 1 for n in stored.values() if n > 1)
    ledger.report(allow_duplicates=True, stored=len(stored), stored_twice=twice,
                  append_while_down_ms=round(1000 * during_s / (2 * PER_ROUND), 1))
    assert set(stored) == ledger.sent_keys() and twice == 0
