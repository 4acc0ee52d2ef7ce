"""The event store's service tasks, on the ``esf.events`` queue.

``esf.events.append`` writes a batch of events in one transaction; ``esf.events.prune``
applies the retention rules; ``esf.events.outbox_sweep`` relays outbox rows that no
in-process relay took (a process that died after its commit).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from esf.errors import ServiceUnavailable
from esf.events import TransactionalEventStore, require_capability
from esf.events._async import EVENTS_SERVICE, event_from_wire
from esf.services import DefaultSchedule

if TYPE_CHECKING:
    from esf.foundation import Foundation


def register(foundation: Foundation) -> None:
    services = foundation.services
    s = foundation.settings.services

    @services.task(EVENTS_SERVICE, "append", retries=10, backoff=1.0, max_backoff=60.0, timeout=120,
                   retry_on=(ServiceUnavailable,),
                   idempotency="each event carries its event id; appending it again returns its first position")
    def append(events: list[dict[str, Any]]) -> dict[str, Any]:
        """Append ``events`` (JSON dicts) in one transaction; spooled on this node if the database is down."""
        result = foundation.events.append([event_from_wire(e) for e in events])
        if getattr(result, "is_pending", False):
            return {"pending": True, "event_ids": [e.get("event_id") for e in events]}
        return {"pending": False, "positions": [e.position for e in result]}

    @services.task(EVENTS_SERVICE, "prune", retries=3, backoff=30.0, max_backoff=600.0, timeout=1800,
                   retry_on=(ServiceUnavailable,),
                   idempotency="it deletes what is older than a cut-off; a second run deletes nothing more",
                   schedule=DefaultSchedule(every_s=s.events_prune_every_s, enabled=s.schedules and s.events_prune,
                                            setting="services.events_prune"))
    def prune(older_than_s: float | None = None, types: list[str] | None = None) -> dict[str, Any]:
        """Delete events older than the retention (``services.events_retention_s``), keeping each stream's
        latest event and every event a subscription has not processed."""
        age = s.events_retention_s if older_than_s is None else float(older_than_s)
        kinds = list(s.events_prune_types) if types is None else list(types)
        require_capability(foundation.events, TransactionalEventStore, needed_for="esf.events.prune")
        deleted = foundation.events.prune(older_than=timedelta(seconds=age), types=kinds or None)
        return {"deleted": deleted, "older_than_s": age, "types": kinds}

    @services.task(EVENTS_SERVICE, "outbox_sweep", retries=3, backoff=5.0, max_backoff=60.0, timeout=300,
                   retry_on=(Exception,),  # a database or broker outage while relaying: both pass
                   idempotency="outbox rows keep their job id; a row relayed twice is the same job",
                   schedule=DefaultSchedule(every_s=s.events_outbox_sweep_every_s,
                                            enabled=s.schedules and s.events_outbox_sweep,
                                            setting="services.events_outbox_sweep"))
    def outbox_sweep(after_s: float | None = None) -> dict[str, Any]:
        """Relay the committed outbox rows that no in-process relay took within ``services.events_outbox_sweep_after_s``
        (oldest first)."""
        age = s.events_outbox_sweep_after_s if after_s is None else after_s
        return {"relayed": foundation.jobs.outbox.drain(older_than_s=age)}
