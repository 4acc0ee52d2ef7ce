"""``fnd.aggregates``: load, save, retry on conflict, and snapshots written in the background."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ConcurrencyConflict, NotFound, ValidationError
from ..events._model import Event
from ..events._query import Q, Query
from ._aggregate import Aggregate

if TYPE_CHECKING:
    from ..events import EventStore, StoredEvent

log = logging.getLogger("esf.sourcing")

_A = TypeVar("_A", bound=Aggregate)
_T = TypeVar("_T")

#: Event type of the snapshots, stored in the stream ``<aggregate stream>.snapshots``.
SNAPSHOT_EVENT_TYPE = "esf.snapshot"
#: Suffix of an aggregate's snapshot stream.
SNAPSHOT_STREAM_SUFFIX = ".snapshots"
#: Namespace of the snapshot event ids (uuid5 of stream, version and schema: a rewrite is a no-op).
_SNAPSHOT_NS = uuid.UUID("4f0c55ad-2d63-4a39-b8a5-5c2c0e5b7d11")

#: ``dispatch(payload)``: hand a snapshot (a JSON dict, see :func:`snapshot_payload`) to the background writer.
SnapshotDispatch = Callable[[dict[str, Any]], None]


def snapshot_payload(aggregate: Aggregate) -> dict[str, Any]:
    """The JSON payload of a snapshot of ``aggregate`` at its current version."""
    return {
        "stream_id": aggregate.stream_id,
        "aggregate_type": type(aggregate).__qualname__,
        "aggregate_version": aggregate.version,
        "schema_version": type(aggregate).schema_version,
        "state": aggregate.snapshot_state(),
    }


def write_snapshot(store: EventStore, payload: Mapping[str, Any]) -> StoredEvent:
    """Append a snapshot to the aggregate's snapshot stream (idempotent: same version and schema, same id).

    Raises:
        ValidationError: a malformed payload.
        SerializationError: the state is not JSON.
        ServiceUnavailable: the database is unreachable.
    """
    try:
        stream_id = payload["stream_id"]
        version = payload["aggregate_version"]
        schema = payload["schema_version"]
        state = payload["state"]
    except (KeyError, TypeError) as exc:
        raise ValidationError(f"a snapshot payload needs stream_id, aggregate_version, schema_version, state ({exc})"
                              ) from exc
    if not isinstance(version, int) or not isinstance(schema, int) or not isinstance(state, Mapping):
        raise ValidationError("snapshot aggregate_version and schema_version must be ints and state an object")
    snapshot_stream = f"{stream_id}{SNAPSHOT_STREAM_SUFFIX}"
    event_id = str(uuid.uuid5(_SNAPSHOT_NS, f"{snapshot_stream}\n{version}\n{schema}"))
    data = {"aggregate_type": payload.get("aggregate_type"), "aggregate_version": version,
            "schema_version": schema, "state": dict(state)}
    result = store.append(Event(SNAPSHOT_EVENT_TYPE, data, stream_id=snapshot_stream, event_id=event_id))
    stored: list[StoredEvent] = result.wait(None)
    return stored[0]


class AggregateRepository:
    """Loads and saves aggregates in the event store (``fnd.aggregates``).

    Parameters:
        store: the event store; give the Foundation's ``fnd.events`` so reads are upcast.
        dispatch_snapshot: hands a snapshot to the ``esf.events.snapshot`` job
            (``None``: snapshots are written inline, in :meth:`save`).
    """

    def __init__(self, store: EventStore, dispatch_snapshot: SnapshotDispatch | None = None) -> None:
        self._store = store
        self._dispatch = dispatch_snapshot

    def load(self, cls: type[_A], id: str) -> _A:
        """The aggregate ``id`` of class ``cls``: its latest usable snapshot plus the events after it.

        A snapshot written with another ``cls.schema_version`` is ignored and
        the aggregate is rebuilt from all its events.

        Raises:
            NotFound: the aggregate has no event.
            ValidationError: bad id or class.
            ServiceUnavailable: the database is unreachable.
        """
        if not (isinstance(cls, type) and issubclass(cls, Aggregate)):
            raise ValidationError(f"load() takes an Aggregate subclass, not {cls!r}")
        aggregate = cls(id)
        from_version = 1
        snapshot = self._latest_snapshot(aggregate) if cls.snapshot_every else None
        if snapshot is not None:
            aggregate.restore_state(snapshot["state"])
            aggregate.version = aggregate._saved_version = int(snapshot["aggregate_version"])
            from_version = aggregate.version + 1
        for event in self._store.read_stream(aggregate.stream_id, from_version=from_version):
            aggregate.apply_stored(event.event_type, event.data, event.stream_version)
        if aggregate.version == 0:
            raise NotFound(f"no {cls.__name__} with id {id!r} (stream {aggregate.stream_id} is empty)",
                           stream_id=aggregate.stream_id)
        return aggregate

    def _latest_snapshot(self, aggregate: Aggregate) -> Mapping[str, Any] | None:
        stream = f"{aggregate.stream_id}{SNAPSHOT_STREAM_SUFFIX}"
        found = self._store.query(Query(Q.stream(stream) & Q.type(SNAPSHOT_EVENT_TYPE), order="desc", limit=1))
        if not found:
            return None
        data = found[0].data
        if data.get("schema_version") != type(aggregate).schema_version:
            log.info("ignoring snapshot of %s at version %s: schema %s, class schema %s", aggregate.stream_id,
                     data.get("aggregate_version"), data.get("schema_version"), type(aggregate).schema_version)
            return None
        return data

    def save(self, aggregate: Aggregate) -> list[StoredEvent]:
        """Append the aggregate's pending events, all or none, if nobody saved it meanwhile.

        When the save crosses a multiple of ``snapshot_every``, a snapshot is
        handed to the ``esf.events.snapshot`` job (the save never waits for it;
        a failure to dispatch is logged, as the next crossing writes one).

        Returns:
            The stored events (empty when nothing was pending).

        Raises:
            ConcurrencyConflict: another save of this aggregate came first
                (``.expected``, ``.actual``); nothing was written. Reload and
                redo the change, e.g. with :meth:`retry`.
            ServiceUnavailable: the database is unreachable.
        """
        pending = aggregate.pending_events
        if not pending:
            return []
        before = aggregate._saved_version
        result = self._store.append(list(pending), expected_version=before)
        aggregate._mark_saved()
        every = type(aggregate).snapshot_every
        if every and aggregate.version // every > before // every:
            self._snapshot(aggregate)
        return list(result)

    def _snapshot(self, aggregate: Aggregate) -> None:
        payload = snapshot_payload(aggregate)
        try:
            if self._dispatch is None:
                write_snapshot(self._store, payload)
            else:
                self._dispatch(payload)
        except Exception:  # a snapshot is an optimisation: the events are stored
            log.warning("could not write the snapshot of %s at version %d", aggregate.stream_id,
                        aggregate.version, exc_info=True)

    def snapshot(self, aggregate: Aggregate) -> StoredEvent:
        """Write a snapshot of ``aggregate`` now, in this process (it must have no pending events).

        Raises:
            ValidationError: the aggregate has unsaved events.
            ServiceUnavailable: the database is unreachable.
        """
        if aggregate.pending_events:
            raise ValidationError(f"{aggregate!r} has unsaved events; save it before taking a snapshot")
        return write_snapshot(self._store, snapshot_payload(aggregate))

    def retry(self, fn: Callable[[], _T], *, attempts: int = 3) -> _T:
        """Call ``fn`` (which loads, changes and saves) again on each ``ConcurrencyConflict``.

        Parameters:
            fn: a function that loads the aggregate, applies the change and saves it.
            attempts: how many calls at most (>= 1).

        Returns:
            What ``fn`` returned.

        Raises:
            ValidationError: ``attempts`` < 1.
            ConcurrencyConflict: every attempt conflicted (the last conflict).
        """
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ValidationError(f"attempts must be an int >= 1, not {attempts!r}", field="attempts")
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except ConcurrencyConflict:
                if attempt == attempts:
                    raise
                log.debug("concurrency conflict, attempt %d of %d", attempt, attempts)
        raise AssertionError("unreachable")  # pragma: no cover
