"""The append path's fast paths give exactly what the plain code gives: same ids, same JSON, same frozen values."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from esf.errors import DuplicateEventId, SerializationError
from esf.events import Event, StoredEvent
from esf.events._model import FrozenDict, FrozenList
from esf.events._validation import PreparedEvent, canonical_json, check_event_id, new_event_ids, prepare_events


def test_generated_event_ids_are_distinct_canonical_time_ordered_version_7_uuids():
    # Given ids generated for a large batch, and one generated a little later
    before = time.time_ns() // 1_000_000
    ids = new_event_ids(5000)
    time.sleep(0.002)
    [later] = new_event_ids(1)
    after = time.time_ns() // 1_000_000
    # Then each is a canonical RFC 9562 version 7 UUID carrying the millisecond it was made in, and none repeats
    for eid in ids:
        parsed = uuid.UUID(eid)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, eid)
        assert before <= parsed.int >> 80 <= after
    assert len(set(ids)) == len(ids)
    # And the variant character takes all four values (the bits come from the random byte)
    assert {eid[19] for eid in ids} == set("89ab")
    # And an id made later sorts after the earlier ones (index inserts at the right edge)
    assert later > max(ids)


def test_jobs_and_correlations_get_time_ordered_ids_too():
    from esf._ids import new_id

    first, second = new_id(), (time.sleep(0.002), new_id())[1]
    assert uuid.UUID(first).version == uuid.UUID(second).version == 7
    assert first < second


@pytest.mark.parametrize(
    "given",
    [
        "6161CB13-2988-484A-BF58-EF543CC8CC7E",
        "{6161cb13-2988-484a-bf58-ef543cc8cc7e}",
        "6161cb132988484abf58ef543cc8cc7e",
        "urn:uuid:6161cb13-2988-484a-bf58-ef543cc8cc7e",
        uuid.UUID("6161cb13-2988-484a-bf58-ef543cc8cc7e"),
        "6161cb13-2988-484a-bf58-ef543cc8cc7e",
    ],
)
def test_every_form_of_an_event_id_is_stored_in_the_canonical_form(given):
    assert check_event_id(given) == "6161cb13-2988-484a-bf58-ef543cc8cc7e"


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"b": 1, "a": [1, 2.5, None, True, {"z": "é", "y": "\u2028"}]},
        {"nested": {"deeper": {"list": [[1], [2, [3]]]}}},
        {"text": 'quotes " and \\ backslashes', "emoji": "\U0001f600"},
        {"big": 2**80, "neg": -1e-300},
    ],
)
def test_canonical_json_is_json_dumps_with_sorted_keys_and_no_spaces(value):
    assert canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_a_cycle_in_data_is_a_serialization_error_not_a_crash():
    # Given data that contains itself
    loop: list[object] = []
    loop.append(loop)
    # When it is prepared, Then it is refused with the library's error
    with pytest.raises(SerializationError):
        prepare_events(Event("a.b", {"x": loop}))


def test_prepared_data_is_a_deep_frozen_copy_with_lists_at_every_level():
    # Given data with lists of lists and objects inside lists
    data = {"a": [1, [2, {"b": [3]}]], "s": "[not a list]", "o": {"l": []}}
    [p] = prepare_events(Event("a.b", data))
    # Then the copy is equal, and every container in it is frozen
    assert p.data == data
    assert type(p.data) is FrozenDict
    assert type(p.data["a"]) is FrozenList
    assert type(p.data["a"][1]) is FrozenList
    assert type(p.data["a"][1][1]) is FrozenDict
    assert type(p.data["a"][1][1]["b"]) is FrozenList
    assert type(p.data["o"]["l"]) is FrozenList
    with pytest.raises(TypeError):
        p.data["a"].append(4)
    # And changing the caller's dict afterwards changes nothing prepared
    data["a"][1][1]["b"].append(99)
    assert p.data["a"][1][1]["b"] == [3]
    assert p.data_json == canonical_json({"a": [1, [2, {"b": [3]}]], "s": "[not a list]", "o": {"l": []}})


def test_a_prepared_event_equals_one_built_by_its_dataclass_constructor():
    # Given a prepared event (built without the dataclass __init__)
    [p] = prepare_events(Event("a.b", {"x": [1]}, correlation_id="c", metadata={"m": 1}))
    # Then it equals, hashes like and is as frozen as one built field by field
    twin = PreparedEvent(**{f.name: getattr(p, f.name) for f in dataclasses.fields(PreparedEvent)})
    assert p == twin
    assert hash(p) == hash(twin)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.pid = 1  # type: ignore[misc]


def test_returned_events_are_deep_frozen_and_equal_to_the_stored_ones(store):
    # Given a batch whose data holds lists, nested objects and an empty object
    events = [
        Event("a.b", {"tags": ["x", ["y"]], "n": i, "o": {"k": [{"z": 1}]}}, stream_id=f"s-{i % 3}", metadata={})
        for i in range(50)
    ]
    # When it is appended
    result = store.append(events)
    # Then each returned event equals what a read gives back, and cannot be changed
    assert result == store.read_all(limit=100)
    for e in result:
        assert isinstance(e, StoredEvent)
        assert type(e.data["tags"]) is FrozenList
        assert type(e.data["o"]["k"][0]) is FrozenDict
        with pytest.raises(TypeError):
            e.data["tags"][1].append("z")
        with pytest.raises(dataclasses.FrozenInstanceError):
            e.position = 0  # type: ignore[misc]
    assert [e.stream_version for e in result[:6]] == [1, 1, 1, 2, 2, 2]


def test_a_batch_mixing_stored_and_new_ids_stores_only_the_new_with_consecutive_positions(store):
    # Given one stored event
    first = Event("a.b", {"n": 1}, event_id=str(uuid.uuid4()), stream_id="s")
    store.append(first)
    # When a batch repeats it between two new events
    result = store.append([Event("a.b", {"n": 0}, stream_id="s"), first, Event("a.b", {"n": 2}, stream_id="s")])
    # Then the repeat is returned as stored, and the new ones take positions 2 and 3
    assert [(e.position, e.stream_version) for e in result] == [(2, 2), (1, 1), (3, 3)]
    assert result.already_stored == {first.event_id}
    assert store.head() == 3


def test_a_clash_in_a_batch_writes_nothing_even_after_new_events(store):
    # Given one stored event
    eid = str(uuid.uuid4())
    store.append(Event("a.b", {"n": 1}, event_id=eid))
    # When a batch has new events and the same id with other content
    with pytest.raises(DuplicateEventId):
        store.append([Event("a.b", {"n": 2}), Event("a.b", {"n": 3}, event_id=eid)])
    # Then nothing of the batch was stored
    assert store.head() == 1


def test_a_retry_in_the_callers_session_keeps_the_callers_own_writes(store):
    # Given a stored event and a caller's session that has written its own row
    eid = str(uuid.uuid4())
    store.append(Event("a.b", {"n": 1}, event_id=eid))
    with Session(store.engine) as session:
        session.execute(sa.text("CREATE TABLE app_rows (x INTEGER)"))
        session.execute(sa.text("INSERT INTO app_rows (x) VALUES (7)"))
        # When it appends a batch that repeats the stored id (the store falls back from its one-round-trip path)
        result = store.append([Event("a.b", {"n": 1}, event_id=eid), Event("a.b", {"n": 2})], session=session)
        # And appends again and commits
        again = store.append(Event("a.b", {"n": 3}), session=session)
        session.commit()
    # Then its row, the repeat (as already stored) and both new events are all there, positions gap-free
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT x FROM app_rows")).scalar_one() == 7
    assert result.already_stored == {eid}
    assert [e.position for e in [*result, *again]] == [1, 2, 3]
    assert [e.data["n"] for e in store.read_all()] == [1, 2, 3]
