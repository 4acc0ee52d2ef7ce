"""The append through SQLAlchemy Core: what a caller's session on a PostgreSQL driver other than psycopg takes.

No such driver is installed here, so the path is run directly on a psycopg connection of the real server; the
psycopg path and this one must leave the same rows, and refuse the same appends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore
from esf.plugins.sqlalchemy_events._append_postgres import append_pg_core

from esf.errors import ConcurrencyConflict, DuplicateEventId
from esf.events import Event
from esf.events._validation import prepare_events


@pytest.fixture
def store(pg_url: str) -> Iterator[SqlEventStore]:
    s = SqlEventStore(pg_url)
    try:
        yield s
    finally:
        s.close()


def test_the_core_path_numbers_checks_and_stores_like_the_driver_path(store: SqlEventStore) -> None:
    # Given a stream at version 2, appended through the psycopg path
    store.append([Event("s.seed", {"i": i}, stream_id="s-1") for i in range(2)])
    chosen = str(uuid.uuid4())
    # When a batch over that stream and a new one goes through the Core path
    batch = [Event("s.core", {"i": 1}, stream_id="s-1", event_id=chosen), Event("s.core", {"i": 2}, stream_id="s-2"),
             Event("s.core", {"i": 3}, stream_id="s-1")]
    with store.engine.begin() as conn:
        stored, already = append_pg_core(conn, prepare_events(batch), None, "node-a")
    # Then positions follow the head, versions follow each stream, and the store reads them back
    assert [(e.position, e.stream_id, e.stream_version) for e in stored] == [(3, "s-1", 3), (4, "s-2", 1),
                                                                              (5, "s-1", 4)]
    assert already == frozenset()
    assert store.head() == 5
    assert [e.data for e in store.read_stream("s-1")][2:] == [{"i": 1}, {"i": 3}]
    # And the next append through the psycopg path continues from there
    assert store.append(Event("s.after", {}, stream_id="s-1"))[0].stream_version == 5
    # When the same id is appended again with the same content, the stored event is returned
    with store.engine.begin() as conn:
        again, already = append_pg_core(conn, prepare_events(batch[0]), None, "node-a")
    assert already == frozenset({chosen}) and again[0].position == 3
    # Then other content under that id, or a stale expected version, is refused and writes nothing
    with pytest.raises(DuplicateEventId), store.engine.begin() as conn:
        append_pg_core(conn, prepare_events(Event("s.core", {"i": 9}, stream_id="s-1", event_id=chosen)), None, "n")
    with pytest.raises(ConcurrencyConflict), store.engine.begin() as conn:
        append_pg_core(conn, prepare_events(Event("s.core", {}, stream_id="s-2"), expected_version=0), 0, "n")
    assert store.head() == 6
