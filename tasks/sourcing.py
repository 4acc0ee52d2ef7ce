"""``esf.events.snapshot``: write an aggregate snapshot, on the ``esf.events`` queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esf.errors import ServiceUnavailable
from esf.events._async import EVENTS_SERVICE
from esf.sourcing import write_snapshot

if TYPE_CHECKING:
    from esf.foundation import Foundation


def register(foundation: Foundation) -> None:
    @foundation.services.task(EVENTS_SERVICE, "snapshot", retries=5, backoff=1.0, max_backoff=30.0,
                              retry_on=(ServiceUnavailable,), timeout=120,
                              idempotency="a snapshot's event id is derived from its stream, version and schema")
    def snapshot(payload: dict[str, Any]) -> dict[str, Any]:
        """Append the snapshot ``payload`` (see ``esf.sourcing.snapshot_payload``); idempotent."""
        stored = write_snapshot(foundation.events, payload)
        return {"position": stored.position, "stream_id": stored.stream_id}
