"""How the ``eventsourcing`` library's stored events map onto ESF events, and back."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from eventsourcing.persistence import Notification, StoredEvent

from esf.events import MAX_STREAM_ID_CHARS, STREAM_ID_RE, Event
from esf.events import StoredEvent as EsfStoredEvent

#: Namespace of the ESF event ids of library events: uuid5(stream, originator_version) is unique per version.
EVENT_ID_NS = uuid.UUID("7d8c5b8e-8a3f-4c55-9d4e-2f1b8f0e6c21")
#: Prefix of every ESF event type written for the library.
EVENT_TYPE_PREFIX = "es"

_SEGMENT_RE = re.compile(r"[^A-Za-z0-9_]+")


def stream_part(value: str) -> str:
    """``value`` if it can be part of a stream id, else its uuid5 (stable, valid)."""
    if STREAM_ID_RE.match(value) and len(value) <= MAX_STREAM_ID_CHARS // 2:
        return value
    return str(uuid.uuid5(EVENT_ID_NS, value))


def event_type_of(topic: str) -> str:
    """A valid ESF event type for a topic: ``bank.domain:Account.Opened`` -> ``es.bank.domain.Account.Opened``."""
    segments = [s for s in _SEGMENT_RE.split(topic) if s]
    return ".".join([EVENT_TYPE_PREFIX, *segments])[:200] if segments else f"{EVENT_TYPE_PREFIX}.event"


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def state_fields(state: bytes) -> dict[str, Any]:
    """The ``data`` fields holding ``state``: its JSON object (queryable) and, unless rebuilt exactly, its bytes.

    ``state`` is kept losslessly: ``state`` (a JSON object) alone when its canonical
    JSON (sorted keys, compact) is ``state`` itself, otherwise ``state_b64`` too (or only,
    when ``state`` is not a JSON object, e.g. compressed or encrypted).
    """
    try:
        text = state.decode("utf-8")
        parsed = json.loads(text) if "\\u0000" not in text else None
    except ValueError:
        parsed = None
    b64 = base64.b64encode(state).decode("ascii")
    if not isinstance(parsed, dict):
        return {"state": None, "state_b64": b64}
    if _canonical(parsed) == state:
        return {"state": parsed}
    return {"state": parsed, "state_b64": b64}


def state_of(data: Mapping[str, Any]) -> bytes:
    """The exact ``state`` bytes stored by :func:`state_fields`."""
    b64 = data.get("state_b64")
    if isinstance(b64, str):
        return base64.b64decode(b64)
    return _canonical(data["state"])


def to_esf(stored: StoredEvent, stream_id: str, log: str) -> Event:
    """The ESF event recording ``stored`` in ``stream_id``, part of notification log ``log``."""
    originator = stored.originator_id
    data: dict[str, Any] = {
        "log": log,
        "originator_id": str(originator),
        "originator_id_is_uuid": isinstance(originator, uuid.UUID),
        "originator_version": stored.originator_version,
        "topic": stored.topic,
        **state_fields(stored.state),
    }
    event_id = str(uuid.uuid5(EVENT_ID_NS, f"{stream_id}\n{stored.originator_version}"))
    return Event(event_type_of(stored.topic), data, stream_id=stream_id, event_id=event_id)


def from_esf(event: EsfStoredEvent) -> StoredEvent:
    """The library's stored event recorded by ``event``."""
    data = event.data
    originator: uuid.UUID | str = data["originator_id"]
    if data.get("originator_id_is_uuid"):
        originator = uuid.UUID(str(originator))
    return StoredEvent(originator_id=originator, originator_version=int(data["originator_version"]),
                       topic=str(data["topic"]), state=state_of(data))


def notification_of(event: EsfStoredEvent) -> Notification:
    """The library's notification of ``event``: its id is the ESF position (gap-free, commit-ordered)."""
    s = from_esf(event)
    return Notification(id=event.position, originator_id=s.originator_id, originator_version=s.originator_version,
                        topic=s.topic, state=s.state)
