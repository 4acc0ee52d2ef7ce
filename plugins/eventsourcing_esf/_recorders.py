"""The library's recorders on an ESF event store: aggregate, application, tracking and process."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    Notification,
    OperationalError,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from sqlalchemy.orm import Session

from esf.errors import ConcurrencyConflict, Conflict, EsfError, ServiceUnavailable
from esf.events import Event, Filter, Q, Query

from ._mapping import EVENT_ID_NS, from_esf, notification_of, stream_part, to_esf

if TYPE_CHECKING:
    from esf.events import EventStore
    from esf.events import StoredEvent as EsfStoredEvent

#: Event type of a tracking record (one per processed upstream notification, in a stream per upstream).
TRACKING_EVENT_TYPE = "es.tracking"
#: Seconds a subscription waits between two polls when it has caught up.
SUBSCRIPTION_POLL_S = 0.1


class _NotNew(Exception):
    """An aggregate assumed new already has events: read its last version and try again."""


@contextmanager
def _translated() -> Iterator[None]:
    # The library tells a conflict (IntegrityError) from an outage (OperationalError).
    try:
        yield
    except Conflict as exc:
        raise IntegrityError(str(exc)) from exc
    except ServiceUnavailable as exc:
        raise OperationalError(str(exc)) from exc


class EsfAggregateRecorder(AggregateRecorder):
    """Stores the library's events as ESF events, one ESF stream per aggregate.

    Stream ``es.<scope>-<originator id>``; ``data`` holds ``originator_id``,
    ``originator_version``, ``topic`` and the state (see ``_mapping.state_fields``).
    A version is unique per aggregate (the ESF event id is derived from it) and
    must be greater than the aggregate's last one: a stale or repeated write
    raises the library's ``IntegrityError`` and writes nothing.

    Parameters:
        store: an ESF SQL event store (its ``engine`` joins several streams in one transaction).
        scope: the name of this sequence (``<application>.events``, ``<application>.snapshots``).
    """

    def __init__(self, store: EventStore, scope: str) -> None:
        engine = getattr(store, "engine", None)
        if engine is None:
            raise TypeError("the eventsourcing persistence module needs ESF's SQL event store (with an engine)")
        self.store = store
        self.engine = engine
        self.scope = scope
        self._prefix = f"es.{stream_part(scope)}-"

    def stream_id(self, originator_id: uuid.UUID | str) -> str:
        """The ESF stream of an aggregate."""
        return self._prefix + stream_part(str(originator_id))

    def _last(self, stream_id: str) -> EsfStoredEvent | None:
        found = self.store.query(Query(Q.stream(stream_id), order="desc", limit=1))
        return found[0] if found else None

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Write the events (of any aggregates) in one transaction; see :meth:`_insert`."""
        self._insert(stored_events, kwargs.get("tracking"))
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None, *,
                assume_new: bool = True) -> list[int]:
        """Append all events (and the tracking record) atomically; their ESF positions, in input order.

        An aggregate whose batch starts at version 0 or 1 is first assumed new: its
        append expects an empty stream, which saves reading its last version. If the
        stream is not empty, that append conflicts, the transaction rolls back, and
        the whole batch is tried again with every stream's last version read first.

        Raises:
            IntegrityError: a version not above its aggregate's last one (or repeated in the
                batch), a concurrent write of the same aggregate, or a tracking id not above
                the last one; nothing is written.
            OperationalError: the database is unreachable.
        """
        runs: list[tuple[str, list[StoredEvent]]] = []
        for stored in stored_events:
            stream = self.stream_id(stored.originator_id)
            if runs and runs[-1][0] == stream:
                runs[-1][1].append(stored)
            else:
                runs.append((stream, [stored]))
        with _translated():
            start: dict[str, int] = {}
            last_versions: dict[str, int | None] = {}
            assumed: set[str] = set()
            for stream, batch in runs:
                if stream not in start and assume_new and batch[0].originator_version <= 1:
                    start[stream], last_versions[stream] = 0, None
                    assumed.add(stream)
                elif stream not in start:
                    last = self._last(stream)
                    start[stream] = 0 if last is None else last.stream_version
                    last_versions[stream] = None if last is None else int(last.data["originator_version"])
                previous = last_versions[stream]
                for stored in batch:
                    if previous is not None and stored.originator_version <= previous:
                        raise IntegrityError(
                            f"{stream}: version {stored.originator_version} is not above"
                            f" the last recorded version {previous}"
                        )
                    previous = stored.originator_version
                last_versions[stream] = previous
            tracking_write = self._tracking_event(tracking) if tracking is not None else None
            try:
                return self._write(runs, start, assumed, tracking_write)
            except _NotNew:
                pass
        return self._insert(stored_events, tracking, assume_new=False)

    def _write(self, runs: Sequence[tuple[str, list[StoredEvent]]], start: dict[str, int], assumed: set[str],
               tracking_write: tuple[Event, int] | None) -> list[int]:
        positions: list[int] = []
        with Session(self.engine) as session, session.begin():
            for stream, batch in runs:
                try:
                    result = self.store.append([to_esf(s, stream, self.scope) for s in batch],
                                               expected_version=start[stream], session=session)
                except ConcurrencyConflict:
                    if stream in assumed:
                        raise _NotNew() from None
                    raise
                if result.already_stored:
                    raise IntegrityError(f"{stream}: an event of this batch is already recorded")
                start[stream] += len(batch)
                positions.extend(e.position for e in result)
            if tracking_write is not None:
                event, expected = tracking_write
                result = self.store.append(event, expected_version=expected, session=session)
                if result.already_stored:
                    raise IntegrityError(f"tracking {event.data['application_name']} is already recorded")
        return positions

    def select_events(self, originator_id: uuid.UUID | str, *, gt: int | None = None, lte: int | None = None,
                      desc: bool = False, limit: int | None = None) -> Sequence[StoredEvent]:
        """The aggregate's events with ``gt < originator_version <= lte``, by version (newest first if ``desc``)."""
        stream = self.stream_id(originator_id)
        with _translated():
            if (gt is not None or lte is not None) and not desc:
                tail = self._range(stream, gt, lte, limit)
                if tail is not None:
                    return [from_esf(e) for e in tail]
            flt: Filter = Q.stream(stream)
            if gt is not None:
                flt = flt & (Q.data("originator_version") > gt)
            if lte is not None:
                flt = flt & (Q.data("originator_version") <= lte)
            found = self.store.query(Query(flt, order="desc" if desc else "asc", limit=limit))
        return [from_esf(e) for e in found]

    def _range(self, stream: str, gt: int | None, lte: int | None, limit: int | None) -> list[EsfStoredEvent] | None:
        """Events with ``gt < originator_version <= lte`` read by stream version (no scan of the stream's data).

        Originator versions rise strictly with stream versions (``_insert`` refuses
        anything else), so ``originator_version >= stream_version + offset``, where
        ``offset`` is the first event's ``originator_version - 1``: the range starts at or
        before stream version ``gt - offset + 1``. Reading from one event earlier and
        finding it at or below ``gt`` proves nothing was skipped; otherwise (versions
        with gaps) ``None`` asks the caller for the filtered query.
        """
        first = self.store.read_stream(stream, limit=1)
        if not first:
            return []
        offset = int(first[0].data["originator_version"]) - 1
        start = 1 if gt is None else max(1, gt - offset)
        count = None if lte is None else lte - offset - start + 1
        if count is not None and count < 1:
            return []
        events = self.store.read_stream(stream, from_version=start, limit=count)
        if gt is not None and start > 1 and (not events or int(events[0].data["originator_version"]) > gt):
            return None
        picked = [e for e in events if (gt is None or int(e.data["originator_version"]) > gt)
                  and (lte is None or int(e.data["originator_version"]) <= lte)]
        return picked if limit is None else picked[:limit]

    # -- tracking (shared by the process recorder) ------------------------------

    def _tracking_stream(self, application_name: str) -> str:
        return f"es.tracking.{stream_part(self.scope)}-{stream_part(application_name)}"

    def _tracking_event(self, tracking: Tracking) -> tuple[Event, int]:
        stream = self._tracking_stream(tracking.application_name)
        last = self._last(stream)
        if last is not None and tracking.notification_id <= int(last.data["notification_id"]):
            raise IntegrityError(
                f"tracking {tracking.application_name}: notification {tracking.notification_id} is not above"
                f" the last recorded {last.data['notification_id']}"
            )
        event_id = str(uuid.uuid5(EVENT_ID_NS, f"{stream}\n{tracking.notification_id}"))
        event = Event(TRACKING_EVENT_TYPE, {"application_name": tracking.application_name,
                                            "notification_id": tracking.notification_id},
                      stream_id=stream, event_id=event_id)
        return event, 0 if last is None else last.stream_version

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record that ``tracking.application_name``'s notification ``tracking.notification_id`` was processed.

        Raises:
            IntegrityError: the id is not above the last recorded one for that application.
        """
        with _translated():
            event, expected = self._tracking_event(tracking)
            self.store.append(event, expected_version=expected)

    def max_tracking_id(self, application_name: str) -> int | None:
        """The last notification id recorded for ``application_name`` (``None``: none)."""
        with _translated():
            last = self._last(self._tracking_stream(application_name))
        return None if last is None else int(last.data["notification_id"])


class EsfApplicationRecorder(EsfAggregateRecorder, ApplicationRecorder):
    """Also a notification log: notification ids are ESF positions (gap-free, commit-ordered)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Write the events in one transaction; their notification ids (ESF positions)."""
        return self._insert(stored_events, kwargs.get("tracking"))

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *, inclusive_of_start: bool = True) -> Sequence[Notification]:
        """Notifications of this log with ids from ``start`` (inclusive unless told) to ``stop``, at most ``limit``."""
        flt: Filter = Q.data("log") == self.scope
        if topics:
            flt = flt & Q.data("topic").in_(list(topics))
        after = None if start is None else (start - 1 if inclusive_of_start else start)
        with _translated():
            found = self.store.query(Query(flt, limit=limit, after=max(after, 0) if after is not None else None,
                                           before=None if stop is None else stop + 1))
        return [notification_of(e) for e in found]

    def max_notification_id(self) -> int | None:
        """The id of the last notification of this log (``None``: empty)."""
        with _translated():
            found = self.store.query(Query(Q.data("log") == self.scope, order="desc", limit=1))
        return found[0].position if found else None

    def subscribe(self, gt: int | None = None, topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        """Notifications after ``gt``, then new ones as they are recorded (polling every 0.1 s)."""
        return PollingSubscription(self, gt=gt, topics=topics)


class EsfTrackingRecorder(EsfAggregateRecorder, TrackingRecorder):
    """Tracking records only (an ESF stream per upstream application)."""


class EsfProcessRecorder(EsfApplicationRecorder, ProcessRecorder):
    """Events and their tracking record, written in one transaction."""


class PollingSubscription(Subscription[ApplicationRecorder]):
    """Iterates over an application recorder's notifications, polling for new ones until stopped."""

    def __init__(self, recorder: ApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._buffer: list[Notification] = []
        self._wake = threading.Event()

    def stop(self) -> None:
        super().stop()
        self._wake.set()

    def __next__(self) -> Notification:
        while not self._buffer:
            if self._has_been_stopped:
                raise StopIteration
            try:
                self._buffer = list(self._recorder.select_notifications(
                    start=self._last_notification_id or 0, limit=500, topics=self._topics,
                    inclusive_of_start=False))
            except EsfError as exc:  # pragma: no cover - translated by the recorder already
                raise OperationalError(str(exc)) from exc
            if not self._buffer:
                self._wake.wait(SUBSCRIPTION_POLL_S)
        if self._has_been_stopped:
            raise StopIteration
        notification = self._buffer.pop(0)
        self._last_notification_id = notification.id
        return notification
