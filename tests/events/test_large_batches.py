"""Large batches (PostgreSQL streams them through COPY): same results, same guarantees as small ones."""

from __future__ import annotations

import uuid

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore
from esf.plugins.sqlalchemy_events._copy import COPY_MIN_EVENTS

from esf.errors import DuplicateEventId, PayloadTooLarge, ValidationError
from esf.events import Event

N = COPY_MIN_EVENTS * 3

#: Strings COPY's text format must carry unchanged.
AWKWARD = ["back\\slash", "tab\there", "new\nline", "cr\rhere", "\\N", "quote\"s", "é \u2028 \U0001f600", "\\\\t"]


def large_batch(n: int = N, prefix: str = "big") -> list[Event]:
    return [
        Event(
            "big.batch",
            {"i": i, "s": AWKWARD[i % len(AWKWARD)], "l": [AWKWARD[(i + 1) % len(AWKWARD)], i * 0.5, None, True]},
            stream_id=f"{prefix}-{i % 7}",
            correlation_id=None if i % 5 == 0 else f"c\\{i % 11}",
            parent_id=None if i % 3 else f"p-{i}",
            metadata={"m": AWKWARD[i % len(AWKWARD)], "nested": {"k": [i]}} if i % 2 else {},
        )
        for i in range(n)
    ]


def test_a_large_batch_is_stored_exactly_as_given(store):
    # Given stream versions already started by a small append
    store.append(Event("big.batch", {"i": -1}, stream_id="big-3"))
    events = large_batch()
    # When a large batch is appended
    result = store.append(events)
    # Then the returned events are what a read gives back, field for field
    assert list(result) == store.read_all(after_position=1, limit=N + 10)
    assert [e.position for e in result] == list(range(2, N + 2))
    assert store.head() == N + 1
    # And the data, references and metadata survive unchanged, awkward characters included
    for given, got in zip(events, result, strict=True):
        assert (got.data, got.metadata) == (given.data, given.metadata)
        assert (got.correlation_id, got.parent_id, got.stream_id) == (
            given.correlation_id,
            given.parent_id,
            given.stream_id,
        )
        assert got.node == "test-node"
    # And stream versions continue each stream (big-3 already had one event)
    big3 = store.read_stream("big-3")
    assert big3[0].data == {"i": -1}
    assert [e.stream_version for e in big3] == list(range(1, len(big3) + 1))
    assert [e.data["i"] for e in big3[1:]] == [i for i in range(N) if i % 7 == 3]
    assert [e.stream_version for e in store.read_stream("big-0")][:3] == [1, 2, 3]
    # And a following append continues the positions
    assert store.append(Event("big.after", {}))[0].position == N + 2


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Event("not a type!", {}), ValidationError),
        (Event("big.batch", {"x": float("nan")}), Exception),
        (Event("big.batch", {"blob": "x" * 5000}), PayloadTooLarge),
        ("not an event", ValidationError),
    ],
)
def test_a_bad_event_late_in_a_large_batch_stores_nothing(db_url, bad, error):
    # Given a store with a small event size limit and one stored event
    s = SqlEventStore(db_url, node="test-node", max_event_bytes=4096)
    try:
        s.append(Event("big.first", {}))
        events: list = large_batch()
        events.insert(N - 3, bad)
        # When a large batch has a bad event near its end
        with pytest.raises(error) as caught:
            s.append(events)
        # Then the error is the validation error, and nothing of the batch was stored
        assert caught.type.__module__.startswith("esf")
        assert s.head() == 1
        assert s.read_all() == s.read_all(limit=1)
        # And the store keeps working
        assert [e.position for e in s.append(large_batch(prefix="ok"))][:2] == [2, 3]
    finally:
        s.close()


def test_an_event_repeated_inside_a_large_batch_is_stored_once(store):
    # Given a large batch that holds the same event twice
    events = large_batch()
    twin = Event("big.batch", {"twin": 1}, event_id=str(uuid.uuid4()), stream_id="twins")
    events[10:10] = [twin]
    events.append(twin)
    # When it is appended
    result = store.append(events)
    # Then it is stored once, and both places in the result hold the same stored event
    assert result[10] == result[-1]
    assert store.head() == N + 1
    assert [e.event_id for e in store.read_stream("twins")] == [twin.event_id]


def test_a_large_batch_appended_again_is_not_stored_twice(store):
    # Given a stored large batch
    events = [Event("big.batch", {"i": i}, event_id=str(uuid.uuid4()), stream_id=f"r-{i % 4}") for i in range(N)]
    first = store.append(events)
    # When the same batch is appended again (a retry), and then with new events around it
    again = store.append(events)
    fresh = [Event("big.batch", {"new": i}, stream_id="r-0") for i in range(3)]
    mixed = store.append([fresh[0], *events, fresh[1], fresh[2]])
    # Then the retry returns the stored events and writes nothing
    assert list(again) == list(first)
    assert again.already_stored == {e.event_id for e in events}
    # And only the new events of the mixed batch were written, at the next positions
    assert [e.position for e in (mixed[0], mixed[-2], mixed[-1])] == [N + 1, N + 2, N + 3]
    assert store.head() == N + 3
    assert [e.stream_version for e in store.read_stream("r-0")][-3:] == [N // 4 + 1, N // 4 + 2, N // 4 + 3]


def test_a_clash_in_a_large_batch_stores_nothing(store):
    # Given one stored event
    eid = str(uuid.uuid4())
    store.append(Event("big.batch", {"n": 1}, event_id=eid))
    # When a large batch repeats its id with other content
    events = large_batch()
    events.append(Event("big.batch", {"n": 2}, event_id=eid))
    with pytest.raises(DuplicateEventId):
        store.append(events)
    # Then nothing of the batch was stored
    assert store.head() == 1
