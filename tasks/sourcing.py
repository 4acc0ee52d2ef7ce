"""``esf.events.snapshot``: write an aggregate snapshot, on the ``esf.events`` queue."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esf.errors import ServiceUnavailable
from esf.events._async import EVENTS_SERVICE
from esf.sourcing import SNAPSHOT_JOB, write_snapshot

if TYPE_CHECKING:
    from esf.foundation import Foundation


def register(foundation: Foundation) -> None:
    queue = foundation.settings.jobs.service_queue(EVENTS_SERVICE)

    @foundation.job(name=SNAPSHOT_JOB, queue=queue, retries=5, backoff=1.0, max_backoff=30.0,
                    retry_on=(ServiceUnavailable,), timeout=120)
    def snapshot(payload: dict[str, Any]) -> dict[str, Any]:
        """Append the snapshot ``payload`` (see ``esf.sourcing.snapshot_payload``); idempotent."""
        stored = write_snapshot(foundation.events, payload)
        return {"position": stored.position, "stream_id": stored.stream_id}
