"""Appends: positions, versions, idempotency, optimistic concurrency, atomic batches, reads."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session

from esf.errors import ConcurrencyConflict, DuplicateEventId, NotFound, ValidationError
from esf.events import DEFAULT_STREAM_ID, AppendResult, Event, EventStore, StoredEvent


def test_the_sql_store_satisfies_the_event_store_protocol(store):
    assert isinstance(store, EventStore)


def test_a_batch_gets_consecutive_positions_and_stream_versions(store):
    # Given an empty store
    # When two batches are appended to two streams
    first = store.append(
        [Event("order.created", {"n": 1}, stream_id="order-1"), Event("order.paid", {}, stream_id="order-1")]
    )
    second = store.append(Event("order.created", {"n": 2}, stream_id="order-2"))
    # Then positions are 1, 2, 3 and versions count per stream
    assert [(e.position, e.stream_id, e.stream_version) for e in [*first, *second]] == [
        (1, "order-1", 1),
        (2, "order-1", 2),
        (3, "order-2", 1),
    ]
    assert store.head() == 3
    assert isinstance(first, AppendResult) and not first.is_pending


def test_a_stored_event_carries_every_field_and_round_trips(store):
    # Given an event with every field set
    eid = str(uuid.uuid4())
    event = Event(
        "user.signed_up",
        {"user": {"id": 7, "tags": ["a", "b"], "score": 1.5, "ok": True, "none": None}},
        correlation_id="c-1",
        parent_id="p-1",
        stream_id="user-7",
        event_id=eid.upper(),
        metadata={"source": "test"},
    )
    # When it is appended and read back
    [stored] = store.append(event)
    again = store.get(eid)
    # Then the read equals the returned value, with the id in canonical form
    assert stored == again
    assert again.event_id == eid
    assert again.data == {"user": {"id": 7, "tags": ["a", "b"], "score": 1.5, "ok": True, "none": None}}
    assert again.metadata == {"source": "test"}
    assert (again.correlation_id, again.parent_id, again.node) == ("c-1", "p-1", "test-node")
    assert again.recorded_at.tzinfo is not None
    assert abs((datetime.now(UTC) - again.recorded_at).total_seconds()) < 3600
    assert json.loads(json.dumps(again.to_dict()))["data"]["user"]["tags"] == ["a", "b"]


def test_stored_events_are_immutable(store):
    [stored] = store.append(Event("thing.happened", {"items": [1, 2], "nested": {"a": 1}}))
    with pytest.raises(TypeError):
        stored.data["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        stored.data["items"].append(3)
    with pytest.raises(TypeError):
        stored.data["nested"].update(b=2)
    with pytest.raises(AttributeError):
        stored.position = 9  # type: ignore[misc]
    assert copy.deepcopy(stored) == stored
    assert json.dumps(stored.data, sort_keys=True) == '{"items": [1, 2], "nested": {"a": 1}}'


def test_an_event_without_a_stream_goes_to_the_global_stream(store):
    [a] = store.append(Event("a.b"))
    [b] = store.append(Event("a.b"))
    assert (a.stream_id, a.stream_version, b.stream_version) == (DEFAULT_STREAM_ID, 1, 2)


def test_appending_the_same_id_and_content_again_stores_nothing_and_returns_the_first(store):
    # Given a stored event
    eid = str(uuid.uuid4())
    [first] = store.append(Event("order.created", {"n": 1}, stream_id="order-1", event_id=eid))
    # When a client retries the same append
    retry = store.append(Event("order.created", {"n": 1}, stream_id="order-1", event_id=eid))
    # Then it gets the stored event back, flagged as already stored, and nothing new is stored
    assert list(retry) == [first]
    assert retry.already_stored == {eid}
    assert store.head() == 1


def test_the_same_id_with_other_content_is_a_duplicate_event_id(store):
    eid = str(uuid.uuid4())
    store.append(Event("order.created", {"n": 1}, event_id=eid))
    with pytest.raises(DuplicateEventId) as info:
        store.append(Event("order.created", {"n": 2}, event_id=eid))
    assert info.value.code == "duplicate_event_id"
    assert store.head() == 1


def test_a_batch_repeating_one_id_stores_it_once_or_refuses_conflicting_content(store):
    eid = str(uuid.uuid4())
    result = store.append([Event("a.b", {"x": 1}, event_id=eid), Event("a.b", {"x": 1}, event_id=eid)])
    assert [e.position for e in result] == [1, 1]
    with pytest.raises(DuplicateEventId):
        store.append(
            [
                Event("a.c", {"x": 1}, event_id=None),
                Event("a.b", {"x": 1}, event_id=str(uuid.uuid4())),
                Event("a.b", {"x": 2}, event_id=result[0].event_id),
            ]
        )
    assert store.head() == 1


def test_a_batch_is_all_or_nothing(store):
    # Given a stored event
    eid = str(uuid.uuid4())
    store.append(Event("a.b", {"x": 1}, event_id=eid))
    # When a batch whose last event clashes with it is appended
    with pytest.raises(DuplicateEventId):
        store.append(
            [Event("a.c", {}, stream_id="s-1"), Event("a.d", {}, stream_id="s-1"), Event("a.b", {"x": 2}, event_id=eid)]
        )
    # Then none of the batch is stored
    assert store.head() == 1
    assert store.read_stream("s-1") == []


def test_expected_version_is_checked_and_reports_the_actual_version(store):
    store.append([Event("a.b", stream_id="acc-1"), Event("a.b", stream_id="acc-1")])
    with pytest.raises(ConcurrencyConflict) as info:
        store.append(Event("a.c", stream_id="acc-1"), expected_version=1)
    assert (info.value.expected, info.value.actual, info.value.code) == (1, 2, "concurrency_conflict")
    [ok] = store.append(Event("a.c", stream_id="acc-1"), expected_version=2)
    assert ok.stream_version == 3
    # 0 means "the stream must not exist yet"
    [new] = store.append(Event("a.c", stream_id="acc-2"), expected_version=0)
    assert new.stream_version == 1
    with pytest.raises(ConcurrencyConflict):
        store.append(Event("a.c", stream_id="acc-2"), expected_version=0)
    assert store.stream_version("acc-1") == 3


def test_an_idempotent_retry_with_a_now_stale_expected_version_returns_the_stored_event(store):
    eid = str(uuid.uuid4())
    [first] = store.append(Event("a.b", stream_id="acc-1", event_id=eid), expected_version=0)
    again = store.append(Event("a.b", stream_id="acc-1", event_id=eid), expected_version=0)
    assert list(again) == [first]


def test_expected_version_needs_a_single_stream(store):
    with pytest.raises(ValidationError):
        store.append([Event("a.b", stream_id="s-1"), Event("a.b", stream_id="s-2")], expected_version=0)
    with pytest.raises(ValidationError):
        store.append(Event("a.b"), expected_version=-1)


def test_read_stream_and_read_all_page_in_order(store):
    store.append([Event("a.b", {"i": i}, stream_id="s-1" if i % 2 else "s-2") for i in range(10)])
    assert [e.data["i"] for e in store.read_stream("s-1")] == [1, 3, 5, 7, 9]
    assert [e.stream_version for e in store.read_stream("s-1", from_version=3, limit=2)] == [3, 4]
    assert store.read_stream("nothing-here") == []
    page1 = store.read_all(limit=4)
    page2 = store.read_all(after_position=page1[-1].position, limit=100)
    assert [e.position for e in page1 + page2] == list(range(1, 11))


def test_get_of_an_unknown_or_malformed_id_raises(store):
    with pytest.raises(NotFound):
        store.get(str(uuid.uuid4()))
    with pytest.raises(ValidationError):
        store.get("not-a-uuid'; DROP TABLE esf_events; --")


def test_read_correlation_returns_every_event_of_a_request(store):
    store.append(
        [Event("a.b", correlation_id="c-1"), Event("a.c", correlation_id="c-2"), Event("a.d", correlation_id="c-1")]
    )
    assert [e.event_type for e in store.read_correlation("c-1")] == ["a.b", "a.d"]


def test_append_in_the_callers_session_commits_and_rolls_back_with_it(store):
    # Given the caller's own session
    with Session(store.engine) as session:
        # When events are appended in it and the caller rolls back
        result = store.append(Event("a.b", {"x": 1}), session=session)
        assert isinstance(result[0], StoredEvent)
        session.rollback()
    # Then nothing is stored
    assert store.head() == 0
    # When the caller commits
    with Session(store.engine) as session:
        [stored] = store.append(Event("a.b", {"x": 2}), session=session)
        session.commit()
    # Then the event is stored at the position it was given
    assert store.get(stored.event_id).position == stored.position == 1


def test_a_conflict_in_the_callers_session_leaves_its_transaction_usable(store):
    store.append(Event("a.b", stream_id="s-1"))
    with Session(store.engine) as session:
        with pytest.raises(ConcurrencyConflict):
            store.append(Event("a.c", stream_id="s-1"), expected_version=0, session=session)
        store.append(Event("a.d", stream_id="s-2"), session=session)
        session.commit()
    assert [e.event_type for e in store.read_all()] == ["a.b", "a.d"]


def test_health_reports_ok_with_the_head(store):
    store.append(Event("a.b"))
    health = store.health()
    assert health["status"] == "ok"
    assert health["head"] == 1
    assert health["spool_depth"] == 0
