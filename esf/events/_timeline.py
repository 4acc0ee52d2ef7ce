"""The story of one request: every event with its correlation id, as data or as readable text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError
from ._model import StoredEvent

if TYPE_CHECKING:
    from ._contract import EventStore

__all__ = ["event_time", "render_timeline", "timeline"]

#: Data fields shown first (in this order) on a timeline line.
_KEY_FIELDS = ("job", "queue", "attempt", "runtime_s", "delay_s", "reason", "new_job_id")


def timeline(store: EventStore, correlation_id: str, *, limit: int = 10_000) -> list[StoredEvent]:
    """Every event of ``correlation_id`` (jobs, config changes, application events), in position order.

    Raises:
        ValidationError: empty correlation id.
        ServiceUnavailable: the database is unreachable.
        UnsupportedCapability: the store is not a queryable store (it cannot read by correlation).
    """
    from ._contract import QueryableEventStore, require_capability

    if not isinstance(correlation_id, str) or not correlation_id:
        raise ValidationError("correlation_id: must be a non-empty string")
    require_capability(store, QueryableEventStore, needed_for="the timeline")
    return store.read_correlation(correlation_id, limit=limit)


def event_time(event: StoredEvent) -> datetime:
    """When the step happened: ``data["at"]`` (Unix seconds, set by job history) or ``recorded_at``."""
    at = event.data.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        try:
            return datetime.fromtimestamp(float(at), UTC)
        except (OverflowError, OSError, ValueError):
            pass
    return event.recorded_at


def _summary(event: StoredEvent, width: int = 100) -> str:
    data = event.data
    parts = [f"{k}={data[k]}" for k in _KEY_FIELDS if data.get(k) is not None]
    if data.get("error_type"):
        parts.append(f"error={data['error_type']}: {data.get('error_message') or ''}".rstrip(": "))
    if not parts:
        rest = {k: v for k, v in data.items() if k not in ("at", "job_id")}
        parts.append(json.dumps(rest, sort_keys=True, default=str, ensure_ascii=False) if rest else "")
    text = "  ".join(p for p in parts if p)
    return text if len(text) <= width else text[: width - 1] + "…"


def render_timeline(correlation_id: str, events: Sequence[StoredEvent]) -> str:
    """A readable, chronological timeline (one line per event, offsets from the first event)."""
    if not events:
        return f"No events with correlation id {correlation_id!r}."
    ordered = sorted(events, key=lambda e: (event_time(e), e.position))
    start = event_time(ordered[0])
    end = event_time(ordered[-1])
    lines = [
        f"Timeline of {correlation_id} — {len(ordered)} event(s) over {(end - start).total_seconds():.3f} s, "
        f"from {start.isoformat(timespec='milliseconds')}"
    ]
    type_width = max(len(e.event_type) for e in ordered)
    stream_width = min(max(len(e.stream_id) for e in ordered), 44)
    for e in ordered:
        at = event_time(e)
        offset = (at - start).total_seconds()
        stream = e.stream_id if len(e.stream_id) <= stream_width else e.stream_id[: stream_width - 1] + "…"
        since = f"+{offset:.3f}s"
        lines.append(
            f"  {since:>10}  {at.strftime('%H:%M:%S.%f')[:-3]}  {e.event_type:<{type_width}}  "
            f"{stream:<{stream_width}}  {_summary(e)}".rstrip()
        )
    return "\n".join(lines)


def timeline_json(events: Sequence[StoredEvent]) -> list[dict[str, Any]]:
    """The timeline as JSON-safe dicts (``StoredEvent.to_dict()`` plus ``at``)."""
    ordered = sorted(events, key=lambda e: (event_time(e), e.position))
    return [{**e.to_dict(), "at": event_time(e).isoformat()} for e in ordered]
