"""Event value types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    """An event to append.

    Parameters:
        type: dotted event type, e.g. ``order.created`` (pattern ``EVENT_TYPE_RE``).
        data: JSON object (no NaN, no bytes).
        correlation_id: ties together everything done for one request.
        parent_id: the event or job that caused this one.
        stream_id: the stream (aggregate) this event belongs to; default ``"$global"``.
        event_id: UUID string; generated when absent. Appending the same id again is a no-op.
        metadata: JSON object of extra context.
    """

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    parent_id: str | None = None
    stream_id: str | None = None
    event_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredEvent:
    """An event as stored: immutable, with its global position and stream version."""

    position: int
    event_id: str
    stream_id: str
    stream_version: int
    event_type: str
    recorded_at: datetime
    monotonic_ns: int
    node: str
    pid: int
    correlation_id: str | None
    parent_id: str | None
    data: Mapping[str, Any]
    metadata: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (``recorded_at`` as ISO 8601)."""
        return {
            "position": self.position,
            "event_id": self.event_id,
            "stream_id": self.stream_id,
            "stream_version": self.stream_version,
            "event_type": self.event_type,
            "recorded_at": self.recorded_at.isoformat(),
            "monotonic_ns": self.monotonic_ns,
            "node": self.node,
            "pid": self.pid,
            "correlation_id": self.correlation_id,
            "parent_id": self.parent_id,
            "data": _thaw(self.data),
            "metadata": _thaw(self.metadata),
        }


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_thaw(v) for v in value]
    return value
