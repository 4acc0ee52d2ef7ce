"""A tick that publishes its own jobs on PostgreSQL: after its commit, holding the outbox relay's lock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import OutboxRelay, SqlSubscriptionBackend
from esf.plugins.sqlalchemy_events._outbox import relay_lock_key
from esf.plugins.sqlalchemy_events._schema import outbox
from esf.plugins.sqlalchemy_events._schema import subscription_batches as batches

from esf import Event
from esf.events import create_event_store
from esf.settings import Settings


@pytest.fixture
def store(pg_url: str, tmp_path: Path) -> Iterator[Any]:
    s = create_event_store(Settings(database_url=pg_url, data_dir=str(tmp_path / "data")))
    try:
        yield s
    finally:
        s.close()


def make_job(batch_id: int, positions: list[int], correlation_id: str | None) -> dict[str, Any]:
    return {"job": "esf.subscription.live", "job_id": uuid.uuid4().hex, "args": [batch_id, positions], "kwargs": {},
            "headers": {}, "countdown": None, "eta": None, "priority": None}


def outbox_ids(store: Any) -> list[int]:
    with store.engine.connect() as conn:
        return [int(i) for i in conn.execute(sa.select(outbox.c.id).order_by(outbox.c.id)).scalars()]


def sent_batches(store: Any) -> dict[int, str]:
    with store.engine.connect() as conn:
        return {int(r.id): str(r.job_id) for r in conn.execute(
            sa.select(batches.c.id, batches.c.job_id).where(batches.c.name == "live", batches.c.state == "sent"))}


def tick(backend: SqlSubscriptionBackend, publish: Any) -> Any:
    return backend.tick("live", filter=None, partition_by="stream_id", batch_size=1, max_in_flight=8,
                        make_job=make_job, publish=publish)


def test_a_tick_publishes_its_jobs_after_its_commit_while_no_relay_can_send_them_and_leaves_no_outbox_row(
        store: Any) -> None:
    # Given three live events in three streams and a relay of the same outbox
    store.append([Event("t.live", {"i": i}, stream_id=f"s-{i}") for i in range(3)])
    backend = SqlSubscriptionBackend(store.engine)
    backend.ensure("live", start="beginning", spec={})
    relayed: list[dict[str, Any]] = []
    relay = OutboxRelay(store.engine, lambda kind, payload: relayed.append(payload), kind="job")
    published: list[dict[str, Any]] = []
    seen_by_relay: list[int] = []

    def publish(payload: dict[str, Any]) -> None:
        # (while publishing: the batch is committed as sent, and a relay's drain finds the rows held)
        assert sent_batches(store)[payload["args"][0]] == payload["job_id"]
        seen_by_relay.append(relay.drain(100))
        published.append(payload)

    # When the tick publishes them itself
    result = tick(backend, publish)
    # Then each batch's job was published once, by the tick, with its batch's job id
    assert result.sent == 3 and len(published) == 3
    assert {p["args"][0]: p["job_id"] for p in published} == sent_batches(store)
    assert seen_by_relay == [0, 0, 0] and relayed == []
    # and no outbox row is left, none for the caller to relay, and the relay's lock is free again
    assert result.outbox_ids == () and outbox_ids(store) == []
    store.append(Event("t.live", {"i": 3}, stream_id="s-3"))
    assert tick(backend, None).sent == 1
    assert relay.drain(100) == 1 and len(relayed) == 1


def test_a_tick_leaves_its_jobs_to_the_relay_while_a_relay_holds_the_lock(store: Any, pg_url: str) -> None:
    # Given a live event, and a relay draining (holding the relay's lock) on another connection
    store.append(Event("t.live", {"i": 0}, stream_id="s-0"))
    backend = SqlSubscriptionBackend(store.engine)
    backend.ensure("live", start="beginning", spec={})
    published: list[dict[str, Any]] = []
    k1, k2 = relay_lock_key("job")
    with psycopg.connect(pg_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s, %s)", (k1, k2))
        # When the dispatcher ticks
        result = tick(backend, published.append)
    # Then it publishes nothing itself: its job's row is in the outbox, listed for the caller to relay
    assert published == []
    assert result.sent == 1 and list(result.outbox_ids) == outbox_ids(store) and len(result.outbox_ids) == 1


def test_a_failed_publish_leaves_the_unpublished_jobs_in_the_outbox_and_releases_the_lock(store: Any) -> None:
    # Given three live events, and a broker that takes the first job and then fails
    store.append([Event("t.live", {"i": i}, stream_id=f"s-{i}") for i in range(3)])
    backend = SqlSubscriptionBackend(store.engine)
    backend.ensure("live", start="beginning", spec={})
    published: list[dict[str, Any]] = []

    def publish(payload: dict[str, Any]) -> None:
        if published:
            raise ConnectionError("broker down")
        published.append(payload)

    # When the tick publishes
    with pytest.raises(ConnectionError):
        tick(backend, publish)
    # Then the two jobs not published stay in the outbox (the published one's row is gone),
    assert len(published) == 1 and len(outbox_ids(store)) == 2
    # and the relay's lock is free: a relay sends the two others, none twice
    relayed: list[dict[str, Any]] = []
    relay = OutboxRelay(store.engine, lambda kind, payload: relayed.append(payload), kind="job")
    assert relay.drain(100) == 2
    assert {p["job_id"] for p in relayed} | {published[0]["job_id"]} == set(sent_batches(store).values())


def test_a_tick_that_fails_after_taking_the_relays_lock_leaves_it_free(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a live event, and a tick whose transaction fails after its statement took the relay's lock
    import esf.plugins.sqlalchemy_events._subscriptions as subs

    store.append(Event("t.live", {"i": 0}, stream_id="s-0"))
    backend = SqlSubscriptionBackend(store.engine)
    backend.ensure("live", start="beginning", spec={})
    real = subs.write_fresh

    def failing(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise ConnectionError("the commit never came")

    monkeypatch.setattr(subs, "write_fresh", failing)
    published: list[dict[str, Any]] = []
    with pytest.raises(ConnectionError):
        tick(backend, published.append)
    # Then nothing was published or kept, and the relay's lock is free for every session
    assert published == [] and outbox_ids(store) == []
    k1, k2 = relay_lock_key("job")
    with store.engine.connect() as conn:
        held = conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND classid = CAST(:k1 AS oid) AND objid = CAST(:k2 AS oid)"),
                            {"k1": k1 & 0xFFFFFFFF, "k2": k2 & 0xFFFFFFFF}).scalar()
    assert held == 0
