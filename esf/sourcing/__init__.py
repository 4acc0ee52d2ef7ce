"""Event sourcing: aggregates rebuilt from their events, snapshots, and upcasters.

Public API::

    class Order(Aggregate):
        snapshot_every = 100                        # a snapshot every 100 events, written by a job

        def create(self, user_id: int) -> None:
            self.record("order.created", {"user_id": user_id})

        @applies("order.created")
        def _created(self, data) -> None:
            self.user_id = data["user_id"]

    order = Order("42"); order.create(7); fnd.aggregates.save(order)
    order = fnd.aggregates.load(Order, "42")        # latest snapshot + the events after it
    fnd.aggregates.retry(lambda: ship("42"), attempts=5)   # reload and redo on ConcurrencyConflict

    @fnd.upcaster("order.created", from_version=1)  # stored v1 shapes are read as v2
    def _v2(data): return {**data, "currency": "EUR"}
"""

from __future__ import annotations

from ._aggregate import Aggregate, applies
from ._repository import (
    SNAPSHOT_EVENT_TYPE,
    SNAPSHOT_STREAM_SUFFIX,
    AggregateRepository,
    snapshot_payload,
    write_snapshot,
)
from ._store import UpcastingEventStore
from ._upcasting import SCHEMA_VERSION_KEY, UpcasterFn, Upcasters

__all__ = [
    "SCHEMA_VERSION_KEY",
    "SNAPSHOT_EVENT_TYPE",
    "SNAPSHOT_JOB",
    "SNAPSHOT_STREAM_SUFFIX",
    "Aggregate",
    "AggregateRepository",
    "UpcasterFn",
    "Upcasters",
    "UpcastingEventStore",
    "applies",
    "snapshot_payload",
    "write_snapshot",
]

#: Name of the routed job that writes snapshots (on the ``esf.events`` service queue).
SNAPSHOT_JOB = "esf.events.snapshot"
