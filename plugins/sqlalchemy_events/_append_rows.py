"""Rows of the event table: the SELECT of a stored event and its decoding, the new event's value, and the
checks every dialect's append makes before its first write (duplicate ids, expected versions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from esf.errors import ConcurrencyConflict, DuplicateEventId
from esf.events._model import FrozenDict, StoredEvent
from esf.events._validation import PreparedEvent

from ._schema import events

__all__ = [
    "IN_CHUNK",
    "check_expected",
    "chunks",
    "duplicate",
    "existing_events",
    "row_to_event",
    "select_events",
    "stored_event",
]

#: Bound parameters per ``IN (…)`` list (SQLite caps the number of variables).
IN_CHUNK = 500

_new_object = object.__new__
_set_attribute = object.__setattr__


def select_events() -> sa.Select[Any]:
    """``SELECT`` of every column :func:`row_to_event` reads."""
    return sa.select(
        events.c.position,
        events.c.event_id,
        events.c.stream_id,
        events.c.stream_version,
        events.c.event_type,
        events.c.recorded_at,
        events.c.monotonic_ns,
        events.c.node,
        events.c.pid,
        events.c.correlation_id,
        events.c.parent_id,
        events.c.data,
        events.c.metadata,
        events.c.content_hash,
    )


def row_to_event(row: Any) -> StoredEvent:
    """A :class:`StoredEvent` from a row of :func:`select_events` (``recorded_at`` made UTC-aware)."""
    m: Mapping[str, Any] = row._mapping
    recorded_at: datetime = m["recorded_at"]
    if recorded_at.tzinfo is None:  # SQLite keeps no offset; ESF always writes UTC
        recorded_at = recorded_at.replace(tzinfo=UTC)
    else:
        recorded_at = recorded_at.astimezone(UTC)
    return StoredEvent(
        position=int(m["position"]),
        event_id=m["event_id"],
        stream_id=m["stream_id"],
        stream_version=int(m["stream_version"]),
        event_type=m["event_type"],
        recorded_at=recorded_at,
        monotonic_ns=int(m["monotonic_ns"]),
        node=m["node"],
        pid=int(m["pid"]),
        correlation_id=m["correlation_id"],
        parent_id=m["parent_id"],
        data=m["data"],
        metadata=m["metadata"],
    )


def chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), IN_CHUNK):
        yield items[i : i + IN_CHUNK]


def existing_events(
    conn: Connection, prepared: Sequence[PreparedEvent]
) -> tuple[dict[str, PreparedEvent], dict[str, StoredEvent]]:
    """The batch without repeated ids (first occurrence kept), and those of its events already stored.

    Raises:
        DuplicateEventId: an id is stored with other content.
    """
    unique: dict[str, PreparedEvent] = {}
    for p in prepared:
        unique.setdefault(p.event_id, p)
    stored: dict[str, StoredEvent] = {}
    # Ids generated for this append cannot be stored yet: only the caller's own are looked up.
    ids = [eid for eid, p in unique.items() if not p.new_id]
    for chunk in chunks(ids):
        for row in conn.execute(select_events().where(events.c.event_id.in_(chunk))):
            p = unique[row.event_id]
            if row.content_hash != p.content_hash:
                raise duplicate(p, int(row.position), row.event_type)
            stored[p.event_id] = row_to_event(row)
    return unique, stored


def stored_event(p: PreparedEvent, position: int, version: int, node: str) -> StoredEvent:
    data, metadata = p.data, p.metadata
    if type(data) is FrozenDict and type(metadata) is FrozenDict:
        # Already deep-frozen by validation (its fast path), so __post_init__ would
        # copy nothing: skip the frozen dataclass's per-field __setattr__ too
        # (a third of the append's Python time on large batches).
        event: StoredEvent = _new_object(StoredEvent)
        _set_attribute(
            event,
            "__dict__",
            {
                "position": position,
                "event_id": p.event_id,
                "stream_id": p.stream_id,
                "stream_version": version,
                "event_type": p.event_type,
                "recorded_at": p.recorded_at,
                "monotonic_ns": p.monotonic_ns,
                "node": node,
                "pid": p.pid,
                "correlation_id": p.correlation_id,
                "parent_id": p.parent_id,
                "data": data,
                "metadata": metadata,
            },
        )
        return event
    return StoredEvent(
        position=position,
        event_id=p.event_id,
        stream_id=p.stream_id,
        stream_version=version,
        event_type=p.event_type,
        recorded_at=p.recorded_at,
        monotonic_ns=p.monotonic_ns,
        node=node,
        pid=p.pid,
        correlation_id=p.correlation_id,
        parent_id=p.parent_id,
        data=p.data,
        metadata=p.metadata,
    )


def check_expected(new: Sequence[PreparedEvent], versions: Mapping[str, int], expected_version: int | None) -> None:
    if expected_version is None:
        return
    stream_id = new[0].stream_id
    actual = versions.get(stream_id, 0)
    if actual != expected_version:
        raise ConcurrencyConflict(
            f"stream {stream_id!r} is at version {actual}, not the expected {expected_version}: "
            "re-read the stream and retry",
            expected=expected_version,
            actual=actual,
            stream_id=stream_id,
        )


def duplicate(p: PreparedEvent, position: int, event_type: str) -> DuplicateEventId:
    return DuplicateEventId(
        f"event id {p.event_id} is already stored (position {position}, type {event_type}) "
        "with different content; use a new id for a new event",
        event_id=p.event_id,
        position=position,
    )
