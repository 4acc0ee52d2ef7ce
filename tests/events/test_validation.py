"""Bad input is refused at the call site with a clear error; odd but valid strings are stored verbatim."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from esf.plugins.sqlalchemy_events import SqlEventStore

from esf.errors import PayloadTooLarge, SerializationError, ValidationError
from esf.events import Event
from esf.events._validation import prepare_events


@pytest.mark.parametrize(
    "data",
    [
        {"x": math.nan},
        {"x": math.inf},
        {"x": [1, -math.inf]},
        {"x": b"bytes"},
        {"x": bytearray(b"1")},
        {"x": {1, 2}},
        {"x": Decimal("1.5")},
        {"x": object()},
        {1: "non-string key"},
        {"x": "NUL \x00 inside"},
        {"x\x00": 1},
    ],
    ids=["nan", "inf", "nested-inf", "bytes", "bytearray", "set", "decimal", "object", "int-key", "nul", "nul-key"],
)
def test_data_that_is_not_json_is_a_serialization_error(data):
    with pytest.raises(SerializationError) as info:
        prepare_events(Event("a.b", data))
    assert info.value.code == "not_json"


@pytest.mark.parametrize("data", [[1, 2], "text", 42, None])
def test_data_must_be_a_json_object(data):
    with pytest.raises(SerializationError):
        prepare_events(Event("a.b", data))  # type: ignore[arg-type]


def test_metadata_follows_the_same_rules():
    with pytest.raises(SerializationError):
        prepare_events(Event("a.b", {}, metadata={"t": math.nan}))


def test_deeply_nested_data_is_refused():
    deep: dict = {}
    node = deep
    for _ in range(100_000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(SerializationError):
        prepare_events(Event("a.b", deep))


def test_an_event_over_the_size_limit_is_payload_too_large():
    with pytest.raises(PayloadTooLarge) as info:
        prepare_events(Event("a.b", {"blob": "x" * 2000}), max_event_bytes=1000)
    assert info.value.code == "payload_too_large"
    assert "max_event_bytes" in str(info.value)


@pytest.mark.parametrize(
    "event_type",
    ["", "1abc", ".a", "a.", "a..b", "a b", "a-b", "a;DROP TABLE x", "ä.b", "a" * 201, "a.b'--"],
)
def test_bad_event_type_names_are_refused(event_type):
    with pytest.raises(ValidationError):
        prepare_events(Event(event_type))


@pytest.mark.parametrize("event_type", ["a", "order.created", "Billing.v2.charged", "job.dead_lettered", "a" * 200])
def test_good_event_type_names_are_accepted(event_type):
    assert prepare_events(Event(event_type))[0].event_type == event_type


@pytest.mark.parametrize("stream_id", ["", " s", "-x", "a b", "x;y", "é", "s" * 201, "a\nb"])
def test_bad_stream_ids_are_refused(stream_id):
    with pytest.raises(ValidationError):
        prepare_events(Event("a.b", stream_id=stream_id))


@pytest.mark.parametrize("bad", [{"event_id": "nope"}, {"correlation_id": "x" * 201}, {"parent_id": "a\x00b"}])
def test_bad_ids_are_refused(bad):
    with pytest.raises(ValidationError):
        prepare_events(Event("a.b", **bad))


def test_an_empty_batch_or_a_non_event_is_refused():
    with pytest.raises(ValidationError):
        prepare_events([])
    with pytest.raises(ValidationError):
        prepare_events([{"type": "a.b"}])  # type: ignore[list-item]


def test_nothing_is_written_when_one_event_of_a_batch_is_invalid(store: SqlEventStore):
    with pytest.raises(SerializationError):
        store.append([Event("a.b", {"ok": 1}), Event("a.c", {"bad": math.nan})])
    assert store.head() == 0


INJECTION = "x'); DROP TABLE esf_events; -- \" $1 %s {{}} \\ ' OR '1'='1"


def test_injection_like_strings_are_stored_verbatim(store: SqlEventStore):
    # Given data, metadata, keys, correlation and parent ids full of SQL and JSON metacharacters
    event = Event(
        "audit.note",
        {INJECTION: INJECTION, "path": "$.a[0] ? (@ == 1)", "emoji": "🚀", "unicode": "naïve — ✓"},
        correlation_id=INJECTION[:200],
        parent_id="'; --",
        metadata={"m": INJECTION},
    )
    # When it is appended and read back
    [stored] = store.append(event)
    again = store.get(stored.event_id)
    # Then every string comes back exactly, and the table is still there
    assert again.data[INJECTION] == INJECTION
    assert again.data["emoji"] == "🚀"
    assert again.correlation_id == INJECTION[:200]
    assert again.metadata == {"m": INJECTION}
    assert store.read_correlation(INJECTION[:200])[0].event_id == stored.event_id
    assert store.head() == 1


def test_the_size_limit_comes_from_the_store_settings(db_url):
    s = SqlEventStore(db_url, max_event_bytes=500)
    try:
        with pytest.raises(PayloadTooLarge):
            s.append(Event("a.b", {"x": "y" * 600}))
        s.append(Event("a.b", {"x": "y" * 100}))
    finally:
        s.close()


def test_large_integers_and_floats_round_trip(store: SqlEventStore):
    [e] = store.append(Event("a.b", {"big": 2**62, "neg": -(2**53), "f": 0.1, "tiny": 1e-300}))
    again = store.get(e.event_id)
    assert again.data == {"big": 2**62, "neg": -(2**53), "f": 0.1, "tiny": 1e-300}
