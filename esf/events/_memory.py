"""An event recorder in this process's memory: the base tier with no database (for tests and examples)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConcurrencyConflict, DuplicateEventId, NotFound, ValidationError
from ._contract import AppendResult
from ._model import Event, StoredEvent
from ._validation import DEFAULT_MAX_EVENT_BYTES, check_event_id, check_stream_id, prepare_events

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["InMemoryEventRecorder"]


class InMemoryEventRecorder:
    """An :class:`~esf.events.EventRecorder` kept in a list: every guarantee of the base tier, one process.

    Appends are validated and stored exactly as a database backend does them
    (same ids, hashes, idempotent retries, ``expected_version``); the events
    are lost when the process ends, and other processes do not see them. It
    implements only the recorder tier: queries, the idempotency ledger and the
    outbox raise :class:`~esf.errors.UnsupportedCapability` where a service
    needs them. Selected with ``events.backend = "memory"``.

    Parameters:
        max_event_bytes: largest canonical JSON encoding of one event.
        node: the node name stored with each event.
    """

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES, node: str = "") -> None:
        self.max_event_bytes = max_event_bytes
        self.node = node or os.uname().nodename
        self._lock = threading.Lock()
        self._events: list[StoredEvent] = []
        self._by_id: dict[str, tuple[StoredEvent, str]] = {}
        self._versions: dict[str, int] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> InMemoryEventRecorder:
        """The recorder for ``settings`` (``events.max_event_bytes``, ``node``); ``options`` override them."""
        options.setdefault("max_event_bytes", settings.events.max_event_bytes)
        options.setdefault("node", settings.node)
        return cls(**options)

    def __repr__(self) -> str:
        return f"<InMemoryEventRecorder head={len(self._events)}>"

    def append(self, events: Event | Sequence[Event], *, expected_version: int | None = None) -> AppendResult:
        """Append one event or a batch, atomically (contract: :meth:`esf.events.EventRecorder.append`)."""
        prepared = prepare_events(events, max_event_bytes=self.max_event_bytes, expected_version=expected_version)
        with self._lock:
            unique: dict[str, Any] = {}
            for p in prepared:
                unique.setdefault(p.event_id, p)
            stored: dict[str, StoredEvent] = {}
            for event_id, p in unique.items():
                found = self._by_id.get(event_id)
                if found is None:
                    continue
                event, content_hash = found
                if content_hash != p.content_hash:
                    raise DuplicateEventId(
                        f"event id {event_id} is already stored (position {event.position}, type "
                        f"{event.event_type}) with different content; use a new id for a new event",
                        event_id=event_id, position=event.position)
                stored[event_id] = event
            already = frozenset(stored)
            new = [p for event_id, p in unique.items() if event_id not in stored]
            if new and expected_version is not None:
                stream_id = new[0].stream_id
                actual = self._versions.get(stream_id, 0)
                if actual != expected_version:
                    raise ConcurrencyConflict(
                        f"stream {stream_id!r} is at version {actual}, not the expected {expected_version}: "
                        "re-read the stream and retry", expected=expected_version, actual=actual, stream_id=stream_id)
            # Everything is checked: from here on the batch is stored whole.
            for p in new:
                version = self._versions.get(p.stream_id, 0) + 1
                self._versions[p.stream_id] = version
                event = StoredEvent(
                    position=len(self._events) + 1, event_id=p.event_id, stream_id=p.stream_id,
                    stream_version=version, event_type=p.event_type, recorded_at=p.recorded_at,
                    monotonic_ns=p.monotonic_ns, node=self.node, pid=p.pid, correlation_id=p.correlation_id,
                    parent_id=p.parent_id, data=p.data, metadata=p.metadata)
                self._events.append(event)
                self._by_id[p.event_id] = (event, p.content_hash)
                stored[p.event_id] = event
        return AppendResult([stored[p.event_id] for p in prepared], already_stored=already)

    def get(self, event_id: str) -> StoredEvent:
        """The stored event with this id (contract: :meth:`esf.events.EventRecorder.get`)."""
        eid = check_event_id(event_id)
        found = self._by_id.get(eid)
        if found is None:
            raise NotFound(f"no event with id {eid}", event_id=eid)
        return found[0]

    def read_stream(self, stream_id: str, *, from_version: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Events of one stream in version order (contract: :meth:`esf.events.EventRecorder.read_stream`)."""
        check_stream_id(stream_id)
        _check_int(from_version, "from_version", 0)
        if limit is not None:
            _check_int(limit, "limit", 1)
        with self._lock:
            found = [e for e in self._events if e.stream_id == stream_id and e.stream_version >= from_version]
        return found if limit is None else found[:limit]

    def read_all(self, *, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events after a position, in position order (contract: :meth:`esf.events.EventRecorder.read_all`)."""
        _check_int(after_position, "after_position", 0)
        _check_int(limit, "limit", 1)
        with self._lock:
            return self._events[after_position:after_position + limit]

    def head(self) -> int:
        """The position of the last stored event (0 when empty)."""
        return len(self._events)

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "backend": "memory", "head": …}``; never raises."""
        return {"status": "ok", "backend": "memory", "head": self.head()}

    def close(self) -> None:
        """Nothing to release (the events stay readable until the object is dropped)."""


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"{name}: must be an integer >= {minimum}, got {value!r}", errors={name: "invalid"})
