"""SQLite appends write a batch in multi-row statements, cut to the variable limit."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from esf.plugins.sqlalchemy_events import SqlEventStore, _append_sqlite

from esf.errors import DuplicateEventId
from esf.events import Event
from esf.events._validation import PreparedEvent, prepare_events


@pytest.mark.parametrize("limit", [999, 20, 1])
def test_versions_and_positions_are_right_whatever_the_statement_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      limit: int) -> None:
    # A limit of 999 variables gives 71 rows per insert; 20 gives one row (14 columns); 1, one row too.
    monkeypatch.setattr(_append_sqlite, "_variable_limit", limit)
    store = SqlEventStore(f"sqlite:///{tmp_path}/events.db")
    try:
        # Given 40 streams that exist already, at version 2
        store.append([Event("s.seed", {"i": i}, stream_id=f"s-{i % 40}") for i in range(80)])
        # When a batch of 1,300 events touches those streams and 260 new ones
        text = "it's \"quoted\""
        batch = [Event("s.more", {"i": i, "text": text}, stream_id=f"s-{i % 300}") for i in range(1300)]
        result = store.append(batch)
        # Then every event got the next position and its stream's next version, in order
        stored = list(result)
        assert [e.position for e in stored] == list(range(81, 1381))
        seen: dict[str, int] = {f"s-{i}": 2 for i in range(40)}
        for e in stored:
            seen[e.stream_id] = seen.get(e.stream_id, 0) + 1
            assert e.stream_version == seen[e.stream_id]
        # And reads agree, as does the next append to an existing stream
        assert store.get(stored[-1].event_id).data == {"i": 1299, "text": text}
        again = store.append(Event("s.after", {}, stream_id="s-0"), expected_version=seen["s-0"])
        assert again[0].stream_version == seen["s-0"] + 1
    finally:
        store.close()


def test_only_ids_the_caller_chose_are_looked_up(tmp_path: Path) -> None:
    store = SqlEventStore(f"sqlite:///{tmp_path}/events.db")
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: statements.append(statement))
    try:
        store.append(Event("s.seed", {}, stream_id="s-1"))
        # Events without an id get new ones: no stored event can have them, nothing is looked up
        statements.clear()
        generated = store.append([Event("s.new", {"i": i}, stream_id=f"s-{i}") for i in range(5)])
        assert not [s for s in statements if "FROM esf_events" in s and "event_id" in s]
        assert [e.stream_version for e in generated] == [1, 2, 1, 1, 1]
        # An id the caller chose is looked up: a retry is recognised, a clash refused
        chosen = str(uuid.uuid4())
        statements.clear()
        first = store.append(Event("s.given", {"a": 1}, stream_id="s-9", event_id=chosen))
        assert [s for s in statements if "FROM esf_events" in s and "event_id" in s]
        retry = store.append([Event("s.given", {"a": 1}, stream_id="s-9", event_id=chosen),
                              Event("s.new", {}, stream_id="s-9")])
        assert retry.already_stored == frozenset({chosen}) and retry[0].position == first[0].position
        assert retry[1].stream_version == 2
        with pytest.raises(DuplicateEventId):
            store.append(Event("s.given", {"a": 2}, stream_id="s-9", event_id=chosen))
    finally:
        store.close()


def test_events_read_back_from_the_spool_are_looked_up_again() -> None:
    prepared = prepare_events([Event("s.new", {"i": 1}), Event("s.new", {"i": 2}, event_id=str(uuid.uuid4()))])
    assert [p.new_id for p in prepared] == [True, False]
    # A spooled batch may have been committed before its connection broke: its ids are not new any more
    assert [PreparedEvent.from_json(p.to_json()).new_id for p in prepared] == [False, False]
