"""The event store contract: what every backend promises."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import UnsupportedCapability
from ._model import Event, StoredEvent

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from esf.plugins.sqlalchemy_events import OutboxRelay

    from ._query import Filter, Page, Query
    from ._query_values import Per
    from ._spool import QuarantinedEntry

__all__ = [
    "AppendResult",
    "EventRecorder",
    "EventStore",
    "PendingAppend",
    "QueryableEventStore",
    "TransactionalEventStore",
    "require_capability",
]

#: ``waiter(pending, timeout_s)`` blocks until the spooled events are stored and returns them.
Waiter = Callable[["PendingAppend", "float | None"], list[StoredEvent]]


@dataclass(frozen=True)
class PendingAppend:
    """Events held in the node's durable local spool because the database was unreachable.

    They are written, in the order they were appended, by the store's
    background flusher as soon as the database answers again. Their ids make
    the write idempotent: nothing is lost and nothing is stored twice.

    Attributes:
        event_ids: the ids of the spooled events, in append order.
        spool_id: the entry in the local spool file.
    """

    event_ids: tuple[str, ...]
    spool_id: int
    _waiter: Waiter = field(repr=False, compare=False)

    def wait(self, timeout: float | None = None) -> list[StoredEvent]:
        """Block until the events are stored and return them (in append order).

        Parameters:
            timeout: seconds to wait at most; ``None`` waits for ever.

        Raises:
            Timeout: the events are still in the spool after ``timeout`` seconds.
            DuplicateEventId: the flusher found an id stored with other content
                (the entry is kept aside in the spool's ``dead`` table).
        """
        return self._waiter(self, timeout)


class AppendResult(list[StoredEvent]):
    """What :meth:`EventStore.append` returns: a ``list`` of the stored events, plus two flags.

    - Normally the list holds one :class:`StoredEvent` per event passed (same
      order), ``pending`` is ``None`` and :meth:`wait` returns at once.
    - ``already_stored`` holds the ids that were stored before this call with
      the same content (an idempotent retry): nothing was written for them.
    - When the database was unreachable and the events were spooled, the list
      is **empty** (no position exists yet), ``pending`` is a
      :class:`PendingAppend` and ``is_pending`` is true. Call :meth:`wait` to
      block until they are written, or ignore it: they will be written.
    """

    __slots__ = ("already_stored", "pending")

    def __init__(
        self,
        events: Iterable[StoredEvent] = (),
        *,
        pending: PendingAppend | None = None,
        already_stored: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(events)
        self.pending = pending
        self.already_stored = already_stored

    @property
    def is_pending(self) -> bool:
        """True when the events are in the local spool, not yet in the database."""
        return self.pending is not None

    def wait(self, timeout: float | None = None) -> list[StoredEvent]:
        """The stored events; for a pending result, block until written (see :meth:`PendingAppend.wait`)."""
        if self.pending is None:
            return list(self)
        return self.pending.wait(timeout)

    def __repr__(self) -> str:
        if self.pending is not None:
            return f"AppendResult(pending={self.pending!r})"
        return f"AppendResult({list.__repr__(self)}, already_stored={sorted(self.already_stored)!r})"


@runtime_checkable
class EventRecorder(Protocol):
    """The base tier: an append-only store of events with global, gap-free, commit-ordered positions.

    A backend implements the tiers one by one: :class:`EventRecorder` (append
    and read), :class:`QueryableEventStore` (queries, counts, sequences),
    :class:`TransactionalEventStore` (caller sessions, the idempotency ledger,
    the outbox, retention, the spool). Services check the tier they need with
    :func:`require_capability`; ``esf.testing`` ships one contract suite per tier.

    Guarantees every backend keeps:

    - **Positions** start at 1 and increase by one per stored event, in commit
      order: a reader that has seen position N never later finds a committed
      event at or below N that it had not seen (pruning aside).
    - **Stream versions** start at 1 in each stream and increase by one.
    - **Idempotency**: an event id already stored with the same content is not
      stored again; its stored form is returned. Same id, other content:
      :class:`~esf.errors.DuplicateEventId`.
    - **Atomic batches**: all events of one call are stored, or none.
    """

    def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
    ) -> AppendResult:
        """Append one event or a batch, atomically.

        Parameters:
            events: an :class:`Event` or a non-empty sequence of them. Validated
                here, before anything is written (rules in ``esf.events._validation``).
            expected_version: the version the stream must be at before this
                append (0: the stream must not exist yet). Every event of the
                batch must then be in the same stream. ``None`` skips the check.

        Returns:
            An :class:`AppendResult` (a list of :class:`StoredEvent`, one per
            input, in input order).

        Raises:
            ValidationError: bad event type, stream id, event id, refs or arguments.
            SerializationError: data or metadata is not a JSON object.
            PayloadTooLarge: an event exceeds ``settings.events.max_event_bytes``.
            DuplicateEventId: an event id is stored (or repeated in the batch) with other content.
            ConcurrencyConflict: ``expected_version`` did not match (``.expected``, ``.actual``).
            ServiceUnavailable: the backend is unreachable.
        """
        ...

    def get(self, event_id: str) -> StoredEvent:
        """The stored event with this id.

        Raises:
            NotFound: no event has this id (or it was pruned).
            ValidationError: ``event_id`` is not a UUID.
            ServiceUnavailable: the database is unreachable.
        """
        ...

    def read_stream(self, stream_id: str, *, from_version: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Events of one stream with ``stream_version >= from_version``, in version order.

        Returns:
            Up to ``limit`` events (all when ``None``); empty for an unknown stream.

        Raises:
            ValidationError: bad stream id or arguments.
            ServiceUnavailable: the database is unreachable.
        """
        ...

    def read_all(self, *, after_position: int = 0, limit: int = 1000) -> list[StoredEvent]:
        """Events with ``position > after_position``, in position order, at most ``limit``.

        Resuming from the last position returned never skips a committed event.

        Raises:
            ValidationError: negative ``after_position`` or ``limit`` < 1.
            ServiceUnavailable: the database is unreachable.
        """
        ...

    def head(self) -> int:
        """The position of the last committed event (0 when empty).

        Raises:
            ServiceUnavailable: the database is unreachable.
        """
        ...

    def close(self) -> None:
        """Stop background threads and release connections. Spooled events stay on disk for the next start."""
        ...


@runtime_checkable
class QueryableEventStore(EventRecorder, Protocol):
    """The second tier: filtered queries (``esf.Q``), counts, aggregates and sequences over the recorder."""

    def read_correlation(self, correlation_id: str, *, limit: int = 10_000) -> list[StoredEvent]:
        """Events with this correlation id, in position order (at most ``limit``).

        Raises:
            ServiceUnavailable: the database is unreachable.
        """
        ...

    def get_many(self, event_ids: Sequence[str]) -> list[StoredEvent]:
        """The stored events with these ids, in the order given. Raises NotFound if one is missing."""
        ...

    def query(self, query: Query | Filter | None = None) -> list[StoredEvent]:
        """Events matching ``query`` (``esf.Q`` filters), by position. Raises QueryError, ServiceUnavailable."""
        ...

    def query_page(self, query: Query | Filter | None = None, limit: int = 100, cursor: str | None = None) -> Page:
        """One page of matching events and the cursor of the next. Raises QueryError, ServiceUnavailable."""
        ...

    def count(self, filter: Query | Filter | None = None, *, by: str | None = None, per: Per | None = None) -> Any:
        """How many events match, optionally ``by`` a field (``event_type``, ``data.<path>``) and ``per`` bucket."""
        ...

    def aggregate(self, fn: str, field: str, filter: Query | Filter | None = None, *, per: Per | None = None) -> Any:
        """``min``, ``max``, ``avg`` or ``sum`` of a numeric ``data.<path>`` over the matching events."""
        ...

    def followed_by(self, first: Filter, then: Filter, *, within: timedelta, by: str = "correlation_id",
                    limit: int | None = None) -> list[tuple[StoredEvent, StoredEvent]]:
        """Pairs (A, B): B matched ``then`` after A matched ``first``, same ``by`` value, within ``within``."""
        ...

    def not_followed_by(self, first: Filter, then: Filter, *, within: timedelta, by: str = "correlation_id",
                        now: datetime | None = None, limit: int | None = None) -> list[StoredEvent]:
        """Events A with no matching B within ``within`` (only A older than ``within``)."""
        ...


@runtime_checkable
class TransactionalEventStore(QueryableEventStore, Protocol):
    """The full tier: appends in the caller's transaction, the idempotency ledger, the outbox, retention and
    the spool; the backend runs its own migrations on first use.

    ``SqlEventStore`` (PostgreSQL, SQLite) implements it.
    """

    def append(
        self,
        events: Event | Sequence[Event],
        *,
        expected_version: int | None = None,
        session: Session | None = None,
    ) -> AppendResult:
        """Append one event or a batch, atomically.

        Parameters:
            events: an :class:`Event` or a non-empty sequence of them. Validated
                here, before anything is written (rules in ``esf.events._validation``).
            expected_version: the version the stream must be at before this
                append (0: the stream must not exist yet). Every event of the
                batch must then be in the same stream. ``None`` skips the check.
            session: a SQLAlchemy ``Session`` whose transaction the events are
                written in. The store does not commit: the caller's commit
                stores them, the caller's rollback discards them. Positions are
                locked until the caller's transaction ends, so keep it short.

        Returns:
            An :class:`AppendResult` (a list of :class:`StoredEvent`, one per
            input, in input order). When the database is unreachable and
            ``expected_version`` and ``session`` are ``None``, the events are
            spooled locally and the result is pending (empty list,
            ``.pending`` set): see :class:`AppendResult`.

        Raises:
            ValidationError: bad event type, stream id, event id, refs or arguments.
            SerializationError: data or metadata is not a JSON object.
            PayloadTooLarge: an event exceeds ``settings.events.max_event_bytes``.
            DuplicateEventId: an event id is stored (or repeated in the batch) with other content.
            ConcurrencyConflict: ``expected_version`` did not match (``.expected``, ``.actual``).
            ServiceUnavailable: the database is unreachable and the append cannot be spooled
                (``expected_version`` or ``session`` given, or no spool configured).
        """
        ...

    def once(self, key: str, *, session: Session | None = None,
             job_id: str | None = None) -> AbstractContextManager[bool]:
        """Idempotency ledger: yields True the first time ``key`` is recorded (in ``session``'s transaction)."""
        ...

    def outbox_relay(self, dispatch: Callable[[str, dict[str, Any]], None], *, kind: str) -> OutboxRelay:
        """A relay of the outbox rows of one ``kind``: it dispatches them in insertion order and deletes them.

        Rows of other kinds are left alone (each kind has its own relay); the jobs service's kind is ``"job"``.

        Raises:
            ValidationError: ``kind`` is not a string of 1 to 50 characters.
        """
        ...

    def prune(self, *, older_than: timedelta, types: Sequence[str] | None = None) -> int:
        """Delete events recorded more than ``older_than`` ago, optionally only of ``types``.

        Never deleted (the retention rule): the latest event of each stream
        (so ``expected_version`` and stream versions keep working), and any
        event at a position above the lowest subscription checkpoint
        (``esf_checkpoints``), which some subscription has not processed yet.

        Returns:
            The number of events deleted.

        Raises:
            ValidationError: ``older_than`` is negative or a type name is invalid.
            ServiceUnavailable: the database is unreachable.
        """
        ...

    def health(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded" | "down", "backend": …, "head": …, "spool_depth": …}``.

        ``degraded``: events are waiting in the local spool (``spool_depth`` > 0),
        spooled entries were set aside (``spool_dead``, ``spool_quarantined`` > 0)
        or the circuit breaker is open. Never raises.
        """
        ...

    def spool_quarantine(self, limit: int = 100) -> list[QuarantinedEntry]:
        """Spooled appends the reachable database kept refusing, set aside so the later ones are written.

        Oldest first; a read (nothing moves). Empty when the store has no spool.
        """
        ...

    def flush_spool(self, timeout: float | None = None) -> bool:
        """Block until every spooled event is written or quarantined (True), or ``timeout`` seconds passed (False)."""
        ...

    def retry_quarantined(self, entry_ids: Sequence[int] | None = None) -> list[int]:
        """Put quarantined entries (all when ``entry_ids`` is None) back in the spool, before every newer entry.

        Returns the ids moved back (unknown ids are ignored); the store starts flushing them.
        """
        ...


#: Every tier: what ``Foundation.events`` is typed as.
EventStore = TransactionalEventStore

#: The tiers, smallest first, with the words errors use for them.
TIERS: tuple[tuple[type[Any], str], ...] = (
    (EventRecorder, "event recorder (append, get, read_stream, read_all, head)"),
    (QueryableEventStore, "queryable event store (query, count, aggregate, sequences)"),
    (TransactionalEventStore, "transactional event store (sessions, idempotency ledger, outbox, prune, spool)"),
)


def unwrap(store: object) -> object:
    """The backend under ESF's wrappers (upcasting, telemetry), whose tier is the one that counts."""
    seen = 0
    while (inner := getattr(store, "wrapped", None)) is not None and seen < 10:
        store, seen = inner, seen + 1
    return store


def require_capability(store: object, tier: type[Any], *, needed_for: str) -> None:
    """Raise unless ``store`` (or the backend it wraps) implements ``tier``.

    Parameters:
        store: the event store in use (wrappers are looked through).
        tier: :class:`EventRecorder`, :class:`QueryableEventStore` or :class:`TransactionalEventStore`.
        needed_for: what the caller was about to do, named in the error.

    Raises:
        UnsupportedCapability: the backend lacks the tier (``.capability`` is the tier's name).
    """
    backend = unwrap(store)
    if isinstance(backend, tier):
        return
    described = dict(TIERS).get(tier, tier.__name__)
    name = type(backend).__name__
    raise UnsupportedCapability(
        f"{needed_for} needs a {described}; the event store backend {name} does not implement "
        f"{tier.__name__} (set events.backend to one that does, e.g. \"sqlalchemy\")",
        capability=tier.__name__, backend=name)
