"""Asynchronous appends through the routed ``esf.events`` queue.

``append_async`` validates the events at once (a bad event fails at the call
site), gives each an id, and hands them to a small in-process batcher: calls
made within ``linger_s`` of each other travel in one ``esf.events.append``
job, which a worker writes in one transaction. The job has retries and a
dead-letter queue like any other; the ids make a retried append idempotent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .._ids import new_id
from ..errors import Timeout
from ._model import Event, StoredEvent
from ._validation import prepare_events

if TYPE_CHECKING:
    from ..jobs import JobHandle
    from ._contract import EventStore

#: Name of the job that appends events on a worker.
APPEND_JOB = "esf.events.append"
#: The service whose routed queue carries that job (``<jobs.service_namespace>.events``).
EVENTS_SERVICE = "events"


def event_to_wire(event: Event) -> dict[str, Any]:
    """An event as the JSON the append job carries."""
    return {
        "type": event.type,
        "data": dict(event.data),
        "correlation_id": event.correlation_id,
        "parent_id": event.parent_id,
        "stream_id": event.stream_id,
        "event_id": event.event_id,
        "metadata": dict(event.metadata),
    }


def event_from_wire(item: dict[str, Any]) -> Event:
    return Event(item["type"], item.get("data") or {}, correlation_id=item.get("correlation_id"),
                 parent_id=item.get("parent_id"), stream_id=item.get("stream_id"), event_id=item.get("event_id"),
                 metadata=item.get("metadata") or {})


class AsyncAppend:
    """The pending result of ``append_async``: ``event_ids`` now, the stored events on ``wait()``."""

    def __init__(self, event_ids: tuple[str, ...], job: Future[JobHandle], store: EventStore) -> None:
        self.event_ids = event_ids
        self._job = job
        self._store = store

    @property
    def job_id(self) -> str | None:
        """The id of the append job once it is sent."""
        return self._job.result().id if self._job.done() and not self._job.exception() else None

    def wait(self, timeout: float | None = 30.0) -> list[StoredEvent]:
        """Block until the events are stored; return them in append order.

        Raises:
            Timeout: not stored within ``timeout`` seconds (they may still be).
            JobFailed: the append job failed (its DLQ entry says why).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            handle = self._job.result(timeout)
        except TimeoutError:
            raise Timeout(f"events {list(self.event_ids)[:3]}… were not sent within {timeout} s") from None
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        handle.wait(remaining)
        return self._store.get_many(list(self.event_ids))


class AsyncAppender:
    """Coalesces ``append_async`` calls into ``esf.events.append`` jobs."""

    def __init__(self, store: EventStore, send: Callable[[list[dict[str, Any]]], JobHandle], *,
                 max_events_bytes: int, linger_s: float = 0.01, max_batch: int = 500) -> None:
        self._store = store
        self._send = send
        self._max_bytes = max_events_bytes
        self._linger_s = linger_s
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[tuple[list[dict[str, Any]], Future[JobHandle]]] = []
        self._count = 0
        self._timer: threading.Timer | None = None

    def append_async(self, events: Event | Sequence[Event]) -> AsyncAppend:
        """Validate ``events`` now and send them to a worker. Returns an :class:`AsyncAppend`."""
        batch = [events] if isinstance(events, Event) else list(events)
        batch = [e if e.event_id else replace(e, event_id=new_id()) for e in batch]
        prepare_events(batch, max_event_bytes=self._max_bytes)
        future: Future[JobHandle] = Future()
        wire = [event_to_wire(e) for e in batch]
        with self._lock:
            self._pending.append((wire, future))
            self._count += len(wire)
            if self._count >= self._max_batch:
                self._flush_locked()
            elif self._timer is None:
                self._timer = threading.Timer(self._linger_s, self.flush)
                self._timer.daemon = True
                self._timer.start()
        return AsyncAppend(tuple(str(e.event_id) for e in batch), future, self._store)

    def flush(self) -> None:
        """Send what is waiting now."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._count = self._pending, [], 0
        if not pending:
            return
        items = [item for wire, _ in pending for item in wire]
        try:
            handle = self._send(items)
        except BaseException as exc:
            for _, future in pending:
                future.set_exception(exc)
            return
        for _, future in pending:
            future.set_result(handle)
