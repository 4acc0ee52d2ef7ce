"""Subscriptions and projections: durable, filtered, ordered per key, at least once.

Public API::

    @fnd.subscription("receipts", filter=Q.type("order.paid") & (Q.data("total") > 100),
                      partition_by="stream_id", retries=5, backoff=1.0)
    def send_receipt(event: StoredEvent) -> None: ...

    @fnd.projection("order_totals", filter=Q.type("order.paid"), tables=["order_totals"])
    def project(event: StoredEvent, session: Session) -> None: ...   # committed with the checkpoint

    fnd.events.subscribe("audit", handler, filter=None, start="now")   # without a decorator
    fnd.subscriptions.rebuild("order_totals")     # replay into fresh tables, swap them in (esf projections rebuild)

    fnd.subscriptions.status("receipts")          # checkpoint, lag, batches in flight, dead batches
    fnd.subscriptions.pause / resume / reset(name, to=…) / delete

The dispatcher (a thread of every worker's main process) reads each
subscription's new matching events from its cursor and sends them as
batches to the handler job ``esf.subscription.<name>`` on the
subscription's queue; a batch's handler job retries and dead-letters like
any job. See docs/subscriptions.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ._model import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_IN_FLIGHT,
    HANDLER_JOB_PREFIX,
    MAX_BATCH_SIZE,
    NAME_RE,
    PARTITIONS,
    Subscription,
    SubscriptionStatus,
)
from ._service import SubscriptionService

if TYPE_CHECKING:
    from ..events._model import StoredEvent
    from ..events._query import Filter

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_IN_FLIGHT",
    "HANDLER_JOB_PREFIX",
    "MAX_BATCH_SIZE",
    "NAME_RE",
    "PARTITIONS",
    "Subscription",
    "SubscriptionBackend",
    "SubscriptionService",
    "SubscriptionStatus",
    "TickResult",
]


@runtime_checkable
class TickResult(Protocol):
    """What one dispatcher step did: ``read`` events, ``sent`` batches, the ``cursor`` after it,
    ``skipped`` when another dispatcher held the subscription, and the ``outbox_ids`` of the jobs sent."""

    read: int
    sent: int
    cursor: int
    skipped: bool
    outbox_ids: tuple[int, ...]


@runtime_checkable
class SubscriptionBackend(Protocol):
    """Where subscriptions keep their state: cursor, batches, checkpoint (the event store's database).

    Every method is one transaction; a process that dies inside one leaves nothing half-done.
    """

    def ensure(self, name: str, *, start: int | str, spec: dict[str, Any]) -> bool:
        """Create the subscription at ``start`` unless it exists. Returns True when created."""
        ...

    def names(self) -> list[str]:
        """Every stored subscription's name."""
        ...

    def status(self, name: str) -> dict[str, Any] | None:
        """The stored state (see :class:`SubscriptionStatus`), or None for an unknown name."""
        ...

    def pause(self, name: str, reason: str | None = None) -> bool:
        """Send no new batch. False for an unknown name."""
        ...

    def resume(self, name: str) -> bool:
        """Send batches again. False for an unknown name."""
        ...

    def reset(self, name: str, position: int) -> bool:
        """Cursor and checkpoint at ``position``; queued and sent batches forgotten. False when unknown."""
        ...

    def delete(self, name: str) -> bool:
        """Forget everything stored for ``name``. False when unknown."""
        ...

    def position_at(self, when: datetime) -> int:
        """The last position recorded before ``when`` (0 when none)."""
        ...

    def tick(self, name: str, *, filter: Filter | None, partition_by: str | None, batch_size: int,
             max_in_flight: int, make_job: Callable[[int, list[int], str | None], dict[str, Any]],
             publish: Callable[[dict[str, Any]], None] | None = None) -> TickResult:
        """Read new matching events into batches; write the jobs of those that may go into the outbox.

        With ``publish``, a backend may publish the jobs itself after its commit (deleting their
        outbox rows, never while a relay could send them too); ``outbox_ids`` lists the rows it left.
        """
        ...

    def batch_state(self, name: str, batch_id: int) -> str | None:
        """``queued``, ``sent``, ``dead``, or None once handled (or reset)."""
        ...

    def load_batch(self, name: str, batch_id: int, positions: Sequence[int]) -> tuple[str | None, list[StoredEvent]]:
        """The batch's state (None once handled) and the events at ``positions``, in position order."""
        ...

    def load(self, positions: Sequence[int]) -> list[StoredEvent]:
        """The events at ``positions``, in position order."""
        ...

    def complete(self, name: str, batch_id: int, conn: Any = None) -> bool:
        """Record the batch as handled (in ``conn``'s transaction when given) and advance the checkpoint."""
        ...

    def handling(self, name: str, batch_id: int) -> AbstractContextManager[tuple[Any, str | None]]:
        """A write transaction holding the batch: yields ``(connection, state)``; commits on exit."""
        ...

    def record_error(self, name: str, batch_id: int, error: str, position: int | None = None) -> None:
        """Keep the last failure of a batch's handler and the failing event's position."""
        ...

    def mark_dead(self, name: str, batch_id: int, *, pause: bool, reason: str | None = None,
                  partition_by: str | None = None) -> bool:
        """The batch's job was dead-lettered: only the failing key's events stay dead; the rest goes on."""
        ...

    def batch_positions(self, name: str, batch_id: int) -> list[int] | None:
        """The positions a batch holds now, or None once it is gone."""
        ...

    def checkpoint(self, name: str) -> int | None:
        """The stored checkpoint of ``name``."""
        ...

    def rebuilder(self, name: str, tables: Sequence[str]) -> Any:
        """The database side of a rebuild of projection ``name`` (``prepare``, ``step``, ``swap``)."""
        ...

    def rebuild_position(self, name: str) -> int | None:
        """How far an unfinished rebuild of ``name`` has replayed, or None."""
        ...


