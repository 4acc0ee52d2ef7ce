"""How one read is cut into batches: whole key groups packed, positions ascending, keys apart, large keys chunked."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import SqlSubscriptionBackend
from esf.plugins.sqlalchemy_events._schema import subscription_batches as batches

from esf import Event
from esf.events import create_event_store
from esf.settings import Settings


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / 'events.db'}"


def test_a_read_is_cut_into_batches_of_whole_key_groups_with_ascending_positions(db_url: str,
                                                                                 tmp_path: Path) -> None:
    # Given interleaved streams: "big" with 7 events, six small ones with 2 each, and their correlation ids
    store = create_event_store(Settings(database_url=db_url, data_dir=str(tmp_path / "data")))
    try:
        order = ["big", "a", "b", "big", "c", "a", "big", "d", "b", "big", "e", "c", "big", "f", "d", "big",
                 "e", "big", "f"]
        stored = store.append([Event("t.p", {"i": i}, stream_id=s, correlation_id=f"corr-{i}")
                               for i, s in enumerate(order)])
        by_position = {e.position: e for e in stored}
        backend = SqlSubscriptionBackend(store.engine)
        backend.ensure("pack", start="beginning", spec={})
        # When one tick reads them all with batches of 4 events
        result = backend.tick("pack", filter=None, partition_by="stream_id", batch_size=4, max_in_flight=8,
                              make_job=lambda b, p, c: {"job": "x", "job_id": uuid.uuid4().hex})
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(batches).where(batches.c.name == "pack").order_by(batches.c.id)).all()
    finally:
        store.close()
    assert result.read == len(order)
    seen: list[int] = []
    for row in rows:
        positions = [int(p) for p in row.positions]
        keys = {by_position[p].stream_id for p in positions}
        # Then every batch lists its positions in ascending order, with its first and last, its keys,
        # and the correlation id of its first event
        assert positions == sorted(positions)
        assert (row.first_position, row.last_position) == (positions[0], positions[-1])
        assert sorted(row.partition_keys) == sorted(keys)
        assert row.correlation_id == by_position[positions[0]].correlation_id
        assert len(positions) <= 4
        # and a small key's events are never split across batches; only "big" is cut into chunks
        for key in keys - {"big"}:
            assert {p for p in by_position if by_position[p].stream_id == key} <= set(positions)
        assert keys == {"big"} or "big" not in keys
        seen.extend(positions)
    # and every event is in exactly one batch
    assert sorted(seen) == sorted(by_position)


def test_a_read_of_more_events_than_it_may_take_reads_batch_size_times_max_in_flight_and_stops_the_cursor_there(
        db_url: str, tmp_path: Path) -> None:
    # Given 100 events in 100 streams
    store = create_event_store(Settings(database_url=db_url, data_dir=str(tmp_path / "data")))
    try:
        stored = store.append([Event("t.p", {"i": i}, stream_id=f"s-{i}") for i in range(100)])
        backend = SqlSubscriptionBackend(store.engine)
        backend.ensure("peek", start="beginning", spec={})
        # When one tick may read 80 (80 batches of one event)
        first = backend.tick("peek", filter=None, partition_by="stream_id", batch_size=1, max_in_flight=80,
                             make_job=lambda b, p, c: {"job": "x", "job_id": uuid.uuid4().hex})
        with store.engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(batches)
                                 .where(batches.c.name == "peek")).scalar_one()
    finally:
        store.close()
    # Then it read 80 events into 80 batches, all sent, and its cursor stops at the 80th
    assert (first.read, first.sent, count) == (80, 80, 80)
    assert first.cursor == stored[79].position
