"""``esf.events.append``: write a batch of events in one transaction, on the ``esf.events`` queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esf.errors import ServiceUnavailable
from esf.events._async import APPEND_JOB, EVENTS_SERVICE, event_from_wire

if TYPE_CHECKING:
    from esf.foundation import Foundation


def register(foundation: Foundation) -> None:
    queue = foundation.settings.jobs.service_queue(EVENTS_SERVICE)

    @foundation.job(name=APPEND_JOB, queue=queue, retries=10, backoff=1.0, max_backoff=60.0,
                    retry_on=(ServiceUnavailable,), timeout=120)
    def append(events: list[dict[str, Any]]) -> dict[str, Any]:
        """Append ``events`` (JSON dicts) in one transaction; spooled on this node if the database is down."""
        result = foundation.events.append([event_from_wire(e) for e in events])
        if getattr(result, "is_pending", False):
            return {"pending": True, "event_ids": [e.get("event_id") for e in events]}
        return {"pending": False, "positions": [e.position for e in result]}
